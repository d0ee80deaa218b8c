"""What a generation tells its caller while it runs.

The window turns these into Qt signals; the CLI prints them. They carry plain data (PIL images,
floats) so no caller needs torch to read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from PIL.Image import Image

    from .request import GenerationRequest


@dataclass(frozen=True)
class Started:
    request: GenerationRequest  # with its seed fixed
    total_steps: int


@dataclass(frozen=True)
class Preparing:
    """The first step readies the GPU for this size first (Triton compiles and tunes its kernels,
    a CUDA graph is captured), so it takes longer than the steps after it: the first run at a size
    (and batch, and precision) in a session."""

    elapsed: float  # seconds since Started


@dataclass(frozen=True)
class Step:
    index: int  # 1-based: "step index of total"
    total: int
    preview: Image | None  # one image per batch entry is too many; this is the first
    elapsed: float  # seconds since Started


@dataclass(frozen=True)
class Decoding:
    elapsed: float


@dataclass(frozen=True)
class Finished:
    images: list[Image]
    metadata: dict = field(default_factory=dict)  # request, model name, precision, seconds


@dataclass(frozen=True)
class Cancelled:
    completed_steps: int


@dataclass(frozen=True)
class Failed:
    error: BaseException


Event = Union[Started, Preparing, Step, Decoding, Finished, Cancelled, Failed]
