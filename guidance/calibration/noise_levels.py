"""Calibrate a clean classifier across noise levels, as it is used for guidance.

For every sigma bin (log-spaced over the sampler's range), labelled clips x0 are noised,
x_t = x0 + sigma * eps with sigma log-uniform inside the bin, denoised by the U-Net,
x0_hat = D(x_t, sigma), and the clean classifier reads x0_hat exactly as the clean guide does.
One temperature per bin is fitted by minimising NLL. The figures "after" are cross-fitted: the
clips are split into two folds (all noise draws of a clip stay in one fold), each fold is scored
with the temperature fitted on the other, so no ECE is measured on the data its temperature was
fitted on. The temperatures written to the profile are then fitted on all clips.

Alongside, per bin: the cosine between the clean guide's gradient (wrt x0_hat, what
`guide_gradient` returns for it) and the noise-conditioned classifier's gradient wrt x_t, both for
the true label, at T = 1 and at the calibrated T: how well the repurposed classifier points where
a classifier trained for that noise level points.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from guidance.calibration.temperature import (
    ECE_BINS,
    Reliability,
    above_chance,
    accuracy,
    ece,
    fit_temperature,
    nll,
    reliability,
)
from guidance.diffusion.precond import Denoiser
from guidance.diffusion.schedule import SIGMA_MAX, SIGMA_MIN
from guidance.finite import require_finite
from guidance.guides.base import Guide, GuideTerm, guide_gradient
from guidance.guides.profile import GuidanceProfile, GuideSettings


@dataclass
class CalibrationConfig:
    """One source of defaults for `speechguide calibrate`."""

    bins: int = 10
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    draws: int = 2  # noise draws per clip and bin
    seed: int = 0
    batch_size: int = 100
    ece_bins: int = ECE_BINS
    chance_z: float = 3.0  # "clearly above chance": more than z binomial standard errors

    def __post_init__(self) -> None:
        if self.bins < 1:
            raise ValueError(f"bins must be at least 1, got {self.bins}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.draws < 1 or self.batch_size < 1:
            raise ValueError("draws and batch_size must be at least 1")


def sigma_edges(sigma_min: float, sigma_max: float, bins: int) -> list[float]:
    """Log-spaced bin edges from sigma_min to sigma_max (bins + 1 values)."""
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return [math.exp(lo + (hi - lo) * k / bins) for k in range(bins + 1)]


@dataclass
class BinSamples:
    """What one sigma bin produced: per sample its sigma, clip index and label, the clean
    classifier's logits on x0_hat, the noisy classifier's logits on x_t, and x0_hat / x_t for
    re-measuring gradients at another temperature."""

    sigma: torch.Tensor
    clip: torch.Tensor
    labels: torch.Tensor
    clean_logits: torch.Tensor
    noisy_logits: torch.Tensor | None
    x0_hat: torch.Tensor
    x_t: torch.Tensor


@dataclass
class BinResult:
    """Every figure reported for one sigma bin."""

    sigma_lo: float
    sigma_hi: float
    sigma_center: float
    n: int
    accuracy: float
    above_chance: bool
    temperature: float
    fold_temperatures: list[float]
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    noisy_accuracy: float | None
    grad_cosine: float | None  # clean guide at T = 1 vs noise-conditioned classifier
    grad_cosine_calibrated: float | None  # clean guide at the calibrated T
    reliability_before: Reliability
    reliability_after: Reliability


@dataclass
class CalibrationResult:
    config: dict
    edges: list[float]
    chance: float
    bins: list[BinResult] = field(default_factory=list)
    folds: str = "2-fold cross-fitting by clip"

    @property
    def temperatures(self) -> list[float]:
        return [b.temperature for b in self.bins]

    def sigma_hi_above_chance(self) -> float | None:
        """Upper edge of the highest bin whose accuracy is clearly above chance (None if none is)."""
        good = [b.sigma_hi for b in self.bins if b.above_chance]
        return max(good) if good else None

    @classmethod
    def from_dict(cls, data: dict) -> "CalibrationResult":
        """Read back what `to_dict` wrote (calibration.json)."""
        bins = []
        for b in data["bins"]:
            rel = {k: Reliability(**b[k]) for k in ("reliability_before", "reliability_after")}
            bins.append(BinResult(**{**b, **rel}))
        return cls(config=data["config"], edges=list(data["edges"]), chance=data["chance"], bins=bins, folds=data.get("folds", ""))

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "edges": self.edges,
            "chance": self.chance,
            "folds": self.folds,
            "sigma_hi_above_chance": self.sigma_hi_above_chance(),
            "bins": [asdict(b) for b in self.bins],
        }


def _folds(n_clips: int, seed: int) -> torch.Tensor:
    """Fold (0 or 1) of every clip, from a seeded permutation."""
    perm = torch.randperm(n_clips, generator=torch.Generator().manual_seed(seed + 7919))
    fold = torch.empty(n_clips, dtype=torch.long)
    fold[perm] = torch.arange(n_clips) % 2
    return fold


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1, eps=1e-30)


def gradient_cosine(
    clean: Guide, noisy: Guide, samples: BinSamples, temperature: float, batch_size: int = 100, device: torch.device | str = "cpu"
) -> float:
    """Mean cosine between the clean guide's gradient (wrt x0_hat, at `temperature`) and the noisy
    classifier's gradient wrt x_t, both towards the true label, over the bin's samples."""
    out = []
    for start in range(0, len(samples.labels), batch_size):
        rows = slice(start, start + batch_size)
        x0_hat, x_t = samples.x0_hat[rows].to(device), samples.x_t[rows].to(device)
        sigma, y = samples.sigma[rows].to(device), samples.labels[rows].to(device)
        clean_term = GuideTerm(clean, y, GuideSettings(temperature=temperature, input="x0_hat"))
        noisy_term = GuideTerm(noisy, y, GuideSettings())
        g_clean, _ = guide_gradient(clean_term, x_t, sigma, x0_hat)
        g_noisy, _ = guide_gradient(noisy_term, x_t, sigma, x0_hat)
        out.append(_cosines(g_clean, g_noisy).cpu())
    return float(torch.cat(out).mean())


@torch.no_grad()
def collect_bin(
    denoiser: Denoiser,
    clean: Guide,
    noisy: Guide | None,
    mels: torch.Tensor,
    labels: torch.Tensor,
    lo: float,
    hi: float,
    cfg: CalibrationConfig,
    bin_index: int,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> BinSamples:
    """Noise every clip `cfg.draws` times at sigma log-uniform in [lo, hi), denoise, classify.

    Raises NonFiniteError when x0_hat or either classifier's logits are not finite: a temperature
    fitted to NaN logits is meaningless, and nothing should be written from it."""
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + bin_index)
    n = len(labels) * cfg.draws
    clip = torch.arange(len(labels)).repeat(cfg.draws)
    sigma = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(n, generator=gen))
    eps = torch.randn(n, *mels.shape[1:], generator=gen)
    parts: dict[str, list[torch.Tensor]] = {"x_t": [], "x0_hat": [], "clean": [], "noisy": []}
    for start in range(0, n, cfg.batch_size):
        rows = slice(start, start + cfg.batch_size)
        s = sigma[rows].to(device)
        x_t = mels[clip[rows]].to(device) + s.view(-1, 1, 1, 1) * eps[rows].to(device)
        x0_hat = denoiser(x_t, s)
        parts["x_t"].append(x_t.cpu())
        parts["x0_hat"].append(x0_hat.cpu())
        parts["clean"].append(clean.logits(x0_hat, None).cpu() if hasattr(clean, "logits") else _logits_via_log_prob(clean, x0_hat, s))
        if noisy is not None:
            parts["noisy"].append(noisy.logits(x_t, s).cpu() if hasattr(noisy, "logits") else _logits_via_log_prob(noisy, x_t, s))
        if on_batch:
            on_batch(len(s))
    where = f"calibration bin {bin_index} (sigma {lo:.4g} to {hi:.4g})"
    for key, what in (("x0_hat", "the denoiser's x0_hat"), ("clean", "the clean classifier's logits"), ("noisy", "the noisy classifier's logits")):
        if parts[key]:
            require_finite(torch.cat(parts[key]), f"{where}: {what}")
    return BinSamples(
        sigma=sigma,
        clip=clip,
        labels=labels[clip].long(),
        clean_logits=torch.cat(parts["clean"]).double(),
        noisy_logits=torch.cat(parts["noisy"]).double() if noisy is not None else None,
        x0_hat=torch.cat(parts["x0_hat"]),
        x_t=torch.cat(parts["x_t"]),
    )


def _logits_via_log_prob(guide: Guide, inp: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of every label (logits up to a constant) for guides without `logits`."""
    ones = torch.ones_like(sigma)
    cols = [guide.log_prob(inp, sigma, torch.full_like(sigma, k, dtype=torch.long), ones) for k in range(len(guide.labels))]
    return torch.stack(cols, 1).cpu()


