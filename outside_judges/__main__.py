"""`python -m outside_judges DIR_OR_WAVS... [--json OUT]`: judge WAVs, print a small table.

Targets come from the leading digit of each file name (`7_george_3.wav`, `7_000.wav`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from outside_judges.report import judge_wav_files, summary_row


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def table(report: dict) -> str:
    """The summary as a fixed-width table (one row), plus per-judge seconds per clip."""
    s = report["seconds_per_clip"]
    head = f"{'n':>5}  {'ASR acc':>8}  {'no ans':>6}  {'SIG':>5}  {'BAK':>5}  {'OVRL':>5}  {'s/clip (asr+mos)':>17}"
    row = (
        f"{report['n']:>5}  {_fmt(report['asr_accuracy']):>8}  {report['asr_no_answer']:>6}  "
        f"{report['sig']:>5.2f}  {report['bak']:>5.2f}  {report['ovrl']:>5.2f}  "
        f"{s['asr']:>7.3f}+{s['dnsmos']:<9.3f}"
    )
    note = ""
    if report["n_with_target"] < report["n"]:
        note = f"\nASR accuracy over the {report['n_with_target']} files whose names start with a digit"
    return head + "\n" + row + note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m outside_judges", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="WAV files and/or folders of WAVs")
    parser.add_argument("--json", type=Path, help="write the full report (per-clip verdicts included) here")
    parser.add_argument("--recursive", action="store_true", help="look for WAVs in subfolders too")
    parser.add_argument("--per-clip", action="store_true", help="print each clip's verdict as well")
    args = parser.parse_args(argv)
    try:
        report = judge_wav_files(args.paths, recursive=args.recursive)
    except (FileNotFoundError, NotADirectoryError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.per_clip:
        for c in report["clips"]:
            print(f"{Path(c['name']).name:<32} target={c['target']} asr={c['asr']} "
                  f"SIG={c['sig']:.2f} BAK={c['bak']:.2f} OVRL={c['ovrl']:.2f}")
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
