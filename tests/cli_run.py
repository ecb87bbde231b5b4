"""Running `speechguide ARGS` in the test process, through the CLI's own entry point.

`run()` is `sys.exit(main())`, so `main(args)` takes the path a user's process takes, without the
seconds of imports (torch, torchmetrics, scipy) that a fresh interpreter pays for each case. Suites
of bad-argument cases use it; each command's tests keep at least one real process as well.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_in_process(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, env: dict | None = None) -> tuple[int, str]:
    """(exit code, stderr) of `speechguide ARGS` run from the project root."""
    from speechguide.cli import main

    monkeypatch.chdir(ROOT)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err
