"""A Tune sweep with a fault in the middle: did every trial still finish every batch?

Shared by `bench/chaos.py` (a row of the chaos table) and `tests/test_cluster_local.py`. The sweep
(`tune.sweep.run`) runs in the calling thread; a watcher thread waits until a trial has reported a batch
(so a checkpoint exists and the trial is mid-way), calls the fault, then `restored()` (blocks until the
fault is repaired, e.g. the killed node is back). A trial is lost when it did not finish every batch
(errored for good, or missing from the results). A trial that was interrupted and carried on (Tune's
`FailureConfig` retries it from its last checkpoint) shows more than one worker pid in its result.json.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from serve.chaos import CaseResult
from tune.settings import TuneSettings


def trial_reports(exp_path: Path) -> dict[str, list[dict]]:
    """Trial directory name -> its reports so far (result.json, one JSON object a line)."""
    out = {}
    for f in Path(exp_path).glob("*/result.json"):
        rows = []
        for line in f.read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line being written
                break
        out[f.parent.name] = rows
    return out


def mid_trial_pids(exp_path: Path, batches: int) -> set[int]:
    """Worker pids of trials that reported at least one batch and not all of them yet."""
    return {rows[-1]["pid"] for rows in trial_reports(exp_path).values() if rows and len(rows) < batches and "pid" in rows[-1]}


def run_sweep_case(
    name: str,
    settings: TuneSettings,
    fault: Callable[[], str],
    fault_when: Callable[[set[int]], bool],
    restored: Optional[Callable[[], None]] = None,
    wait_s: float = 600.0,
) -> tuple[CaseResult, object]:
    """Run the sweep; call `fault()` once `fault_when(pids of trials mid-way)` holds. Returns the row
    (trials, trials lost, time from the fault until `restored()` returned) and the SweepResult."""
    from tune.sweep import run

    assert settings.name, "the case watches the sweep's directory: give it a name"
    exp_path = Path(settings.storage_path) / settings.name
    box: dict = {}
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + wait_s
        while not stop.is_set() and time.monotonic() < deadline:
            if fault_when(mid_trial_pids(exp_path, settings.batches)):
                box["fault_at"] = time.monotonic()
                try:
                    box["note"] = fault()
                    if restored is not None:
                        restored()
                    box["restored_s"] = time.monotonic() - box["fault_at"]
                except Exception as exc:  # reported in the row; the sweep goes on
                    box["note"] = f"fault failed: {type(exc).__name__}: {exc}"
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run(settings, log=lambda m: None, score_baseline=False)
    finally:
        stop.set()
        watcher.join(timeout=wait_s)
    complete = sum(r.status == "complete" for r in result.rows)
    resumed = sum(len({r.get("pid") for r in rows}) > 1 for rows in trial_reports(exp_path).values())
    note = box.get("note", "the fault never fired (no trial was mid-way)") + f"; {resumed} trial(s) carried on in a new worker"
    row = CaseResult(name, box.get("fault_at", time.monotonic()), [], note, trials=settings.trials,
                     trials_lost=settings.trials - complete, restored_s=box.get("restored_s"))
    return row, result
