"""Progress bars of long commands: shown with an ETA on a terminal, silent in logs (speechguide.progress)."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from speechguide.progress import job_progress, on_terminal

ROOT = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run_job(stream: io.StringIO, enabled: bool = True) -> str:
    with job_progress("evaluate", 3, enabled=enabled, stream=stream) as update:
        for done in range(1, 4):
            update(completed=done, status=f"system {done}")
    return stream.getvalue()


def test_bar_with_eta_on_a_terminal():
    out = _run_job(Terminal())
    assert "evaluate" in out and "3/3" in out and "ETA" in out and "system 3" in out


def test_nothing_when_not_a_terminal_or_turned_off():
    assert not on_terminal(io.StringIO())
    assert _run_job(io.StringIO()) == ""
    assert _run_job(Terminal(), enabled=False) == ""


def test_advance_and_a_total_learned_later():
    stream = Terminal()
    with job_progress("calibrate", stream=stream) as update:
        update(total=4)
        update(advance=2, status="bin 1")
        update(advance=2, status="bin 2")
    assert "4/4" in stream.getvalue()


def test_tune_callback_counts_every_ended_trial():
    from tune.progress import TrialProgress

    seen = []
    cb = TrialProgress(3, lambda done, total, status: seen.append((done, total, status)))
    cb.on_trial_complete(0, [], SimpleNamespace(trial_id="a", last_result={"objective": 0.4}))
    cb.on_trial_error(0, [], SimpleNamespace(trial_id="b", last_result=None))
    cb.on_trial_complete(0, [], SimpleNamespace(trial_id="c", last_result={"objective": 0.7}))
    assert [(d, t) for d, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert "b failed" in seen[1][2] and "best objective 0.700" in seen[2][2]


def test_calibrate_shows_progress_on_a_terminal(tiny_models_dir, tmp_path):
    """A real terminal (a pty): the command draws its bar; tests/test_calibration.py runs it without one (no bar)."""
    main, child = pty.openpty()
    cmd = [sys.executable, "-m", "speechguide", "calibrate", "--models-dir", str(tiny_models_dir), "--bins", "2", "--max-clips", "8",
           "--draws", "1", "--batch-size", "8", "--no-mlflow", "--out", str(tmp_path / "cal")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=child, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "160"})
    os.close(child)
    out = b""
    while True:
        ready, _, _ = select.select([main], [], [], 300)
        if not ready:
            break
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(main)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    assert "calibrate" in text and "16/16" in text and "ETA" in text, text[-2000:]