def fit_bin(samples: BinSamples, fold_of_clip: torch.Tensor, n_ece_bins: int = ECE_BINS) -> tuple[float, list[float], dict]:
    """Fit the bin's temperature on all samples and, cross-fitted, measure NLL / ECE after.

    Returns (temperature on all clips, per-fold temperatures, held-out figures)."""
    logits, y = samples.clean_logits, samples.labels
    fold = fold_of_clip[samples.clip]
    t_fold = [fit_temperature(logits[fold == k], y[fold == k]) for k in (0, 1)]
    # each sample scored at the temperature fitted on the other fold
    t_held = torch.where(fold == 0, torch.tensor(t_fold[1]), torch.tensor(t_fold[0])).double().view(-1, 1)
    held_logits = logits / t_held  # temperature folded into the logits; metrics then use T = 1
    figures = {
        "nll_after": nll(held_logits, y),
        "ece_after": ece(held_logits, y, 1.0, n_ece_bins),
        "reliability_after": reliability(held_logits, y, 1.0, n_ece_bins),
    }
    return fit_temperature(logits, y), t_fold, figures


def calibrate(
    denoiser: Denoiser,
    clean: Guide,
    noisy: Guide | None,
    mels: torch.Tensor,
    labels: torch.Tensor,
    cfg: CalibrationConfig,
    device: torch.device | str = "cpu",
    progress: Callable[[str, int], None] | None = None,
) -> CalibrationResult:
    """Per sigma bin: accuracy, NLL and ECE before/after temperature scaling, the fitted
    temperature, and the clean-vs-noisy gradient cosine. `progress(status, n_done)` is told about
    every batch."""
    edges = sigma_edges(cfg.sigma_min, cfg.sigma_max, cfg.bins)
    chance = 1.0 / len(clean.labels)
    result = CalibrationResult(config=asdict(cfg), edges=edges, chance=chance)
    fold_of_clip = _folds(len(labels), cfg.seed)
    for k, (lo, hi) in enumerate(zip(edges, edges[1:])):
        status = f"sigma {lo:.3g}-{hi:.3g}"
        on_batch = (lambda n, s=status: progress(s, n)) if progress else None
        samples = collect_bin(denoiser, clean, noisy, mels, labels, lo, hi, cfg, k, device, on_batch)
        t, t_fold, held = fit_bin(samples, fold_of_clip, cfg.ece_bins)
        logits, y = samples.clean_logits, samples.labels
        acc = accuracy(logits, y)
        cos = cos_cal = None
        if noisy is not None:
            cos = gradient_cosine(clean, noisy, samples, 1.0, cfg.batch_size, device)
            cos_cal = gradient_cosine(clean, noisy, samples, t, cfg.batch_size, device)
        result.bins.append(
            BinResult(
                sigma_lo=lo,
                sigma_hi=hi,
                sigma_center=math.sqrt(lo * hi),
                n=len(y),
                accuracy=acc,
                above_chance=above_chance(acc, len(y), chance, cfg.chance_z),
                temperature=t,
                fold_temperatures=t_fold,
                nll_before=nll(logits, y),
                nll_after=held["nll_after"],
                ece_before=ece(logits, y, 1.0, cfg.ece_bins),
                ece_after=held["ece_after"],
                noisy_accuracy=accuracy(samples.noisy_logits, y) if samples.noisy_logits is not None else None,
                grad_cosine=cos,
                grad_cosine_calibrated=cos_cal,
                reliability_before=reliability(logits, y, 1.0, cfg.ece_bins),
                reliability_after=held["reliability_after"],
            )
        )
    return result


