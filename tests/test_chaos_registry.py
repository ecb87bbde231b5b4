"""Chaos cases around the MLflow registry, under a steady load (serve/chaos.py, shared with bench/chaos.py).

One app follows a real `mlflow server` on loopback (1 s poll, `denoiser-unet@production` from the
registry). First a denoiser made for another feature config is promoted to production: requests keep
being answered by the last denoiser that loaded (none lost, none failed). Then the MLflow server is
stopped while the app polls it: the app keeps serving.
"""

from __future__ import annotations

import contextlib
import os

import pytest
from mlflow_server import running_mlflow_server
from serve_app import running_app

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]
POLL_S = 1.0


@pytest.fixture(scope="module")
def registry_app(tiny_models_dir, tmp_path_factory):
    """(app URL, tracking URI, an ExitStack whose close() stops the MLflow server)."""
    from mlops.registry import register_models_dir
    from serve.config import DEFAULT_CONFIG_PATH

    os.environ["SPEECHGUIDE_REGISTRY_CACHE"] = str(tmp_path_factory.mktemp("registry-cache"))  # replicas inherit it
    server = contextlib.ExitStack()
    try:
        uri = server.enter_context(running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")))
        register_models_dir(tiny_models_dir, tracking_uri=uri)
        registry = {"tracking_uri": uri, "poll_seconds": POLL_S, "denoiser": "denoiser-unet@production"}
        with running_app(DEFAULT_CONFIG_PATH, timeout_s=300, models_dir=tiny_models_dir, args={"registry": registry}) as url:
            yield url, uri, server
    finally:
        server.close()
        os.environ.pop("SPEECHGUIDE_REGISTRY_CACHE", None)


def _check(result) -> None:
    print(result.fault_note, result.row())
    assert result.ok > 0
    assert result.lost == 0, result.examples("lost")
    assert result.failed == 0, result.examples("failed")
    assert result.recovery_s() is not None


def test_mismatched_denoiser_promoted_under_load(registry_app, tmp_path):
    from serve.chaos import promote_mismatched_denoiser, run_case, served_denoiser, wait_healthy

    url, uri, _ = registry_app
    wait_healthy()
    assert served_denoiser(url)["version"] == 1
    result = run_case("promote mismatched denoiser", url, promote_mismatched_denoiser(url, uri, str(tmp_path)), clients=3, warmup_s=2, sustain_s=3)
    _check(result)
    assert served_denoiser(url) == {"name": "denoiser-unet", "version": 1, "alias": "production"}  # the last one that loaded


def test_mlflow_server_stopped_while_polled(registry_app):
    from serve.chaos import run_case, wait_healthy

    url, _, server = registry_app

    def stop_server() -> str:
        server.close()
        return "stopped the MLflow server"

    wait_healthy()
    result = run_case("stop MLflow server", url, stop_server, clients=3, warmup_s=2, sustain_s=3 + 3 * POLL_S)
    _check(result)
