"""The Triton release the fused kernels need, checked once, before any kernel module loads.

Triton ships for Linux x86-64 only, and each PyTorch release pins its own: torch 2.4–2.7 bring
Triton 3.0–3.3, which lack the host tensor descriptors, `tl.range(..., warp_specialize=...)` and
`triton.knobs` that the kernels use (3.3.1 has none of the three, 3.4.0 all of them). Imported
unchecked, such a Triton failed with an AttributeError deep inside a kernel module, and the whole
app with it, on the CPU too. Checked here, it is an ImportError that says why, which the callers'
guards turn into the plain-torch paths.
"""

from __future__ import annotations

import re

MIN_VERSION = (3, 4)


def release(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as '3.4.0' or '3.6.0+git1b2c3d4'."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ImportError(f"Triton reports an unreadable version {version!r}")
    return int(match[1]), int(match[2])


def require_triton() -> None:
    """Nothing where this Triton can build the kernels; else an ImportError naming the reason."""
    import triton  # ImportError where it is not installed

    if release(triton.__version__) < MIN_VERSION:
        needed = ".".join(map(str, MIN_VERSION))
        raise ImportError(f"Triton {triton.__version__} is older than {needed}, which the fused kernels need")
