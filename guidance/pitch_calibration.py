"""Per-sigma behaviour of CREPE on the denoiser's x0 estimate: where does the pitch guide read a real pitch?

For validation clips x0, at each sigma: x_t = x0 + sigma * n, x0_hat = D(x_t, sigma), and CREPE (through
the guide's own route) reads the median F0 of x0_hat and of x0. Reported per sigma: the share of clips
whose x0_hat median lies within 1 semitone of x0's (does x0_hat already carry the clip's pitch?), the
voiced share of speech frames, and the norm of the guide's gradient relative to ||x0_hat - x_t|| (what
norm scaling divides by). Where agreement is near chance the guide reads noise: above that sigma it is
switched off; where agreement is near 1 the pitch is settled and guidance can only repair details.

    python -m guidance.pitch_calibration [clips] [capacity]   (writes reports/pitch/calibration.json)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from guidance.data import fsdd_split, list_fsdd, load_wave, resolve_fsdd_root
from guidance.features import LogMel, fit_length
from guidance.guides.pitch import PitchGuide
from guidance.pipeline import ModelSet

SIGMAS = (0.1, 0.3, 1.0, 2.0, 4.0, 8.0, 16.0, 40.0)


def _medians(guide: PitchGuide, mels: torch.Tensor) -> tuple[list[float], list[float]]:
    f0, voiced = guide.track(mels)
    meds = [float(f[v].median()) if bool(v.any()) else float("nan") for f, v in zip(f0, voiced)]
    _, gate = guide.frames(mels)
    frac = [float(v.sum() / g.sum().clamp_min(1)) for v, g in zip(voiced, gate)]
    return meds, frac


def calibrate_pitch(models: ModelSet, clips: int = 16, capacity: str = "tiny", seed: int = 0) -> dict:
    spec = models.spec
    chosen = fsdd_split(list_fsdd(resolve_fsdd_root(None)), "val")
    chosen = chosen[:: max(1, len(chosen) // clips)][:clips]
    x0 = LogMel(spec)(torch.stack([fit_length(load_wave(c.path, spec.sample_rate), spec.num_samples) for c in chosen])).to(models.device)
    guide = PitchGuide(spec, models.vocoder, capacity, device=models.device)
    clean, _ = _medians(guide, x0)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for sigma in SIGMAS:
        s = torch.full((len(x0),), sigma, device=models.device)
        x_t = x0 + sigma * torch.randn(x0.shape, generator=gen).to(models.device)
        with torch.no_grad():
            x0_hat = models.denoiser.model(x_t, s)
        meds, frac = _medians(guide, x0_hat)
        agree = [abs(12 * math.log2(m / c)) <= 1.0 for m, c in zip(meds, clean) if math.isfinite(m) and math.isfinite(c)]
        targets = torch.tensor([guide.add_target(f"{c:.0f}" if math.isfinite(c) else "120") for c in clean])
        x = x0_hat.detach().requires_grad_(True)
        logp = guide.log_prob(x, s, targets, torch.ones_like(s))
        (grad,) = torch.autograd.grad(logp.sum(), x)
        ratio = (grad.flatten(1).norm(dim=1) / (x0_hat - x_t).flatten(1).norm(dim=1)).median()
        rows.append({
            "sigma": sigma,
            "agree_within_1st": round(sum(agree) / len(x0), 3),
            "voiced_fraction": round(sum(frac) / len(frac), 3),
            "logp_at_true_pitch": round(float(logp.mean()), 3),
            "grad_over_step_norm": float(f"{float(ratio):.3g}"),
        })
    return {"clips": len(x0), "capacity": capacity, "route": guide.route.kind, "clean_median_f0_hz": [round(c, 1) for c in clean], "per_sigma": rows}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    cap = sys.argv[2] if len(sys.argv) > 2 else "tiny"
    result = calibrate_pitch(ModelSet.load(device="cpu"), n, cap)
    out = Path("reports/pitch/calibration.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for r in result["per_sigma"]:
        print(r)
