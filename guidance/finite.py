"""One error for NaN and infinity, and the checks that raise it before a bad value does damage.

A NaN that reaches LAPACK (torchmetrics' Frechet distance calls `torch.linalg.eigvals`) can crash
the whole process with SIGSEGV instead of raising, and a NaN sample written as audio is silent
garbage. So values are checked where they enter such places, and the error says what was
non-finite, how much of it, and (from the sampler) at which step and noise level.
"""

from __future__ import annotations

from typing import Optional

import torch


class NonFiniteError(ValueError):
    """A tensor held NaN or infinity where only finite values make sense.

    `what` names the tensor, `count` and `total` say how many of its values were non-finite; a
    sampler fills in `step` (the 0-based index of the step whose result went non-finite) and
    `sigma` (the noise level that step started from).
    """

    def __init__(
        self,
        message: str,
        what: str = "",
        count: int = 0,
        total: int = 0,
        step: Optional[int] = None,
        sigma: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.what, self.count, self.total, self.step, self.sigma = what, count, total, step, sigma


def nonfinite_count(tensor: torch.Tensor) -> int:
    """How many values of `tensor` are NaN or infinite (0 for integer tensors)."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0
    return int((~torch.isfinite(tensor)).sum())


def nonfinite_rows(tensor: torch.Tensor) -> torch.Tensor:
    """(N,) bool: which rows (first dimension) hold any NaN or infinity."""
    if tensor.ndim == 0:
        return ~torch.isfinite(tensor).reshape(1)
    if tensor.ndim == 1:
        return ~torch.isfinite(tensor)
    return ~torch.isfinite(tensor.flatten(1)).all(dim=1)


def require_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """Return `tensor` unchanged, or raise NonFiniteError saying how many of `what`'s values are not finite."""
    count = nonfinite_count(tensor)
    if count:
        total = tensor.numel()
        raise NonFiniteError(f"{what} has {count} non-finite value(s) (NaN or inf) out of {total}", what, count, total)
    return tensor
