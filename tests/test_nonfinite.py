"""Non-finite values never crash a process: metrics refuse them with NonFiniteError, the sampler names
the step and sigma where x went NaN, evaluation reports such samples instead of dying, the CLI ends in
one line, the Serve ingress answers a JSON 500.

Checks that would hand a NaN to LAPACK on a regression (which kills the process with SIGSEGV rather
than raising) run in a child interpreter, so a regression fails an assertion instead of killing pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from guidance.finite import NonFiniteError, require_finite

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def run_isolated(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run Python `code` in a fresh interpreter with tests/ importable."""
    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


# ---- metrics -----------------------------------------------------------------------------------


def test_frechet_distance_refuses_a_nan_feature_instead_of_crashing():
    r = run_isolated(
        """
        import torch
        from guidance.finite import NonFiniteError
        from guidance.metrics import frechet_distance

        real, fake = torch.randn(20, 8), torch.randn(20, 8)
        fake[3, 2] = float("nan")
        try:
            frechet_distance(real, fake)
        except NonFiniteError as exc:
            print("refused:", exc)
        """
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])  # killed by a signal (SIGSEGV, SIGABRT) before the guard
    assert "refused: Frechet distance: the generated features has 1 non-finite value" in r.stdout


def test_require_finite_says_what_and_how_many():
    x = torch.tensor([1.0, float("inf"), float("nan"), 2.0])
    with pytest.raises(NonFiniteError, match=r"judge embeddings has 2 non-finite value\(s\) \(NaN or inf\) out of 4") as info:
        require_finite(x, "judge embeddings")
    assert isinstance(info.value, ValueError) and (info.value.count, info.value.total) == (2, 4)
    assert require_finite(torch.arange(3), "integers") is not None
