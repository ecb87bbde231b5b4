"""Chaos cases on a real local Ray cluster: a replica of each deployment killed under a steady load.

One module-scoped app (serve/config.yaml, tiny models); each case runs a few closed-loop clients
(serve/chaos.py, shared with bench/chaos.py), kills one replica mid-load and checks that no request was
lost (every one answered 200 or a clear JSON error) and that full service came back.
"""

from __future__ import annotations

import pytest
from serve_app import running_app

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def app_url(tiny_models_dir):
    from serve.config import DEFAULT_CONFIG_PATH

    with running_app(DEFAULT_CONFIG_PATH, models_dir=tiny_models_dir) as url:
        yield url


def _check(result) -> None:
    print(result.fault_note, result.row())
    assert result.ok > 0
    assert result.lost == 0, result.examples("lost")
    assert result.recovery_s() is not None, (result.examples("failed"), result.examples("lost"))
    assert result.recovery_s() < 60


@pytest.mark.parametrize("deployment", ["Denoiser", "Classifier", "SpeechIngress"])
def test_replica_killed_under_load_loses_no_request(app_url, deployment):
    from serve.chaos import kill_replica, run_case, wait_healthy

    wait_healthy()
    result = run_case(f"kill {deployment}", app_url, kill_replica(deployment), clients=3, warmup_s=2, sustain_s=3)
    _check(result)
    wait_healthy()  # the killed replica was replaced
