"""How the tests compare numbers with a reference."""

from __future__ import annotations

import torch


def rel_err(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """‖ours − reference‖ / ‖reference‖, computed in float64."""
    ours, reference = ours.double(), reference.double()
    return ((ours - reference).norm() / reference.norm()).item()
