"""Can the pitch guide's gradient alone move a real voice's pitch? No diffusion model: gradient ascent on
CREPE's log-likelihood of a target F0 directly on real clips' log-Mels (normalized steps, 2% of the
log-Mel's norm each), then CREPE's own reading and pYIN's (the independent judge) of the vocoded result.

If CREPE reads the target while pYIN hears something else, the gradient fools CREPE rather than moving the
pitch, and no sampler setting can make guidance towards that target audible.

    python bench/pitch_direct.py [--targets 90,140] [--iterations 40] [--capacity tiny] [--objective softmax]
"""

from __future__ import annotations

import argparse
import math

import torch

from guidance.data import load_wave, resolve_fsdd_root
from guidance.guides.pitch import CAPACITIES, OBJECTIVES, PitchGuide, log_mel_of
from guidance.pipeline import ModelSet, vocode_finite
from guidance.pitch_tracker import track

CLIPS = ("0_jackson_5", "9_lucas_5", "3_yweweler_5")  # three speakers near the training median F0


def readings(guide: PitchGuide, models: ModelSet, mels: torch.Tensor) -> tuple[list, list]:
    waves, _ = vocode_finite(mels, models.vocoder)
    f0, voiced = guide.track(mels)
    crepe = [round(float(f0[k][voiced[k]].median())) if voiced[k].any() else None for k in range(len(mels))]
    heard = [track(w, models.spec.sample_rate).median_hz for w in waves]
    return crepe, [round(h) if math.isfinite(h) else None for h in heard]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="90,140", help="Hz, comma-separated")
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--step", type=float, default=0.02, help="step length as a share of the log-Mel's norm")
    ap.add_argument("--capacity", choices=CAPACITIES, default="tiny")
    ap.add_argument("--objective", choices=OBJECTIVES, default="softmax")
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = ModelSet.load(device="cpu")
    guide = PitchGuide(models.spec, models.vocoder, args.capacity, objective=args.objective)
    root = resolve_fsdd_root()
    mels = torch.cat([log_mel_of(load_wave(root / "recordings" / f"{name}.wav", models.spec.sample_rate)[None], models.spec) for name in CLIPS])
    crepe, heard = readings(guide, models, mels)
    print(f"clips {', '.join(CLIPS)}: CREPE reads {crepe}, pYIN hears {heard}")
    one = torch.ones(len(mels))
    for hz in (float(t) for t in args.targets.split(",")):
        target = torch.full((len(mels),), guide.add_target(f"{hz:g}"))
        x = mels.clone()
        for it in range(1, args.iterations + 1):
            x.requires_grad_(True)
            grad, = torch.autograd.grad(guide.log_prob(x, one, target, one).sum(), x)
            size = args.step * x.detach().flatten(1).norm(dim=1) / grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            x = (x + size.view(-1, 1, 1, 1) * grad).detach()
            if it % 10 == 0 or it == args.iterations:
                crepe, heard = readings(guide, models, x)
                print(f"target {hz:g} Hz, step {it}: CREPE reads {crepe}, pYIN hears {heard}", flush=True)


if __name__ == "__main__":
    main()
