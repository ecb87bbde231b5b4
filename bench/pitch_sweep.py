"""Small probes of the pitch guide's settings: pitch-only (or digit + pitch) samples towards the unguided
median F0 -4 and +4 semitones, heard by pYIN. Each config is a JSON object: scale, lo, hi (the sigma
window), optional objective (softmax | bce), digit (true: with the digit guide at its default profile),
shifts (semitones, default [-4, 4]), sampler overrides churn and steps, capacity (tiny | full), smoothing and smoothing_samples, through (the gradient through the denoiser: true). reports/pitch/sweep.md holds the runs that set the default profile.

    python bench/pitch_sweep.py N STEPS '[{"scale":0.5,"lo":1,"hi":16}]' [NOISE_SEED]
"""
import json
import math
import statistics
import sys
import time

import torch

torch.set_num_threads(1)
from guidance.pipeline import ModelSet, ModelPaths, make_noise, sample_mels, vocode_finite
from guidance.guides import DEFAULT_PROFILES, GuideSettings
from guidance.guides.pitch import PitchGuide
from guidance.pitch_tracker import track
n = int(sys.argv[1]); steps = int(sys.argv[2]); configs = json.loads(sys.argv[3]); seed = int(sys.argv[4]) if len(sys.argv) > 4 else 100
models = ModelSet.load(ModelPaths(), "cpu")
guides = {"tiny": PitchGuide(models.spec, models.vocoder)}
noise = make_noise(n, models.spec, seed)
prof0 = DEFAULT_PROFILES["noisy"].with_sampler(steps=steps)
mels = sample_mels(models, "none", {}, prof0, noise)
w, ok = vocode_finite(mels, models.vocoder)
base = [track(x, 16000).median_hz for x in w]
fin = [b for b in base if math.isfinite(b)]
centre = statistics.median(fin)
print("unguided", [round(b) if math.isfinite(b) else None for b in base], "median", round(centre, 1), flush=True)
for cfg in configs:
    capacity = cfg.get("capacity", "tiny")
    if capacity not in guides:
        guides[capacity] = PitchGuide(models.spec, models.vocoder, capacity)
    g = guides[capacity]
    g.objective = cfg.get("objective", "softmax")
    digit = cfg.get("digit", False)
    sampler = {k: cfg[k] for k in ("churn", "steps") if k in cfg}
    prof = prof0.with_sampler(**sampler) if sampler else prof0
    prof = prof.model_copy(update={"per_guide": {"pitch": GuideSettings(scale=cfg["scale"], norm_scaling=True, sigma_lo=cfg["lo"], sigma_hi=cfg["hi"], schedule=cfg.get("schedule", "constant"), smoothing=cfg.get("smoothing", 0.0), smoothing_samples=cfg.get("smoothing_samples", 4), through_denoiser=cfg.get("through", False))}})
    res = []
    t0 = time.perf_counter()
    for k in cfg.get("shifts", [-4, 4]):
        hz = centre * 2 ** (k / 12); i = g.add_target(f"{hz:.0f}")
        named = {"pitch": torch.full((n,), i)}
        if digit: named["digit"] = torch.arange(n) % 10
        m = sample_mels(models, "noisy" if digit else "none", named, prof, noise, extra_guides={"pitch": g}, allow_nonfinite=True)
        w, ok = vocode_finite(m, models.vocoder)
        hs = [track(x, 16000) for x in w]
        errs = [h.error_semitones(g.line(i)) for h in hs]
        res.append((k, [f"{h.median_hz:.0f}" for h in hs], sum(e <= 1 for e in errs if math.isfinite(e)), sum(not math.isfinite(e) for e in errs), round(statistics.fmean(h.voiced_fraction for h in hs), 2)))
    tot = sum(r[2] for r in res); unv = sum(r[3] for r in res)
    print(json.dumps(cfg), f"within1st {tot}/{n*len(res)} unvoiced {unv}", f"{(time.perf_counter()-t0)/(n*len(res)):.1f}s/sample", res, flush=True)
