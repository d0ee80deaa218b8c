"""What every launcher asks before it launches: Triton or the reference, and how big the GPU is."""

from __future__ import annotations

import functools

import torch
import triton

INTERPRET = triton.knobs.runtime.interpret


def use_triton(x: torch.Tensor) -> bool:
    """Triton for CUDA tensors, and for CPU tensors under TRITON_INTERPRET=1; else the reference."""
    return x.is_cuda or INTERPRET


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessors(x: torch.Tensor) -> int:
    """The device's SM count; a small stand-in under the interpreter, so splits still happen."""
    return _multiprocessors(x.device.index if x.device.index is not None else 0) if x.is_cuda else 4
