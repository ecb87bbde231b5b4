"""A second, unrelated pitch tracker on evaluate-pitch's written samples: Praat's autocorrelation pitch.

`speechguide evaluate-pitch` judges with pYIN, and the harmonic vocoder's F0 head was trained on pYIN's
contours, so a pYIN figure could in principle flatter the system. Praat (Boersma's autocorrelation method,
through the `parselmouth` package, not a project dependency: `pip install praat-parselmouth`) shares
neither code nor method with pYIN. This reads a report written with `--write-wavs`, tracks every sample
with Praat (floor 50 Hz, ceiling 500 Hz, the pitch targets' range) and prints, per system and target, the
share within 1 semitone of the target line by pYIN (from results.json) and by Praat, side by side.

    speechguide evaluate-pitch --targets 101,113,142,160 --seed 0 --write-wavs --out reports/pitch/test-head-s0
    python bench/pitch_second_tracker.py reports/pitch/test-head-s0
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

WITHIN_SEMITONES = 1.0


def praat_median_hz(path: Path) -> float:
    """Median F0 over the frames Praat calls voiced (NaN when none)."""
    import parselmouth

    pitch = parselmouth.Sound(str(path)).to_pitch_ac(time_step=0.01, pitch_floor=50.0, pitch_ceiling=500.0)
    f0 = [v for v in pitch.selected_array["frequency"] if v > 0]
    return statistics.median(f0) if f0 else float("nan")


def within(hz: float, line_hz: float) -> bool:
    return math.isfinite(hz) and abs(12 * math.log2(hz / line_hz)) <= WITHIN_SEMITONES


def systems(results: dict) -> list[tuple[str, str, list[float], list[float]]]:
    """(system, target, each sample's target line median in Hz, pYIN's median F0 per sample) of every pitch system."""
    out = []
    for text, row in results["targets"].items():
        mid = math.sqrt(row["line_hz"][0] * row["line_hz"][1])
        for name in ("pitch", "digit+pitch"):
            if name in row:
                out.append((name, text, [mid] * len(row[name]["sample_f0_hz"]), row[name]["sample_f0_hz"]))
    for text, row in (results.get("speaker") or {}).get("targets", {}).items():
        out.append(("speaker+pitch", text, row["line_hz"], row["sample_f0_hz"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="an evaluate-pitch --write-wavs output directory")
    args = parser.parse_args()
    results = json.loads((args.report / "results.json").read_text())
    wavs = args.report / "wavs"
    if not wavs.is_dir():
        raise SystemExit(f"{wavs} is missing: run evaluate-pitch with --write-wavs")
    print("| system | target | n | pYIN within 1 st | Praat within 1 st | Praat unvoiced | pYIN and Praat agree within 1 st |")
    print("|---|---|---|---|---|---|---|")
    totals = {"n": 0, "pyin": 0, "praat": 0}
    for name, text, lines, pyin in systems(results):
        folder = wavs / f"{name}_{text}"
        praat = [praat_median_hz(folder / f"{i:03d}.wav") for i in range(len(lines))]
        n = len(lines)
        hit_pyin = sum(within(h if h is not None else float("nan"), line) for h, line in zip(pyin, lines))
        hit_praat = sum(within(h, line) for h, line in zip(praat, lines))
        agree = sum(
            math.isfinite(a) and b is not None and math.isfinite(b) and abs(12 * math.log2(a / b)) <= WITHIN_SEMITONES
            for a, b in zip(praat, pyin)
        )
        unvoiced = sum(not math.isfinite(h) for h in praat)
        print(f"| {name} | {text} | {n} | {hit_pyin / n:.0%} | {hit_praat / n:.0%} | {unvoiced} | {agree}/{n} |")
        totals["n"] += n
        totals["pyin"] += hit_pyin
        totals["praat"] += hit_praat
    n = max(totals["n"], 1)
    print(f"| all | | {totals['n']} | {totals['pyin'] / n:.0%} | {totals['praat'] / n:.0%} | | |")


if __name__ == "__main__":
    main()
