"""ASHA vs FIFO at equal budget: the same number of trials, the same seed, the same search space.

Both sweeps run `tune.sweep.run` with the demo models on the validation split (no MLflow), without the
default profile as a warm start unless asked (with it, both usually find their best in trial 1 and the
comparison says nothing about the search). From every
trial's per-batch reports (result.json) it computes, per scheduler: the best objective of a trial
that scored every batch, the compute spent (samples generated and trial-seconds, summed over all
trials), and for ASHA the compute spent until a complete trial first matched FIFO's best, as a
fraction of FIFO's total. Goal: ASHA reaches FIFO's best with at most half of FIFO's compute.

    OMP_NUM_THREADS=1 .venv/bin/python bench/tune_bench.py [--trials 12] [--per-class 10] [--out reports/tune-bench.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tune.settings import TuneSettings  # noqa: E402
from tune.sweep import run  # noqa: E402


def reports(path: str) -> list[dict]:
    """Every per-batch report of every trial of a stored sweep, oldest first."""
    out = []
    for f in Path(path).glob("*/result.json"):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out.append({k: r.get(k) for k in ("trial_id", "timestamp", "samples", "trial_seconds", "objective", "batches")})
    return sorted(out, key=lambda r: (r["timestamp"], r["batches"]))


def compute_until(events: list[dict], target: float, batches: int) -> dict | None:
    """Samples and trial-seconds spent (all trials) when a complete trial first reached `target`."""
    latest: dict[str, dict] = {}
    for e in events:
        latest[e["trial_id"]] = e
        if e["batches"] >= batches and e["objective"] >= target:
            return {"samples": sum(v["samples"] for v in latest.values()),
                    "trial_seconds": sum(v["trial_seconds"] for v in latest.values())}
    return None


def sweep(scheduler: str, args: argparse.Namespace, root: Path) -> dict:
    settings = TuneSettings(
        trials=args.trials, scheduler=scheduler, per_class=args.per_class, batch_per_class=args.batch_per_class,
        seed=args.seed, max_concurrent=args.max_concurrent, mlflow=False, storage_path=str(root), name=scheduler,
        guide=args.guide, models_dir=args.models_dir, start_from_default=args.start_from_default,
    )
    began = time.time()
    result = run(settings, log=lambda m: None, score_baseline=False)
    s = result.summary()
    return {
        "scheduler": scheduler,
        "best_objective": s["best"]["objective"] if s["best"] else float("nan"),
        "best_trial": s["best"]["trial_id"] if s["best"] else None,
        "samples": s["samples_generated"],
        "trial_seconds": s["trial_seconds"],
        "complete": s["complete"],
        "stopped": s["stopped"],
        "wall_seconds": time.time() - began,
        "events": reports(result.path),
        "batches": settings.batches,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--batch-per-class", type=int, default=2)
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guide", default="clean", choices=("clean", "noisy"))
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--start-from-default", action=argparse.BooleanOptionalAction, default=False,
                    help="let both sweeps evaluate the default profile first (off: the comparison is about search alone)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "tune-bench.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        fifo = sweep("fifo", args, Path(tmp))
        asha = sweep("asha", args, Path(tmp))
    reach = compute_until(asha["events"], fifo["best_objective"], asha["batches"])
    summary = {
        "settings": vars(args) | {"out": str(args.out)},
        "fifo": {k: v for k, v in fifo.items() if k != "events"},
        "asha": {k: v for k, v in asha.items() if k != "events"},
        "asha_to_fifo_samples": asha["samples"] / fifo["samples"],
        "asha_to_fifo_trial_seconds": asha["trial_seconds"] / fifo["trial_seconds"],
        "asha_reached_fifo_best": reach is not None,
        "asha_samples_to_reach_fifo_best_ratio": None if reach is None else reach["samples"] / fifo["samples"],
        "asha_seconds_to_reach_fifo_best_ratio": None if reach is None else reach["trial_seconds"] / fifo["trial_seconds"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"{'scheduler':<10} {'best objective':>15} {'complete':>9} {'stopped':>8} {'samples':>8} {'trial-s':>8} {'wall s':>7}")
    for r in (fifo, asha):
        print(f"{r['scheduler']:<10} {r['best_objective']:>15.4f} {r['complete']:>9} {r['stopped']:>8} "
              f"{r['samples']:>8.0f} {r['trial_seconds']:>8.0f} {r['wall_seconds']:>7.0f}")
    print(f"ASHA / FIFO compute: samples {summary['asha_to_fifo_samples']:.2f}, trial-seconds {summary['asha_to_fifo_trial_seconds']:.2f}")
    if reach is None:
        print(f"ASHA never matched FIFO's best objective ({fifo['best_objective']:.4f}; ASHA's best {asha['best_objective']:.4f})")
    else:
        ratio = summary["asha_samples_to_reach_fifo_best_ratio"]
        verdict = "goal met" if ratio <= 0.5 else "goal (<= 0.5) not met"
        print(f"ASHA reached FIFO's best after {ratio:.2f} of FIFO's samples "
              f"({summary['asha_seconds_to_reach_fifo_best_ratio']:.2f} of its trial-seconds): {verdict}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
