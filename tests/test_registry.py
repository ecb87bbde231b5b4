"""The MLflow model registry against a real `mlflow server` on loopback: register, list, promote, load.

Models are registered through the pyfunc wrapper (safetensors artifact, feature config, signature);
the CLI runs as users run it, in a subprocess, against the same server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow_server import free_port, mlflow_server_uri  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]
ROOT = Path(__file__).resolve().parents[1]
PROFILE = "speechguide-profile"


@pytest.fixture(scope="module", autouse=True)
def _registry_cache(tmp_path_factory: pytest.TempPathFactory):
    old = os.environ.get("SPEECHGUIDE_REGISTRY_CACHE")
    os.environ["SPEECHGUIDE_REGISTRY_CACHE"] = str(tmp_path_factory.mktemp("registry-cache"))
    yield
    if old is None:
        os.environ.pop("SPEECHGUIDE_REGISTRY_CACHE", None)
    else:
        os.environ["SPEECHGUIDE_REGISTRY_CACHE"] = old


def cli(*args: str, uri: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run([sys.executable, "-m", "speechguide", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def run_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (the same `main` as the console script, without a second interpreter start)."""
    from speechguide.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def registered(mlflow_server_uri, tiny_models_dir):  # noqa: F811
    """The tiny models directory registered once through the CLI."""
    r = cli("models", "register", "--models-dir", str(tiny_models_dir), uri=mlflow_server_uri)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_register_models_dir_and_list(registered, tiny_models_dir, capsys):
    names = sorted(p.stem for p in tiny_models_dir.glob("*.safetensors"))
    for name in names:
        assert f"{name} version 1  aliases: candidate, production" in registered
    rc, out, err = run_main(capsys, "models", "list")
    assert rc == 0, err
    for name in names:
        row = next(line for line in out.splitlines() if f" {name} " in line)
        assert "candidate,production" in row and "│ 1 " in row
    # The same files again: no new versions (content hashes match).
    rc, out, err = run_main(capsys, "models", "register", "--models-dir", str(tiny_models_dir), "--alias", "rc")
    assert rc == 0, err
    assert "classifier-noisy version 1  aliases: candidate, production, rc" in out


def test_registered_model_round_trips(registered, mlflow_server_uri, tiny_models_dir):  # noqa: F811
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from guidance.models import load_model
    from guidance.files import file_sha256
    from mlops.registry import resolve, resolve_model_file

    src = tiny_models_dir / "classifier-noisy.safetensors"
    path = resolve_model_file("classifier-noisy", "production", tracking_uri=mlflow_server_uri)
    assert path.suffix == ".safetensors" and file_sha256(path) == file_sha256(src)
    info = resolve("classifier-noisy", "production", tracking_uri=mlflow_server_uri)
    assert info.tags["kind"] == "classifier" and json.loads(info.tags["feature_spec"])["n_mels"] == 64

    # The pyfunc wrapper (models:/name@alias) computes what the model file computes.
    mv = MlflowClient(mlflow_server_uri, mlflow_server_uri).get_model_version("classifier-noisy", "1")
    assert mv.source.startswith("mlflow-artifacts:") or mv.source.startswith("file:")
    mlflow.set_tracking_uri(mlflow_server_uri)
    mlflow.set_registry_uri(mlflow_server_uri)
    pyfunc = mlflow.pyfunc.load_model("models:/classifier-noisy@production")
    sig = pyfunc.metadata.signature
    assert [s.name for s in sig.inputs.inputs] == ["x", "sigma"] and sig.outputs.inputs[0].shape == (-1, 10)
    torch.manual_seed(0)
    x, sigma = torch.randn(3, 1, 64, 64), torch.tensor([0.5, 2.0, 10.0])
    got = pyfunc.predict({"x": x.numpy(), "sigma": sigma.numpy()})
    with torch.no_grad():
        want = load_model(src).model(x, sigma).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_profile_candidate_promote_production(registered, capsys):
    from guidance.guides import DEFAULT_PROFILES
    from mlops.registry import load_profile, register_profile, resolve

    first = DEFAULT_PROFILES["noisy"].model_copy(update={"name": "first"})
    second = DEFAULT_PROFILES["noisy"].with_guide(scale=7.5).model_copy(update={"name": "second"})
    v1 = register_profile(first, PROFILE, {"objective": 0.4})
    assert resolve(PROFILE, "candidate").version == v1
    rc, out, _ = run_main(capsys, "models", "promote", PROFILE)
    assert rc == 0 and f"{PROFILE}@production set to version {v1}" in out
    v2 = register_profile(second, PROFILE, {"objective": 0.7})
    assert v2 == v1 + 1 and register_profile(second, PROFILE, {"objective": 0.7}) == v2  # same JSON: same version
    assert load_profile(PROFILE, "production") == first and load_profile(PROFILE, "candidate") == second

    rc, out, err = run_main(capsys, "models", "promote", PROFILE, "--from", "candidate", "--to", "production")
    assert rc == 0, err
    assert f"moved from version {v1} to version {v2}" in out
    assert load_profile(PROFILE, "production") == second
    _, listed, _ = run_main(capsys, "models", "list")
    row = next(line for line in listed.splitlines() if PROFILE in line and f"│ {v2} " in line)
    assert "candidate,production" in row and "objective=0.7" in row and "guidance-profile" in row

    rc, _, _ = run_main(capsys, "models", "promote", PROFILE, "--version", str(v1))  # roll back
    assert rc == 0 and load_profile(PROFILE, "production") == first


