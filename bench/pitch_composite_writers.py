"""Is a digit + pitch composite's digit rate set by the guidance or by the vocoder that writes it?

`evaluate-pitch` under `--vocoder auto` writes digit-only samples with the neural vocoder and digit + pitch
samples with the harmonic one, so its composite / digit-only ratio mixes both. This samples the same two
systems as evaluate-pitch (same noise, profile and pitch guide, CREPE plus the harmonic vocoder's F0 head)
and has the outside recognizer (PocketSphinx) hear each log-Mel written by both vocoders, side by side.

    python bench/pitch_composite_writers.py --seeds 1,3 [--samples 12] [--targets 101,113,142,160]
"""

from __future__ import annotations

import argparse

import torch

from guidance.data import DIGITS, as_written
from guidance.guides.pitch import PitchGuide
from guidance.pipeline import ModelPaths, ModelSet, sample_plan
from guidance.pitch_eval import PitchEvalConfig, _profile
from guidance.plan import Target, plan_request, targets_for
from outside_judges.report import default_recognizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,3")
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--targets", default="101,113,142,160")
    args = parser.parse_args()
    models = ModelSet.load(ModelPaths(), "cpu", vocoder="auto")
    if models.vocoder.harmonic is None:
        raise SystemExit("the models directory has no F0 head: nothing to compare")
    profile = _profile(PitchEvalConfig(samples=args.samples))
    guide = PitchGuide(models.spec, models.vocoder, "tiny")
    recognizer, rate = default_recognizer(), models.spec.sample_rate
    writers = {"neural": models.vocoder.neural, "harmonic": models.vocoder.harmonic}
    print("| seed | system | neural | harmonic |\n|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        digits = torch.arange(args.samples) % 10
        said_targets = targets_for("digit", [DIGITS[d] for d in digits.tolist()])
        systems = {"digit only": [said_targets], "digit + pitch": [[*said_targets, Target("pitch", t)] for t in args.targets.split(",")]}
        for name, requests in systems.items():
            hits = {w: 0 for w in writers}
            for targets in requests:
                plan = plan_request(targets, 1, seed, profile, models.guides["noisy"], digit_kind="noisy", scale_set=True, pitch_guide=guide)
                mels = sample_plan(models, plan, {"pitch": guide}, allow_nonfinite=True)
                for w, vocoder in writers.items():
                    with torch.no_grad():
                        waves = as_written(vocoder(torch.nan_to_num(mels)), rate)
                    hits[w] += sum(recognizer.recognize(x, rate) == int(d) for x, d in zip(waves, digits))
            n = args.samples * len(requests)
            print(f"| {seed} | {name} | {hits['neural'] / n:.3f} | {hits['harmonic'] / n:.3f} |", flush=True)


if __name__ == "__main__":
    main()
