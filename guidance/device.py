"""Where tensors live: CUDA when present, otherwise the CPU, with no code change elsewhere."""

from __future__ import annotations

import os

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` (or $SPEECHGUIDE_DEVICE) wins; else the first CUDA GPU if any; else the CPU."""
    name = requested or os.environ.get("SPEECHGUIDE_DEVICE")
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
