"""Temperature scaling (Guo et al. 2017) and the calibration figures it is judged by.

Pure functions on logits: fit one temperature by minimising NLL, then measure NLL, expected
calibration error (torchmetrics' MulticlassCalibrationError, L1, equal-width confidence bins) and
the reliability curve. Temperature scaling never changes the argmax, so accuracy is untouched;
what it changes is how confident (and, for a guide, how steep) the classifier is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# The profile accepts temperatures in (0, 100]; the fit searches the same interval.
T_MIN, T_MAX = 0.05, 100.0
ECE_BINS = 15


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / T)."""
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, iters: int = 80) -> float:
    """The T in [T_MIN, T_MAX] minimising NLL(logits / T): golden-section search on log T.

    NLL is convex in 1/T, hence unimodal in log T, so a bracketing search finds the minimum without
    the step-size tuning LBFGS needs; when the optimum lies outside the interval, the bound is returned.
    """
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on no samples")
    logits, labels = logits.detach().double(), labels.long()
    a, b = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    for _ in range(iters):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, labels, math.exp(d))
    best = math.exp((a + b) / 2)
    for bound in (T_MIN, T_MAX):  # the edges themselves, which the open search never evaluates
        if nll(logits, labels, bound) < nll(logits, labels, best):
            best = bound
    return best


def ece(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of softmax(logits / T) (L1, equal-width confidence bins)."""
    from torchmetrics.classification import MulticlassCalibrationError

    metric = MulticlassCalibrationError(num_classes=logits.shape[1], n_bins=n_bins, norm="l1")
    return float(metric(torch.softmax(logits.double() / temperature, dim=1).float(), labels.long()))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean()) if len(labels) else float("nan")


@dataclass
class Reliability:
    """Per confidence bin: mean confidence, accuracy and sample count (empty bins have count 0)."""

    edges: list[float]
    confidence: list[float]
    accuracy: list[float]
    count: list[int]


def reliability(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, n_bins: int = ECE_BINS) -> Reliability:
    """The reliability curve behind the ECE: bin samples by top-class confidence."""
    probs = torch.softmax(logits.double() / temperature, dim=1)
    conf, pred = probs.max(1)
    hit = (pred == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    idx = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)
    out = Reliability([float(e) for e in edges], [], [], [])
    for k in range(n_bins):
        sel = idx == k
        n = int(sel.sum())
        out.count.append(n)
        out.confidence.append(float(conf[sel].mean()) if n else float("nan"))
        out.accuracy.append(float(hit[sel].mean()) if n else float("nan"))
    return out


def above_chance(acc: float, n: int, chance: float, z: float = 3.0) -> bool:
    """Whether accuracy over n samples is clearly above chance: more than z binomial standard errors."""
    if n <= 0 or not math.isfinite(acc):
        return False
    return acc > chance + z * math.sqrt(chance * (1 - chance) / n)
