"""CREPE tiny or full, and which waveform route, for the pitch guide: cost per guide call against effect.

- cost: seconds of one guide gradient (route + CREPE forward and backward) for a batch of log-Mels;
- reading: on validation clips, the median F0 CREPE reads from each clip's log-Mel through each route,
  against pYIN's on the real recording (share within 1 semitone): what the guide can see;
- effect (optional, `--guided N`): N samples guided to the unguided median +-4 semitones with each
  capacity, heard by pYIN (share within 1 semitone).

    python bench/pitch_capacity.py [--clips 16] [--guided 0] [--steps 18]   (writes reports/pitch/capacity.json)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from guidance.data import fsdd_split, list_fsdd, load_wave, resolve_fsdd_root
from guidance.features import LogMel, fit_length
from guidance.guides.pitch import CAPACITIES, PitchGuide
from guidance.pipeline import ModelSet, make_noise, sample_mels, vocode_finite
from guidance.pitch_tracker import track


def cost(models: ModelSet, guide: PitchGuide, mels: torch.Tensor, repeats: int = 2) -> float:
    target = torch.full((len(mels),), guide.add_target("140"))
    one = torch.ones(len(mels))
    times = []
    for _ in range(repeats):
        x = mels.clone().requires_grad_(True)
        t0 = time.perf_counter()
        torch.autograd.grad(guide.log_prob(x, one, target, one).sum(), x)
        times.append(time.perf_counter() - t0)
    return min(times) / len(mels)


def reading(guide: PitchGuide, mels: torch.Tensor, truth: list[float]) -> float:
    f0, voiced = guide.track(mels)
    hits = 0
    for f, v, t in zip(f0, voiced, truth):
        if bool(v.any()) and math.isfinite(t):
            hits += abs(12 * math.log2(float(f[v].median()) / t)) <= 1.0
    return round(hits / sum(math.isfinite(t) for t in truth), 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--guided", type=int, default=0)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--out", default="reports/pitch/capacity.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = ModelSet.load(device="cpu")
    spec = models.spec
    clips = fsdd_split(list_fsdd(resolve_fsdd_root(None)), "val")
    clips = clips[:: max(1, len(clips) // args.clips)][: args.clips]
    waves = torch.stack([fit_length(load_wave(c.path, spec.sample_rate), spec.num_samples) for c in clips])
    mels = LogMel(spec)(waves)
    truth = [track(w, spec.sample_rate).median_hz for w in waves]
    result: dict = {"clips": len(clips), "cpu_threads": 1, "capacity": {}}
    for capacity in CAPACITIES:
        row: dict = {}
        for route, vocoder in (("vocoder", models.vocoder), ("griffin-lim", None)):
            guide = PitchGuide(spec, vocoder, capacity)
            row[f"reads_pyin_within_1st_{route}"] = reading(guide, mels, truth)
            if route == "vocoder":
                row["seconds_per_sample_per_call"] = round(cost(models, guide, mels[:4]), 3)
        result["capacity"][capacity] = row
        print(capacity, row, flush=True)
    if args.guided:
        prof0 = __import__("guidance.guides", fromlist=["DEFAULT_PROFILES"]).DEFAULT_PROFILES["noisy"].with_sampler(steps=args.steps)
        noise = make_noise(args.guided, spec, 7)
        base = [track(w, spec.sample_rate).median_hz for w in vocode_finite(sample_mels(models, "none", {}, prof0, noise), models.vocoder)[0]]
        centre = statistics.median([b for b in base if math.isfinite(b)])
        for capacity in CAPACITIES:
            guide = PitchGuide(spec, models.vocoder, capacity)
            prof = prof0.model_copy(update={"per_guide": {"pitch": guide.default_settings}})
            hits, t0 = 0, time.perf_counter()
            for k in (-4, 4):
                i = guide.add_target(f"{centre * 2 ** (k / 12):.0f}")
                out = sample_mels(models, "none", {"pitch": torch.full((args.guided,), i)}, prof, noise, extra_guides={"pitch": guide}, allow_nonfinite=True)
                heard = [track(w, spec.sample_rate) for w in vocode_finite(out, models.vocoder)[0]]
                hits += sum(h.error_semitones(guide.line(i)) <= 1.0 for h in heard)
            result["capacity"][capacity]["guided_within_1st"] = round(hits / (2 * args.guided), 3)
            result["capacity"][capacity]["guided_seconds_per_sample"] = round((time.perf_counter() - t0) / (2 * args.guided), 1)
            print(capacity, result["capacity"][capacity], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
