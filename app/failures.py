"""What went wrong, said once for the banner: one line of what happened and what to do.

The worker turns every exception into an ErrorReport before it crosses to the UI thread, so the
window never holds an exception (and, for an out-of-memory, never the frames that hold tensors).
Remedies are names; the window decides which button each becomes.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from engine.errors import (
    CheckpointError, ConfigError, DeviceError, OutputError, RequestError, SanaStudioError,
)

# Remedies the window knows how to offer.
RETRY = "retry"
SMALLER = "smaller"
INT8 = "int8"
TILING = "tiling"
OFFLOAD = "offload"
SETTINGS = "settings"
CHOOSE_MODEL = "choose_model"


@dataclass(frozen=True)
class ErrorReport:
    kind: str  # "out_of_memory", "model", "request", "output", "device", "engine"
    summary: str  # what happened and what to do, one line
    details: str = ""  # the traceback, for the details expander and the log
    remedies: tuple[str, ...] = ()
    request: object = None  # the GenerationRequest that failed, for a retry


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError)


def describe_generation_error(error: BaseException, request) -> ErrorReport:
    details = "".join(traceback.format_exception(error))
    if is_out_of_memory(error):
        return ErrorReport(
            "out_of_memory",
            f"Out of GPU memory at {request.width}×{request.height}. The run was freed: retry at a "
            f"smaller size, in INT8, with VAE tiling or with the text encoder offloaded.",
            details, (SMALLER, INT8, TILING, OFFLOAD, RETRY), request,
        )
    if isinstance(error, RequestError):
        return ErrorReport("request", f"The request was refused: {error}. Fix that field and generate again.",
                           details, (), request)
    if isinstance(error, OutputError):
        return ErrorReport("output", f"Could not save the image: {error}. Choose another output folder "
                           f"in Settings; the image stays on the canvas and Ctrl+S saves it.",
                           details, (SETTINGS,), request)
    return _engine_error(error, details, request)


def describe_load_error(error: BaseException, path: str) -> ErrorReport:
    details = "".join(traceback.format_exception(error))
    if isinstance(error, (CheckpointError, ConfigError)):
        return ErrorReport("model", f"Could not load the model: {error}. Choose another model folder.",
                           details, (CHOOSE_MODEL,))
    if isinstance(error, DeviceError):
        return ErrorReport("device", f"{error}. Pick another device in Settings.", details, (SETTINGS,))
    if is_out_of_memory(error):
        return ErrorReport("out_of_memory", f"Out of GPU memory while loading {path}. Try INT8 or the CPU "
                           f"in Settings.", details, (SETTINGS,))
    return _engine_error(error, details, None)


def _engine_error(error: BaseException, details: str, request) -> ErrorReport:
    what = str(error) if isinstance(error, SanaStudioError) else f"{type(error).__name__}: {error}"
    return ErrorReport("engine", f"The engine failed: {what}. The app is still usable; the log file has "
                       f"the details.", details, (RETRY,) if request is not None else (), request)
