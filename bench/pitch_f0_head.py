"""Does the harmonic vocoder keep low voices without costing quality? Real clips, side by side in one run.

bench/pitch_phase.py found that the neural vocoder loses low voices in its phase: its own magnitude with
the phase of a pulse train at the recording's F0 (an oracle) keeps them. The harmonic vocoder
(`guidance.harmonic_vocoder`, `--vocoder harmonic`) replaces the oracle by the committed F0 head
(`models/f0-head.safetensors`, `speechguide train f0-head`), which reads the F0 off the same log-Mel.
This measures: (a) on test clips shifted by each --shifts value, the share pYIN hears voiced and within
1 semitone of the shifted recording, neural against harmonic; (b) on validation clips, the outside
judges (digit ASR, DNSMOS) on the recordings and both round trips. The head's labels come from pYIN,
which also judges (a): (b) is the check that nothing was fitted to the judge.

    python bench/pitch_f0_head.py [--clips 48] [--shifts 0,-4] [--val-every 3]
"""

from __future__ import annotations

import argparse
import math

import torch

from guidance.data import fsdd_split, list_fsdd, load_wave, load_waves, resolve_fsdd_root
from guidance.features import LogMel, fit_length
from guidance.pipeline import ModelPaths, ModelSet
from guidance.pitch_tracker import track
from guidance.vocoders import load_vocoder, vocode_batched
from pitch_ceiling import shifted, test_clips
from pitch_phase import peak_normalized


def pitch_rows(models: ModelSet, harmonic: torch.nn.Module, clips: list, shifts: list[float], say=print) -> None:
    rate, front = models.spec.sample_rate, LogMel(models.spec)
    say("| shift st | way back to audio | voiced | within 1 st of the shifted recording |\n|---|---|---|---|")
    for st in shifts:
        voiced = {"neural round trip": 0, "harmonic round trip": 0}
        within = dict(voiced)
        for clip in clips:
            recording = fit_length(shifted(load_wave(clip.path, rate), rate, st), models.spec.num_samples)
            reference = track(peak_normalized(recording), rate).median_hz
            mels = front(recording[None])
            ways = {"neural round trip": models.vocoder(mels)[0], "harmonic round trip": harmonic(mels)[0]}
            for name, wave in ways.items():
                heard = track(wave, rate).median_hz
                if math.isfinite(heard):
                    voiced[name] += 1
                    within[name] += math.isfinite(reference) and abs(12 * math.log2(heard / reference)) <= 1
        for name in voiced:
            say(f"| {st:+g} | {name} | {voiced[name] / len(clips):.2f} | {within[name] / len(clips):.2f} |")


def judge_rows(models: ModelSet, harmonic: torch.nn.Module, every: int, say=print) -> None:
    from outside_judges.report import judge_waves, summary_row

    clips = fsdd_split(list_fsdd(resolve_fsdd_root()), "val")[::every]
    waves = load_waves(clips, models.spec)
    mels = LogMel(models.spec)(waves)
    rate = models.spec.sample_rate
    ways = {"recordings": waves, "neural round trip": vocode_batched(models.vocoder, mels), "harmonic round trip": vocode_batched(harmonic, mels)}
    say(f"\n{len(clips)} validation clips (1 in {every})\n\n| way back to audio | outside ASR | DNSMOS SIG | BAK | OVRL |\n|---|---|---|---|---|")
    for name, out in ways.items():
        r = summary_row(judge_waves(out, rate, [c.digit for c in clips]))
        say(f"| {name} | {r['asr_accuracy']:.2f} | {r['sig']:.2f} | {r['bak']:.2f} | {r['ovrl']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=48, help="test clips for the pitch rows, taken evenly across the split")
    ap.add_argument("--shifts", default="0,-4", help="semitones, comma-separated")
    ap.add_argument("--val-every", type=int, default=3, help="every n-th validation clip for the outside judges")
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = ModelSet.load(device="cpu", vocoder="neural")
    harmonic = load_vocoder("harmonic", models.spec, ModelPaths().root)
    pitch_rows(models, harmonic, test_clips(args.clips), [float(s) for s in args.shifts.split(",")])
    judge_rows(models, harmonic, args.val_every)


if __name__ == "__main__":
    main()
