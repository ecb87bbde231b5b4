"""Calibration pictures: reliability diagrams (before/after) and per-sigma curves (Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path

from guidance.calibration.noise_levels import BinResult, CalibrationResult

MIN_POINT = 5  # confidence bins with fewer samples are noise in a reliability plot


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=80)
    fig.clf()
    tmp.replace(path)
    return path


def shown_bins(result: CalibrationResult, k: int = 4) -> list[int]:
    """The k highest-sigma bins still above chance (where the classifier errs and calibration has
    work to do; below them it is near-perfect), or the lowest bins when none is above chance."""
    good = [i for i, b in enumerate(result.bins) if b.above_chance]
    return good[-k:] if good else list(range(min(k, len(result.bins))))


def reliability_diagram(result: CalibrationResult, path: Path, k: int = 4) -> Path:
    """Accuracy against confidence per confidence bin, before and after (cross-fitted) scaling."""
    plt = _pyplot()
    picks = shown_bins(result, k)
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.4), squeeze=False)
    for ax, i in zip(axes[0], picks):
        b: BinResult = result.bins[i]
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        for rel, label, color in ((b.reliability_before, f"T=1, ECE {b.ece_before:.3f}", "tab:red"),
                                  (b.reliability_after, f"T={b.temperature:.2f}, ECE {b.ece_after:.3f}", "tab:blue")):
            pts = [(c, a) for c, a, n in zip(rel.confidence, rel.accuracy, rel.count) if n >= MIN_POINT]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, color=color, label=label)
        ax.set_title(f"sigma {b.sigma_lo:.3g}-{b.sigma_hi:.3g} (acc {b.accuracy:.0%})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("accuracy")
    fig.suptitle(f"Clean classifier on x0_hat: reliability before / after temperature scaling (confidence bins with >= {MIN_POINT} samples)", fontsize=10)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def sigma_curves(result: CalibrationResult, path: Path) -> Path:
    """Accuracy, ECE before/after, temperature and gradient cosine against sigma (log x axis)."""
    plt = _pyplot()
    bins = result.bins
    x = [b.sigma_center for b in bins]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    ax = axes[0][0]
    ax.plot(x, [b.accuracy for b in bins], marker="o", label="clean classifier on x0_hat")
    if all(b.noisy_accuracy is not None for b in bins):
        ax.plot(x, [b.noisy_accuracy for b in bins], marker="s", label="noise-conditioned on x_t")
    ax.axhline(result.chance, color="0.6", ls="--", lw=1, label="chance")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax = axes[0][1]
    ax.plot(x, [b.ece_before for b in bins], marker="o", color="tab:red", label="ECE before (T=1)")
    ax.plot(x, [b.ece_after for b in bins], marker="o", color="tab:blue", label="ECE after (cross-fitted)")
    ax.set_ylabel("expected calibration error")
    ax.legend(fontsize=7)
    ax = axes[1][0]
    ax.plot(x, [b.temperature for b in bins], marker="o", color="tab:green")
    ax.axhline(1.0, color="0.6", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_ylabel("fitted temperature")
    ax = axes[1][1]
    cos = [b.grad_cosine for b in bins]
    if all(c is not None and math.isfinite(c) for c in cos):
        ax.plot(x, cos, marker="o", label="T = 1")
        ax.plot(x, [b.grad_cosine_calibrated for b in bins], marker="x", label="calibrated T")
        ax.axhline(0.0, color="0.6", ls="--", lw=1)
        ax.legend(fontsize=7)
    ax.set_ylabel("cos(clean grad wrt x0_hat, noisy grad wrt x_t)")
    for row in axes:
        for a in row:
            a.set_xscale("log")
            a.set_xlabel("sigma")
            a.grid(alpha=0.3, which="both")
    fig.suptitle("Clean classifier across noise levels (validation data)", fontsize=10)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
