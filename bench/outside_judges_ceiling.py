"""The outside judges' ceiling: what they say about real FSDD clips, and about the same clips
after a vocoder round trip (wave -> the project's log-Mel -> vocoder -> wave).

Generated audio can score no better than the round trip of real speech through the vocoder that
renders it, so this is the reference every generated-audio figure is read against.

Conditions (one row each):
  real          the recordings as they are (whole clip, resampled to 16 kHz, 0.9 peak)
  real-1s       the same, centre-cropped / zero-padded to the model's clip length (what the
                log-Mel covers: the input of every round trip below)
  VOCODER       real-1s -> LogMel -> vocoder -> wave, for each --vocoder given

--vocoder takes what guidance.vocoders.load_vocoder takes (griffin-lim, neural, a vocoder file);
anything else that follows the Vocoder protocol can be added to `VOCODER_FACTORIES` below.

    .venv/bin/python bench/outside_judges_ceiling.py                     # test takes 0-4, 300 clips
    .venv/bin/python bench/outside_judges_ceiling.py --limit 20 --split val --vocoder griffin-lim

Measured on the 300 test clips (2 shared CPU cores; DNSMOS windows="first"):
  condition     ASR acc  no answer  SIG   BAK   OVRL   s/clip ASR  s/clip DNSMOS
  real          0.750    2          3.07  2.91  2.31   0.049       0.60
  real-1s       0.753    1          2.55  3.66  2.27   0.048       0.48
  griffin-lim   0.650    24         1.92  3.57  1.76   0.075       0.48   (+0.22 s/clip to vocode)
"six" is the recognizer's weak digit (0.30 real, mostly heard as "eight"; 0.03 after Griffin-Lim),
likely because FSDD is 8 kHz audio: the /s/ energy the 16 kHz acoustic model expects above 4 kHz is
not there. A narrowband front end (upperf 3500-4000 via a custom feat.params) was far worse on
validation (0.30-0.40), the model's Gaussians being trained on the wideband one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guidance.data import fsdd_split, list_fsdd, load_wave, resolve_fsdd_root  # noqa: E402
from guidance.features import FeatureSpec, GriffinLimVocoder, LogMel, Vocoder, fit_length  # noqa: E402
from guidance.models.checkpoint import read_metadata  # noqa: E402
from outside_judges.report import judge_waves, summary_row  # noqa: E402


def _load_with_guidance(name: str, spec: FeatureSpec, models_dir: Path) -> Vocoder:
    try:
        from guidance.vocoders import load_vocoder
    except ImportError:  # an older tree without the vocoder chooser: Griffin-Lim only
        if name != "griffin-lim":
            raise
        return GriffinLimVocoder(spec)
    return load_vocoder(name, spec, models_dir, "cpu")


# name -> factory(spec, models_dir). Names not listed go to guidance.vocoders.load_vocoder.
VOCODER_FACTORIES: dict[str, Callable[[FeatureSpec, Path], Vocoder]] = {}


def make_vocoder(name: str, spec: FeatureSpec, models_dir: Path) -> Vocoder:
    factory = VOCODER_FACTORIES.get(name)
    return factory(spec, models_dir) if factory else _load_with_guidance(name, spec, models_dir)


@torch.no_grad()
def round_trip(waves: torch.Tensor, spec: FeatureSpec, vocoder: Vocoder, batch_size: int = 64) -> torch.Tensor:
    """(n, spec.num_samples) waves -> the project's log-Mel -> vocoder -> (n, samples) waves."""
    front = LogMel(spec)
    out = [vocoder(front(waves[i : i + batch_size])) for i in range(0, len(waves), batch_size)]
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fsdd", default=None, help="FSDD folder (default: $SPEECHGUIDE_FSDD_DIR, ../shared/data/fsdd, the cache)")
    parser.add_argument("--split", default="test", choices=("test", "val"), help="test = takes 0-4, val = 5-9")
    parser.add_argument("--limit", type=int, default=0, help="first N clips only (0: all)")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="models folder (the spec is read from the denoiser)")
    parser.add_argument("--vocoder", action="append", default=None, help="griffin-lim (default), neural, or a vocoder file; repeat")
    parser.add_argument("--skip-real", action="store_true", help="only the vocoder rows")
    parser.add_argument("--json", type=Path, default=None, help="write summaries and per-clip verdicts here")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    spec = FeatureSpec.from_dict(read_metadata(args.models / "denoiser-unet.safetensors")["feature_spec"])
    shared = ROOT.parent / "shared" / "data" / "fsdd"
    fsdd = args.fsdd or os.environ.get("SPEECHGUIDE_FSDD_DIR") or (shared if (shared / "recordings").is_dir() else None)
    clips = fsdd_split(list_fsdd(resolve_fsdd_root(fsdd)), args.split)
    if args.limit:
        clips = clips[: args.limit]
    targets = [c.digit for c in clips]
    names = [c.path.name for c in clips]
    whole = [load_wave(c.path, spec.sample_rate) for c in clips]
    fitted = torch.stack([fit_length(w, spec.num_samples) for w in whole])

    reports: dict[str, dict] = {}
    if not args.skip_real:
        reports["real"] = judge_waves(whole, spec.sample_rate, targets, names)
        reports["real-1s"] = judge_waves(fitted, spec.sample_rate, targets, names)
    for name in args.vocoder or ["griffin-lim"]:
        vocoder = make_vocoder(name, spec, args.models)
        t0 = time.perf_counter()
        waves = round_trip(fitted, spec, vocoder)
        vocode_s = (time.perf_counter() - t0) / len(clips)
        reports[name] = judge_waves(waves, spec.sample_rate, targets, names)
        reports[name]["seconds_per_clip"]["vocoder"] = vocode_s

    print(f"{len(clips)} FSDD {args.split} clips; ASR: pocketsphinx ten-word grammar; MOS: DNSMOS P.835")
    print(f"{'condition':<14} {'n':>4} {'ASR acc':>8} {'no ans':>6} {'SIG':>5} {'BAK':>5} {'OVRL':>5} {'s/clip asr':>10} {'s/clip mos':>10}")
    for cond, r in reports.items():
        s = r["seconds_per_clip"]
        print(f"{cond:<14} {r['n']:>4} {r['asr_accuracy']:>8.3f} {r['asr_no_answer']:>6} {r['sig']:>5.2f} {r['bak']:>5.2f} "
              f"{r['ovrl']:>5.2f} {s['asr']:>10.3f} {s['dnsmos']:>10.3f}")
    print("ASR accuracy per digit 0-9:")
    for cond, r in reports.items():
        print(f"{cond:<14} " + " ".join(f"{r['asr_accuracy_per_digit'].get(d, float('nan')):.2f}" for d in range(10)))
    for cond, r in reports.items():
        if "vocoder" in r["seconds_per_clip"]:
            print(f"{cond}: {r['seconds_per_clip']['vocoder']:.3f} s/clip to vocode")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"split": args.split, "spec": spec.to_dict(), "summaries": {k: summary_row(v) for k, v in reports.items()},
                   "clips": {k: v["clips"] for k, v in reports.items()}}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
