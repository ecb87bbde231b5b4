"""What pitch the log-Mel and the vocoder can carry at all: real test recordings, pitch-shifted by a
phase vocoder (librosa), analysed into the model's log-Mel and written back by the neural vocoder.

For each shift, pYIN (the pitch guide's independent judge) hears the shifted recording and its round
trip; a round trip is "kept" when pYIN hears it voiced with a median F0 within 1 semitone of the shifted
recording's. No model is sampled: this is the ceiling of any pitch guide on this front end and vocoder,
and the share of guided samples that can be on target cannot exceed it by much.

    python bench/pitch_ceiling.py [--clips 48] [--shifts -4,-2,0,2,4] [--vocoder FILE] [--json reports/pitch/ceiling.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from guidance.data import fsdd_split, list_fsdd, load_wave, resolve_fsdd_root
from guidance.f0_head_training import pitch_shifted as shifted  # the shift the F0 head was trained on
from guidance.guides.pitch import log_mel_of
from guidance.pipeline import ModelSet, vocode_finite
from guidance.pitch_targets import PitchLine
from guidance.pitch_tracker import track


def ceiling(models: ModelSet, clips: list, shifts: list[float], say=print) -> dict[str, dict]:
    """One row per shift: shares of recordings and round trips pYIN hears voiced, and of the voiced
    recordings whose round trip stays within 1 semitone."""
    rate = models.spec.sample_rate
    recordings = [load_wave(clip.path, rate) for clip in clips]  # read once, shifted per row
    rows: dict[str, dict] = {}
    say("| shift st | recordings voiced | round trips voiced | kept (voiced, within 1 st) | median F0 of recordings Hz |")
    say("|---|---|---|---|---|")
    for st in shifts:
        voiced = trip_voiced = kept = 0
        medians = []
        for recording in recordings:
            wave = shifted(recording, rate, st)
            heard = track(wave, rate)
            trip, ok = vocode_finite(log_mel_of(wave[None], models.spec), models.vocoder)
            heard_trip = track(trip[0], rate) if bool(ok[0]) else None
            if math.isfinite(heard.median_hz):
                voiced += 1
                medians.append(heard.median_hz)
            if heard_trip is not None and math.isfinite(heard_trip.median_hz):
                trip_voiced += 1
                if math.isfinite(heard.median_hz) and heard_trip.error_semitones(PitchLine(heard.median_hz, heard.median_hz)) <= 1:
                    kept += 1
        n = len(clips)
        r = rows[f"{st:+g}"] = {
            "clips": n, "voiced": voiced / n, "round_trip_voiced": trip_voiced / n, "kept": kept / max(voiced, 1),
            "median_f0_hz": statistics.median(medians) if medians else None,
        }
        say(f"| {st:+g} | {r['voiced']:.2f} | {r['round_trip_voiced']:.2f} | {r['kept']:.2f} | {r['median_f0_hz'] or float('nan'):.1f} |")
    return rows


def test_clips(count: int) -> list:
    clips = fsdd_split(list_fsdd(resolve_fsdd_root()), "test")
    return clips[:: max(1, len(clips) // count)][:count]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=48, help="test clips, taken evenly across the split")
    ap.add_argument("--shifts", default="-4,-2,0,2,4", help="semitones, comma-separated")
    ap.add_argument("--vocoder", default="neural", help="neural (the committed one) or a vocoder model file")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = ModelSet.load(device="cpu", vocoder=args.vocoder)
    clips = test_clips(args.clips)
    rows = ceiling(models, clips, [float(s) for s in args.shifts.split(",")], lambda line: print(line, flush=True))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"clips": len(clips), "vocoder": models.vocoder.description, "shifts": rows}, indent=2))


if __name__ == "__main__":
    main()
