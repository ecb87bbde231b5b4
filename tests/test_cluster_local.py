"""A real three-node Ray cluster on this machine: placement of the Serve app and of a Tune sweep.

`speechguide cluster up` starts a head and two workers (custom resources denoiser_node and
classifier_node); the app is deployed from cluster/local/serve-config.yaml (rendered from
serve/config.yaml) with tiny models; Ray's state API must show the denoiser and classifier
replicas on different nodes; a request goes through HTTP across the three nodes; then a small
sweep of the project's `speechguide tune` (tune.sweep.run) must run its trials on both workers.
The cluster is always torn down with `speechguide cluster down`, which ends only its own nodes.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import soundfile

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "speechguide"]
LOCAL_CONFIG = ROOT / "cluster" / "local" / "serve-config.yaml"


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([*CLI, "cluster", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def local_cluster():
    """(gcs address, state dir) of a fresh three-node cluster; down in the finalizer, whatever happened."""
    from cluster.local.nodes import ClusterState, _session_members, default_state_dir, free_port

    port = free_port()
    state_dir = default_state_dir(port)
    try:
        up = _cli("up", "--port", str(port))
        assert up.returncode == 0, up.stdout + up.stderr
        state = ClusterState.load(state_dir)
        assert state is not None and [n.name for n in state.nodes] == ["head", "denoiser", "classifier"]
        yield state
    finally:
        recorded = ClusterState.load(state_dir)
        down = _cli("down", "--port", str(port), timeout=120)
        if recorded is not None:  # every process of every recorded node is gone, nothing else was touched
            assert down.returncode == 0, down.stdout + down.stderr
            assert all(not _session_members(n.pid) for n in recorded.nodes), down.stdout
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def connected(local_cluster):
    import ray
    from ray import serve

    from cluster.local.nodes import use_auth_token

    use_auth_token()  # as RAY_AUTH_MODE=token would: the nodes run with Ray's token authentication
    ray.init(address=local_cluster.gcs_address, namespace="serve", log_to_driver=False)
    try:
        yield local_cluster
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _nodes_by_marker(dashboard: str) -> dict[str, str]:
    """Custom resource marker -> node id, from Ray's state API."""
    from ray.util.state import list_nodes

    out = {}
    for n in list_nodes(address=dashboard, detail=True, raise_on_missing_output=False):
        assert n.state == "ALIVE"
        for marker in ("head_node", "denoiser_node", "classifier_node"):
            if marker in (n.resources_total or {}):
                out[marker] = n.node_id
    return out


@pytest.mark.slow
def test_app_is_placed_across_nodes_serves_over_http_and_a_sweep_spreads_over_the_workers(connected, tiny_models_dir, fsdd_root, tmp_path):
    from ray.util.state import list_actors

    from cluster.local.nodes import free_port, status
    from serve.launch import deploy, prepare_config

    dashboard = connected.dashboard_url
    nodes = _nodes_by_marker(dashboard)
    assert len(nodes) == 3 and len(set(nodes.values())) == 3, nodes

    # 1. deploy the rendered local config: each model deployment pinned to its worker node
    http_port = free_port()
    deploy(prepare_config(LOCAL_CONFIG, models_dir=tiny_models_dir, port=http_port), timeout_s=240)
    replicas = {}
    for a in list_actors(address=dashboard, detail=True, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False):
        if a.class_name.startswith("ServeReplica:speechguide:"):
            replicas.setdefault(a.class_name.rsplit(":", 1)[1], set()).add(a.node_id)
    assert replicas == {
        "SpeechIngress": {nodes["head_node"]},
        "Denoiser": {nodes["denoiser_node"]},
        "Classifier": {nodes["classifier_node"]},
    }, replicas
    assert nodes["denoiser_node"] != nodes["classifier_node"]

    # `cluster status` reports the same nodes, with the replicas counted where they run
    info = status(Path(connected.temp_dir))
    by_id = {n["node_id"]: n for n in info["nodes"]}
    assert set(by_id) == set(nodes.values()) and all(p["alive"] for p in info["processes"].values())
    assert by_id[nodes["denoiser_node"]]["actors"] >= 1 and by_id[nodes["classifier_node"]]["actors"] >= 1

    # 2. one guided request over HTTP: proxy and ingress on the head, every step calls both workers
    request = {"targets": [{"guide": "digit", "label": "3"}], "num_samples": 1, "seed": 0, "steps": 3}
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120) as client:
        r = client.post("/v1/generate", json=request, headers={"Accept": "audio/wav"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/wav"
        wave, rate = soundfile.read(io.BytesIO(r.content), dtype="int16")
        assert rate == 16000 and len(wave) > 0.9 * 16000
        body = client.post("/v1/generate", json={**request, "num_samples": 2}).json()
        assert len(body["samples"]) == 2 and body["stats"]["steps"] == 3

    # 3. the project's Tune sweep on the same cluster: 1-CPU trials fit beside a worker's replica
    #    (2 - 0.5 CPUs) but not on the head (1 - 0.25), so the two concurrent trials take a worker each
    from tune.settings import TuneSettings
    from tune.sweep import run

    settings = TuneSettings(trials=2, max_concurrent=2, cpus_per_trial=1, scheduler="fifo", per_class=2, batch_per_class=2,
                            steps_min=2, steps_max=3, base_steps=2, seed=0, mlflow=False, storage_path=str(tmp_path / "sweeps"),
                            name="spread", models_dir=str(tiny_models_dir), data_dir=str(fsdd_root))
    started = time.monotonic()
    result = run(settings, log=lambda m: None)
    assert [r.status for r in result.rows] == ["complete", "complete"], result.rows
    trials = [a for a in list_actors(address=dashboard, detail=True, filters=[("class_name", "=", "ImplicitFunc")],
                                     raise_on_missing_output=False)]
    assert len(trials) == 2, trials
    assert {a.node_id for a in trials} == {nodes["denoiser_node"], nodes["classifier_node"]}, (nodes, [a.node_id for a in trials])
    print(f"sweep of 2 trials on the 3-node cluster: {time.monotonic() - started:.1f} s")

    # the app still serves after the sweep
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120) as client:
        assert client.get("/healthz").status_code == 200


def test_down_never_ends_a_process_it_did_not_start(tmp_path):
    """A recorded pid now held by something else (pid reuse, a stale state file) is left alone."""
    from cluster.local.nodes import STATE_FILE, ClusterState, NodeRecord, down

    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state = ClusterState("127.0.0.1:6391", "", str(tmp_path), [NodeRecord("head", other.pid, ["ray", "start"], "log")])
        state.save(tmp_path)
        assert down(tmp_path, grace_s=1) == ["head: not running"]
        assert other.poll() is None  # still running
        assert not (tmp_path / STATE_FILE).exists()
        assert down(tmp_path) == [f"no cluster recorded in {tmp_path}"]
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("args,needle", [
    (["up", "--port", "80"], "--port must be between 1024 and 65535"),
    (["up", "--worker-cpus", "0"], "--worker-cpus must be at least 1"),
    (["up", "--object-store-mb", "10"], "--object-store-mb must be at least 80"),
    (["check", "no-such.yaml"], "no-such.yaml does not exist"),
])
def test_cluster_usage_errors_exit_2_with_one_line(args, needle, capsys):
    from speechguide.cli import main

    assert main(["cluster", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