def calibrated_profile(
    base: GuidanceProfile, result: CalibrationResult, window: bool = False, min_temperature: float | None = None
) -> GuidanceProfile:
    """`base` with the per-bin temperatures; with `window`, guidance is also switched off above the
    highest sigma bin where the classifier is clearly above chance (sigma_hi = that bin's upper edge).

    Temperature scaling leaves the argmax alone, so it cannot make a classifier at chance useful:
    its gradient there is noise, which the window removes. `min_temperature` floors the profile's
    temperatures: in bins where the classifier makes no error the NLL optimum runs to the fit's lower
    bound (any T -> 0 fits), and such a sharpened guide's gradient only separates the target from the
    runner-up class."""
    temps = result.temperatures if min_temperature is None else [max(t, min_temperature) for t in result.temperatures]
    changes: dict = {"temperature_sigma_edges": result.edges, "temperatures": temps}
    name = f"{base.name}-calibrated" + ("" if min_temperature is None else f"-tmin{min_temperature:g}")
    if window:
        hi = result.sigma_hi_above_chance()
        if hi is None:
            raise ValueError("no sigma bin is above chance: there is no window to guide in")
        lo = base.guide.sigma_lo
        changes["sigma_hi"] = hi if hi > lo else base.guide.sigma_hi
        name += "-window"
    return base.with_guide(**changes).model_copy(update={"name": name})
