"""Where each part runs and in which dtype: one table instead of dtype branches in the models."""

from __future__ import annotations

import torch

from .errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")
NAMED_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise DeviceError(f"device {name!r} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' was asked for, but this machine has no usable CUDA GPU (the CPU can run the model instead)")
    return torch.device(name)


def dit_dtype(precision: str, device: torch.device, checkpoint_dtype: torch.dtype) -> torch.dtype:
    """The DiT runs in its checkpoint's 16-bit dtype on a GPU, fp32 on the CPU, unless asked.

    An fp32 checkpoint runs in fp16 on a GPU: the 512/1024 models were trained in fp16.
    INT8 keeps the 16-bit dtype for the layers the quantization policy leaves alone.
    """
    if precision in NAMED_DTYPES:
        return NAMED_DTYPES[precision]
    if device.type == "cpu":
        return torch.float32
    return checkpoint_dtype if checkpoint_dtype in (torch.float16, torch.bfloat16) else torch.float16


def companion_dtype(precision: str, device: torch.device) -> torch.dtype:
    """DC-AE and Gemma: bf16 on a GPU (an fp16 DC-AE can overflow to black images), fp32 on the CPU."""
    if precision == "fp32" or device.type == "cpu":
        return torch.float32
    return torch.bfloat16


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in NAMED_DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))