@pytest.mark.parametrize(
    "args, message",
    [
        (("models", "promote", "no-such-model"), "no registered model 'no-such-model'"),
        (("models", "promote", "classifier-noisy", "--from", "nope"), "has no alias 'nope'"),
        (("models", "promote", "classifier-noisy", "--version", "99"), "has no version '99'"),
        (("models", "promote", "classifier-noisy", "--to", "7"), "cannot use '7' as an alias"),
        (("models", "register", "--models-dir", "/nonexistent/models"), "is not a directory"),
    ],
)
def test_cli_errors_exit_2_with_one_line(registered, args, message, capsys):
    rc, out, err = run_main(capsys, *args)
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_cli_without_a_server_exits_1(monkeypatch, capsys):
    """A registry that does not answer is not the user's input: exit 1 (try again later), one line."""
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)  # restored after the test, whatever the CLI sets
    rc, _, err = run_main(capsys, "models", "promote", PROFILE)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "not reachable" in err, err
    r = cli("models", "list", "--tracking-uri", dead, timeout=120)  # and as a real process
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "not reachable" in r.stderr, r.stderr


def test_default_store_is_sqlite_in_the_working_directory(tmp_path, monkeypatch):
    """Without MLFLOW_TRACKING_URI the registry is the embedded SQLite store in the working directory;
    a ScoreSubnet travels with its backbone, so the registered copy loads on its own."""
    from guidance.models import load_model
    from mlops.registry import list_registered, register_model_file, resolve_model_file

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPEECHGUIDE_MODELS", raising=False)
    info = register_model_file(ROOT / "models" / "score-subnet-1.safetensors", production_if_missing=True)
    assert (tmp_path / "mlflow.db").is_file() and info.aliases == ("candidate", "production")
    path = resolve_model_file("score-subnet-1", "production")
    assert sorted(p.name for p in path.parent.glob("*.safetensors")) == ["classifier-noisy.safetensors", "score-subnet-1.safetensors"]
    assert load_model(path).kind == "score-subnet"
    assert [r.name for r in list_registered()] == ["score-subnet-1"]


def test_serve_config_checks_registry_args():
    from serve.config import DEFAULT_CONFIG_PATH, check_config, load_config_file, with_overrides

    base = load_config_file(DEFAULT_CONFIG_PATH)
    check_config(with_overrides(base, args={"registry": {"tracking_uri": "http://127.0.0.1:5000", "guides": {"noisy": "classifier-noisy@production"}}}))
    bad = [
        ({"registry": {"poll_second": 5}}, "poll_second"),
        ({"registry": {"guides": {"judge": "judge-digit@production"}}}, "unknown guide kind"),
        ({"registry": {"guides": {"noisy": "../x"}}}, "not NAME@ALIAS"),
        ({"registry": {"profile_aliases": ["1"]}}, "not an alias name"),
        ({"registry": {"poll_seconds": 0}}, "poll_seconds"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            check_config(with_overrides(base, args=args))


def test_registry_watch_follows_aliases_per_guide_kind(registered, mlflow_server_uri):  # noqa: F811
    """What the Serve ingress polls with (no Ray needed): one profile per guide kind, moves, outages."""
    from guidance.guides import DEFAULT_PROFILES
    from mlops.registry import promote, register_profile
    from serve.config import RegistryArgs
    from serve.registry_watch import RegistryWatch

    register_profile(DEFAULT_PROFILES["noisy"].model_copy(update={"name": "tuned-noisy"}), "watch-profile-noisy", {"objective": 1.0})
    promote("watch-profile-noisy")
    args = RegistryArgs(
        tracking_uri=mlflow_server_uri, profile_name="watch-profile-{guide}", profile_aliases=["production", "candidate"],
        guides={"noisy": "classifier-noisy@production"},
    )
    watch = RegistryWatch(args)
    watch.refresh()
    assert watch.profile("production", "noisy").profile.name == "tuned-noisy"
    assert watch.profile("candidate", "noisy").version == 1
    assert watch.profile("production", "clean") is None and "watch-profile-clean@production" in watch.errors
    assert watch.resolve_ref("classifier-noisy@production").version == 1

    register_profile(DEFAULT_PROFILES["clean"].model_copy(update={"name": "tuned-clean"}), "watch-profile-clean", {"objective": 2.0})
    promote("watch-profile-clean")
    changes = watch.refresh()
    assert "watch-profile-clean@production: version None -> 1" in changes
    assert watch.profile("production", "clean").profile.name == "tuned-clean" and not watch.errors

    watch.uri = f"http://127.0.0.1:{free_port()}"  # the registry goes away: the last good state stays
    assert watch.refresh() == []
    assert watch.profile("production", "clean").profile.name == "tuned-clean"
    assert watch.resolve_ref("classifier-noisy@production").version == 1
    assert all("not reachable" in e for e in watch.errors.values()) and len(watch.errors) == 5
