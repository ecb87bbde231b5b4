"""The Serve app following the MLflow registry: a real `mlflow server`, a real local Ray cluster, real HTTP.

One module-scoped app runs from serve/config.yaml with `args.registry` pointing at the server (a
1 s poll). Tiny models and two guidance profiles are registered there; the tests check that the app
serves `speechguide-profile@production`, picks up a promotion while requests keep flowing (none
fails), and guides with registered classifiers chosen per request (model multiplexing). Last, two chaos
cases under a steady load (serve/chaos.py, shared with bench/chaos.py): a denoiser made for another
feature config promoted to production (the app keeps answering with the last denoiser that loaded;
none lost, none failed), the MLflow server stopped while the app polls it (the app keeps serving), then
`speechguide models promote` with the server down (exit 1, nothing moved; bench/chaos.py also starts the
server again and promotes).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from mlflow_server import running_mlflow_server
from serve_app import running_app

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]
PROFILE = "speechguide-profile"
POLL_S = 1.0
TARGET = [{"guide": "digit", "label": "3"}]


def _profile(name: str, steps: int, scale: float):
    from guidance.guides import DEFAULT_PROFILES

    return DEFAULT_PROFILES["noisy"].with_sampler(steps=steps).with_guide(scale=scale).model_copy(update={"name": name})


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """(URL, an ExitStack whose close() stops the server, the server's store): a fresh tracking server for
    the module, which the chaos tests at the end stop (and start again on the same store and address);
    MLFLOW_TRACKING_URI points at it while the module runs."""
    old = os.environ.get("MLFLOW_TRACKING_URI")
    root = tmp_path_factory.mktemp("mlflow-server")
    with contextlib.ExitStack() as server:
        url = server.enter_context(running_mlflow_server(root))
        os.environ["MLFLOW_TRACKING_URI"] = url
        try:
            yield url, server, root
        finally:
            if old is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="module")
def mlflow_server_uri(mlflow_server) -> str:
    return mlflow_server[0]


@pytest.fixture(scope="module")
def metrics_port() -> int:
    from serve_app import free_port

    return free_port()


@pytest.fixture(scope="module")
def app_url(mlflow_server_uri, tiny_models_dir, tmp_path_factory, metrics_port):
    from mlops.registry import promote, register_models_dir, register_profile
    from serve.config import DEFAULT_CONFIG_PATH

    os.environ["SPEECHGUIDE_REGISTRY_CACHE"] = str(tmp_path_factory.mktemp("registry-cache"))  # replicas inherit it
    register_models_dir(tiny_models_dir, tracking_uri=mlflow_server_uri)
    register_profile(_profile("reg-one", steps=2, scale=2.0), PROFILE, {"objective": 0.1})
    promote(PROFILE, "candidate", "production", tracking_uri=mlflow_server_uri)

    registry = {
        "tracking_uri": mlflow_server_uri,
        "poll_seconds": POLL_S,
        "guides": {"clean": "classifier-clean@production"},
        "denoiser": "denoiser-unet@production",
    }
    try:
        with running_app(
            DEFAULT_CONFIG_PATH,
            timeout_s=300,
            metrics_export_port=metrics_port,
            models_dir=tiny_models_dir,
            deployments={"SpeechIngress": {"max_ongoing_requests": 8, "max_queued_requests": 16}},
            args={"registry": registry},
        ) as url:
            yield url
    finally:
        os.environ.pop("SPEECHGUIDE_REGISTRY_CACHE", None)


@pytest.fixture(scope="module")
def client(app_url):
    with httpx.Client(base_url=app_url, timeout=120) as c:
        yield c


def _generate(client: httpx.Client, **fields) -> dict:
    r = client.post("/v1/generate", json={"targets": TARGET, "seed": 5, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def test_serves_the_production_profile(client, mlflow_server_uri):
    body = client.get("/v1/models").json()
    assert body["profile_versions"] == [{"name": PROFILE, "version": 1, "alias": "production", "profile_name": "reg-one"}]
    reg = body["registry"]
    assert reg["errors"] == {} and reg["tracking_uri"] == mlflow_server_uri and reg["poll_seconds"] == POLL_S
    clean = next(g for g in body["guides"] if g["guide_kind"] == "clean")
    assert (clean["name"], clean["version"], clean["alias"]) == ("classifier-clean", 1, "production")
    assert {k: body["denoisers"][0][k] for k in ("name", "version", "alias")} == {"name": "denoiser-unet", "version": 1, "alias": "production"}

    for fields in ({}, {"profile": "production"}):  # no profile named: production as well
        out = _generate(client, **fields)
        assert out["models"]["profile"] == {"name": PROFILE, "version": 1, "alias": "production"}
        assert out["profile"]["name"] == "reg-one" and out["profile"]["guide"]["scale"] == 2.0
        assert out["stats"]["steps"] == 2
        assert out["models"]["denoiser"] == {"name": "denoiser-unet", "version": 1, "alias": "production"}
    # A request's own settings still apply on top of the registered profile.
    out = _generate(client, profile="production", guidance_scale=0.5)
    assert out["profile"]["name"] == "reg-one" and out["profile"]["guide"]["scale"] == 0.5
    # Built-in profiles stay available by name.
    assert _generate(client, profile="noisy", steps=2)["profile"]["name"] == "noisy-default"


def test_guide_models_from_the_registry_per_request(client, tmp_path):
    builtin = _generate(client, guide_kind="noisy")
    for ref in ("classifier-noisy@production", "classifier-noisy/1", "classifier-noisy"):
        out = _generate(client, guide_model=ref)
        assert out["models"]["guide"]["name"] == "classifier-noisy" and out["models"]["guide"]["version"] == 1
        # The registered copy of the very file the app loads guides to the very same audio.
        assert out["samples"][0]["wav_base64"] == builtin["samples"][0]["wav_base64"]
    # The CLI names them too, with a registry profile alias, and writes what the app answered.
    out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "speechguide", "generate", "--target", "digit=4", "--url", str(client.base_url), "--steps", "2",
         "--guide-model", "classifier-noisy@production", "--profile-name", "production", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["request"]["guide_model"] == "classifier-noisy@production" and manifest["request"]["profile"] == "production"
    assert manifest["models"]["guide"]["name"] == "classifier-noisy" and manifest["models"]["profile"]["alias"] == "production"
    # guide_kind clean is mapped to the registry in the app's config.
    clean = _generate(client, guide_kind="clean", guidance_scale=0.5)
    assert clean["models"]["guide"] == {"name": "classifier-clean", "version": 1, "alias": "production", "noise_conditioned": False}

    for ref, status, words in [
        ("no-such-model@production", 404, "unknown guide model"),
        ("classifier-noisy@staging", 404, "has no alias 'staging'"),
        ("classifier-noisy/9", 404, "has no version '9'"),
        ("judge-digit@production", 422, "not a classifier guide"),
        ("../../etc/passwd", 422, "guide_model"),
    ]:
        r = client.post("/v1/generate", json={"targets": TARGET, "guide_model": ref})
        assert r.status_code == status, r.text
        assert words in r.json()["detail"] and "guide" in r.json()["detail"]


def _load(app_url: str, stop: threading.Event, log: list) -> None:
    with httpx.Client(base_url=app_url, timeout=120) as c:
        while not stop.is_set():
            try:
                r = c.post("/v1/generate", json={"targets": TARGET, "seed": 1})
                body = r.json() if r.status_code == 200 else {}
                log.append((time.monotonic(), r.status_code, body.get("models", {}).get("profile", {}).get("version"), body.get("profile", {}).get("name"), r.text[:200] if r.status_code != 200 else ""))
            except httpx.HTTPError as exc:
                log.append((time.monotonic(), 0, None, None, repr(exc)))


def test_promotion_is_picked_up_without_a_failed_request(app_url, client, mlflow_server_uri, tiny_models_dir, capsys):
    from mlops.registry import register_profile
    from speechguide.cli import main

    version = register_profile(_profile("reg-two", steps=3, scale=4.0), PROFILE, {"objective": 0.2})
    assert version == 2
    stop = threading.Event()
    logs: list[list] = [[], []]
    threads = [threading.Thread(target=_load, args=(app_url, stop, log)) for log in logs]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)  # requests are flowing with version 1
        assert main(["models", "promote", PROFILE]) == 0  # the real CLI command: candidate -> production
        assert "moved from version 1 to version 2" in capsys.readouterr().out
        promoted_at = time.monotonic()
        picked_up = None
        while time.monotonic() - promoted_at < 30:
            if client.get("/v1/models").json()["profile_versions"][0]["version"] == 2:
                picked_up = time.monotonic() - promoted_at
                break
            time.sleep(0.2)
        assert picked_up is not None, "the app did not pick up the promotion within 30 s"
        time.sleep(2.0)  # and requests keep flowing with version 2
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=180)
    print(f"promotion picked up after {picked_up:.1f} s (poll {POLL_S} s)")
    assert picked_up < POLL_S + 10
    for log in logs:
        assert log, "no request was made"
        failed = [entry for entry in log if entry[1] != 200]
        assert not failed, failed[:3]
        versions = [v for _, _, v, _, _ in log]
        assert set(versions) <= {1, 2} and versions == sorted(versions), versions  # never back to the old one
        assert {(v, name) for _, _, v, name, _ in log} <= {(1, "reg-one"), (2, "reg-two")}
    assert any(v == 1 for log in logs for _, _, v, _, _ in log) and any(v == 2 for log in logs for _, _, v, _, _ in log)


def test_guide_alias_move_loads_the_new_version(client, mlflow_server_uri, tiny_models_dir, tmp_path):
    """A new classifier promoted to production guides the next requests naming the alias (multiplexed load)."""
    from guidance.data import DIGITS
    from guidance.models import ClassifierConfig, LogMelClassifier, read_metadata, save_model
    from guidance.models.checkpoint import config_dict
    from guidance.features import FeatureSpec
    from mlops.registry import promote, register_model_file

    before = _generate(client, guide_model="classifier-noisy@production", profile="noisy", steps=3)
    torch.manual_seed(123)
    cfg = ClassifierConfig(channels=(8, 16), emb_dim=16, noise_conditioned=True)
    spec = FeatureSpec.from_dict(read_metadata(tiny_models_dir / "classifier-noisy.safetensors")["feature_spec"])
    path = save_model(tmp_path / "classifier-noisy.safetensors", LogMelClassifier(cfg), "classifier", config_dict(cfg), spec, DIGITS, "digit")
    info = register_model_file(path, name="classifier-noisy", tracking_uri=mlflow_server_uri)
    assert info.version == 2 and "production" not in info.aliases
    promote("classifier-noisy", info.version, "production", tracking_uri=mlflow_server_uri)
    deadline = time.monotonic() + POLL_S + 20
    after = before
    while time.monotonic() < deadline:
        after = _generate(client, guide_model="classifier-noisy@production", profile="noisy", steps=3)
        if after["models"]["guide"]["version"] == 2:
            break
        time.sleep(0.5)
    assert after["models"]["guide"]["version"] == 2
    assert after["samples"][0]["wav_base64"] != before["samples"][0]["wav_base64"]
    # The old version stays addressable by number while it is cached or reloadable.
    pinned = _generate(client, guide_model="classifier-noisy/1", profile="noisy", steps=3)
    assert pinned["samples"][0]["wav_base64"] == before["samples"][0]["wav_base64"]
    assert base64.b64decode(after["samples"][0]["wav_base64"])[:4] == b"RIFF"


def test_denoiser_alias_move_swaps_the_denoiser(client, mlflow_server_uri, tiny_models_dir, tmp_path):
    """A newly promoted denoiser serves the next requests; no restart (multiplexed by version on the Denoiser)."""
    from guidance.diffusion import EDMPrecond
    from guidance.features import FeatureSpec
    from guidance.models import UNet, UNetConfig, read_metadata, save_model
    from guidance.models.checkpoint import config_dict
    from mlops.registry import promote, register_model_file

    before = _generate(client, profile="noisy", steps=3)
    assert before["models"]["denoiser"]["version"] == 1
    torch.manual_seed(321)
    cfg = UNetConfig(channels=(8, 16), emb_dim=16)
    spec = FeatureSpec.from_dict(read_metadata(tiny_models_dir / "denoiser-unet.safetensors")["feature_spec"])
    model = EDMPrecond(UNet(cfg))
    with torch.no_grad():  # a fresh U-Net's output layer starts at zero: perturb it, or both versions denoise alike
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = save_model(tmp_path / "denoiser-unet.safetensors", model, "denoiser-unet", {**config_dict(cfg), "sigma_data": 1.0}, spec)
    info = register_model_file(path, name="denoiser-unet", tracking_uri=mlflow_server_uri)
    promote("denoiser-unet", info.version, "production", tracking_uri=mlflow_server_uri)
    deadline = time.monotonic() + POLL_S + 20
    after = before
    while time.monotonic() < deadline and after["models"]["denoiser"]["version"] != 2:
        time.sleep(0.5)
        after = _generate(client, profile="noisy", steps=3)
    assert after["models"]["denoiser"] == {"name": "denoiser-unet", "version": 2, "alias": "production"}
    assert after["samples"][0]["wav_base64"] != before["samples"][0]["wav_base64"]
    assert client.get("/v1/models").json()["denoisers"][0]["version"] == 2


def test_registry_reloads_reach_the_prometheus_endpoint(client, metrics_port):
    """The registry watch's loads (its first ones at start-up and the promotions above) reach Ray's metrics
    endpoint: the exported counter equals the count GET /v1/models reports."""
    from prometheus_client.parser import text_string_to_metric_families

    from serve.metrics import EXPORTED

    deadline = time.monotonic() + 60  # Ray exports every few seconds
    while True:
        # Read both each time: the watch may still pick up a promotion of the tests above after a first reading.
        reported = client.get("/v1/models").json()["registry"]["reloads"]
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        exported = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == EXPORTED["registry_reloads"])
        if exported == reported or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert reported >= 3  # two profile aliases at start-up, then the promotions above
    assert exported == reported


# ---- chaos around the registry, under a steady load (last: the MLflow server stopped, and at the very end for good) ----


def _check_chaos(result) -> None:
    print(result.fault_note, result.row())
    assert result.ok > 0
    assert result.lost == 0, result.examples("lost")
    assert result.failed == 0, result.examples("failed")
    assert result.recovery_s() is not None


def test_mismatched_denoiser_promoted_under_load(app_url, mlflow_server_uri, tmp_path):
    from serve.chaos import promote_mismatched_denoiser, run_case, served_denoiser, wait_healthy

    wait_healthy()
    served = served_denoiser(app_url)
    assert served["alias"] == "production"
    result = run_case("promote mismatched denoiser", app_url, promote_mismatched_denoiser(app_url, mlflow_server_uri, str(tmp_path)),
                      clients=3, warmup_s=2, sustain_s=3)
    _check_chaos(result)
    assert served_denoiser(app_url) == served  # the last one that loaded


def test_mlflow_server_stopped_while_polled(app_url, mlflow_server):
    """The app keeps serving while the server it polls is stopped, here for good. A candidate version is
    registered first: the promotion the next test attempts with the server down."""
    from mlops.registry import register_profile
    from serve.chaos import run_case, wait_healthy

    register_profile(_profile("reg-three", steps=2, scale=3.0), PROFILE, {"objective": 0.3}, tracking_uri=mlflow_server[0])  # candidate

    def stop_server() -> str:
        mlflow_server[1].close()
        return "stopped the MLflow server"

    wait_healthy()
    result = run_case("stop MLflow server", app_url, stop_server, clients=3, warmup_s=2, sustain_s=3 + 3 * POLL_S)
    _check_chaos(result)


def test_mlflow_server_stopped_during_a_promotion(app_url, mlflow_server):
    """`speechguide models promote` while the server is down (stopped by the test above, for good): one line,
    exit 1, the alias unmoved in the server's store, and the app keeps serving the last version under load.
    (bench/chaos.py also starts the server again and promotes with the same command.)"""
    from serve.chaos import promote_with_server_stopped, run_case, served_profile_version

    url, server, root = mlflow_server
    before = served_profile_version(app_url)
    fault = promote_with_server_stopped(app_url, PROFILE, url, stop=server.close, start=None, store_uri=f"sqlite:///{root / 'mlflow.db'}")
    result = run_case("stop MLflow server during a promotion", app_url, fault, clients=2, warmup_s=1, sustain_s=2)
    _check_chaos(result)
    assert served_profile_version(app_url) == before
