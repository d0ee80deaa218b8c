"""How the tests compare numbers with a reference."""

from __future__ import annotations

import numpy as np
import torch


def rel_err(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """‖ours − reference‖ / ‖reference‖, computed in float64."""
    ours, reference = ours.double(), reference.double()
    return ((ours - reference).norm() / reference.norm()).item()


def psnr(a, b) -> float:
    """PSNR in dB of two 8-bit images (arrays or PIL images), computed in float64; inf if equal."""
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
