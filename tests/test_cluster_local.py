"""A real three-node Ray cluster on this machine: placement of the Serve app and of a Tune sweep.

`speechguide cluster up` starts a head and two workers (custom resources denoiser_node and
classifier_node); the app is deployed from cluster/local/serve-config.yaml (rendered from
serve/config.yaml) with tiny models; Ray's state API must show the denoiser and classifier
replicas on different nodes; a request goes through HTTP across the three nodes. Then two chaos
cases: a worker node killed under a steady load (no request lost, the node's keeper starts it again
and its replica comes back there), and a worker node killed during a small sweep of the project's
`speechguide tune` (tune.sweep.run), whose trials run on both workers: no trial lost.
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


def _node_log_tails(state_dir: Path, lines: int = 25) -> str:
    """The end of every node's log: `down` removes them, and a failed `up` is diagnosed from them."""
    tails = []
    for log in sorted(Path(state_dir).glob("node-*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        tails.append(f"\n--- {log.name} (last {len(text)} lines) ---\n" + "\n".join(text))
    return "".join(tails)


@pytest.fixture(scope="module")
def local_cluster():
    """(gcs address, state dir) of a fresh three-node cluster; down in the finalizer, whatever happened."""
    from cluster.local.nodes import ClusterState, _session_members, default_state_dir, free_port

    port = free_port()
    state_dir = default_state_dir(port)
    try:
        up = _cli("up", "--port", str(port))
        assert up.returncode == 0, up.stdout + up.stderr + _node_log_tails(state_dir)
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


@pytest.fixture(scope="module")
def app_port(connected, tiny_models_dir) -> int:
    """The rendered local config deployed with tiny models (each model deployment pinned to its worker
    node); its HTTP port."""
    from cluster.local.nodes import free_port
    from serve.launch import deploy, prepare_config

    port = free_port()
    deploy(prepare_config(LOCAL_CONFIG, models_dir=tiny_models_dir, port=port), timeout_s=240)
    return port


@pytest.mark.slow
def test_app_is_placed_across_nodes_and_serves_over_http(connected, app_port):
    from cluster.local.nodes import status

    dashboard = connected.dashboard_url
    nodes = _nodes_by_marker(dashboard)
    assert len(nodes) == 3 and len(set(nodes.values())) == 3, nodes

    # 1. each model deployment runs on its worker node
    assert _replica_nodes(dashboard) == {
        "SpeechIngress": {nodes["head_node"]},
        "Denoiser": {nodes["denoiser_node"]},
        "Classifier": {nodes["classifier_node"]},
    }
    assert nodes["denoiser_node"] != nodes["classifier_node"]

    # `cluster status` reports the same nodes, with the replicas counted where they run
    info = status(Path(connected.temp_dir))
    by_id = {n["node_id"]: n for n in info["nodes"]}
    assert set(by_id) == set(nodes.values()) and all(p["alive"] for p in info["processes"].values())
    assert by_id[nodes["denoiser_node"]]["actors"] >= 1 and by_id[nodes["classifier_node"]]["actors"] >= 1
    assert all(p["restarts"] == 0 for p in info["processes"].values())

    # 2. one guided request over HTTP: proxy and ingress on the head, every step calls both workers
    request = {"targets": [{"guide": "digit", "label": "3"}], "num_samples": 1, "seed": 0, "steps": 3}
    with httpx.Client(base_url=f"http://127.0.0.1:{app_port}", timeout=120) as client:
        r = client.post("/v1/generate", json=request, headers={"Accept": "audio/wav"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/wav"
        wave, rate = soundfile.read(io.BytesIO(r.content), dtype="int16")
        assert rate == 16000 and len(wave) > 0.9 * 16000
        body = client.post("/v1/generate", json={**request, "num_samples": 2}).json()
        assert len(body["samples"]) == 2 and body["stats"]["steps"] == 3


def _replica_nodes(dashboard: str) -> dict[str, set[str]]:
    """Deployment -> ids of the nodes its live replicas run on."""
    from ray.util.state import list_actors

    replicas: dict[str, set[str]] = {}
    for a in list_actors(address=dashboard, detail=True, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False):
        if a.class_name.startswith("ServeReplica:speechguide:"):
            replicas.setdefault(a.class_name.rsplit(":", 1)[1], set()).add(a.node_id)
    return replicas


# ---- chaos: a worker node killed (raylet, workers, replicas at once) while serving and during a sweep ----
# The node's keeper starts it again (cluster/local/keeper.py), as KubeRay recreates a dead worker pod: the
# replica pinned to it and the interrupted trials get their place back (serve/chaos.py, tune/chaos.py).


@pytest.mark.slow
def test_a_worker_node_killed_while_serving_loses_no_request(connected, app_port):
    from cluster.local.nodes import node_ids, restarts
    from serve.chaos import kill_worker_node, run_case, wait_healthy, wait_node_back

    wait_healthy()
    before = set(node_ids(connected, "denoiser_node"))
    result = run_case("kill the denoiser node while serving", f"http://127.0.0.1:{app_port}", kill_worker_node(connected.temp_dir, "denoiser"),
                      clients=2, warmup_s=2, sustain_s=3, max_s=150)
    print(result.fault_note, result.row())
    assert result.ok > 0
    assert result.lost == 0, result.examples("lost")
    assert result.recovery_s() is not None, (result.examples("failed"), result.examples("lost"))
    wait_node_back(connected.temp_dir, "denoiser_node", before)
    wait_healthy()
    (new,) = set(node_ids(connected, "denoiser_node")) - before  # the keeper started the node again: a new node id
    assert _replica_nodes(connected.dashboard_url)["Denoiser"] == {new}
    assert restarts(next(n for n in connected.nodes if n.name == "denoiser")) == 1


@pytest.mark.slow
def test_a_worker_node_killed_during_a_sweep_loses_no_trial(connected, app_port, tiny_models_dir, fsdd_root, tmp_path):
    """The project's sweep on the same cluster: 1-CPU trials fit beside a worker's replica (2 - 0.5 CPUs) but
    not on the head (1 - 0.25), so the two concurrent trials take a worker each. Once the classifier node's
    trial is mid-way (a checkpoint saved), that node is killed; its keeper starts it again. Tune retries the
    trial from its checkpoint: every trial finishes every batch. (bench/chaos.py also stops the MLflow
    server the sweep logs to at the same moment; tests/test_tune.py covers logging to a real server.)"""
    import threading

    from cluster.local.nodes import _session_members, node_ids
    from serve.chaos import kill_worker_node, wait_healthy, wait_node_back
    from tune.chaos import run_sweep_case, trial_reports
    from tune.settings import TuneSettings

    wait_healthy()
    workers = {m: set(node_ids(connected, m)) for m in ("denoiser_node", "classifier_node")}
    keepers = {n.name: n.pid for n in connected.nodes if n.name in ("denoiser", "classifier")}
    settings = TuneSettings(trials=2, max_concurrent=2, cpus_per_trial=1, scheduler="fifo", per_class=4, batch_per_class=2,
                            steps_min=2, steps_max=3, base_steps=2, seed=0, storage_path=str(tmp_path / "sweeps"), name="node-kill",
                            models_dir=str(tiny_models_dir), data_dir=str(fsdd_root), mlflow=False)
    # Where the trials ran, read while they run: each report's worker pid, found in the session of the node that
    # runs it (Ray's state API answered with no actors at all around the node kill, in two fresh-clone CI runs).
    ran_on: set[str] = set()
    stop = threading.Event()

    def watch_placement() -> None:
        while not stop.is_set():
            pids = {r.get("pid") for rows in trial_reports(tmp_path / "sweeps" / "node-kill").values() for r in rows}
            ran_on.update(name for name, keeper in keepers.items() if pids & set(_session_members(keeper)))
            time.sleep(0.2)

    def trial_on_classifier(mid_way: set) -> bool:
        # The kill comes the moment a trial reports from the classifier node; the watcher may not have
        # looked yet, and after the kill that pid is in no session (a fresh-clone run saw only 'denoiser').
        if mid_way & set(_session_members(keepers["classifier"])):
            ran_on.add("classifier")
            return True
        return False

    watcher = threading.Thread(target=watch_placement, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        row, result = run_sweep_case("kill the classifier node during a sweep", settings, kill_worker_node(connected.temp_dir, "classifier"),
                                     fault_when=trial_on_classifier,
                                     restored=lambda: wait_node_back(connected.temp_dir, "classifier_node", workers["classifier_node"]))
    finally:
        stop.set()
        watcher.join(timeout=10)
    print(row.fault_note, row.row(), f"sweep of 2 trials on the 3-node cluster, one node killed: {time.monotonic() - started:.1f} s")
    assert row.fault_note.startswith("killed node classifier"), row.fault_note
    assert [r.status for r in result.rows] == ["complete", "complete"], result.rows
    assert row.trials_lost == 0 and row.recovery_s() is not None
    assert ran_on == {"denoiser", "classifier"}, ran_on  # the two concurrent trials took a worker each

    # the app serves again, its Classifier replica back on the restarted node
    wait_healthy()
    with httpx.Client(base_url=f"http://127.0.0.1:{app_port}", timeout=120) as client:
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


def test_a_worker_that_does_not_start_is_ended_and_started_again(tmp_path):
    """`up` on a worker whose first `ray start` hangs (stand-in commands): that attempt's whole session is
    killed, the node is started again and recorded once; a head that hangs is not retried."""
    from cluster.local.nodes import RETRY_LINE, ClusterState, NodeSpec, _session_members, _start_node

    pid_file = tmp_path / "hung.pid"
    hang = ["sh", "-c", f"echo $$ > {pid_file}; sleep 60 & exec sleep 60"]  # a child too: the whole session must go
    starts = ["sh", "-c", "echo 'Ray runtime started.'; exec sleep 60"]
    commands = iter([hang, starts])
    state = ClusterState("127.0.0.1:6391", "", str(tmp_path), [])
    worker = NodeSpec("denoiser", 1, {"denoiser_node": 1})
    try:
        _start_node(state, tmp_path, worker, lambda: next(commands), tmp_path, timeout_s=1.0, attempts=2)
        hung_pid = int(pid_file.read_text())
        assert [n.name for n in ClusterState.load(tmp_path).nodes] == ["denoiser"]
        assert state.nodes[0].pid != hung_pid and state.nodes[0].command == starts
        assert not _session_members(hung_pid)
        assert RETRY_LINE in (tmp_path / "node-denoiser.log").read_text()

        head = NodeSpec("head", 1, {"head_node": 1}, head=True)
        with pytest.raises(TimeoutError, match="not started after 1 s"):
            _start_node(state, tmp_path, head, lambda: hang, tmp_path, timeout_s=1.0, attempts=2)
        assert [n.name for n in state.nodes] == ["denoiser", "head"]  # recorded: `down` ends it
    finally:
        for record in state.nodes:
            for pid in _session_members(record.pid):
                os.kill(pid, 9)


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


def test_keeper_starts_a_dead_node_again_and_stops_on_sigterm(tmp_path):
    """The keeper (cluster/local/keeper.py) on a stand-in node command: a SIGKILLed node is started again,
    with a line in the log; SIGTERM stops the node and the keeper, and nothing is restarted after it."""
    import signal

    from cluster.local.keeper import RESTART_LINE
    from cluster.local.nodes import KEEPER, _session_members

    log = tmp_path / "node.log"
    node = "echo started $$; exec sleep 60"
    with open(log, "wb") as out:
        keeper = subprocess.Popen([sys.executable, str(KEEPER), "--restart-delay", "0.2", "--", "sh", "-c", node],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def starts() -> list[int]:
            return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("started")]

        deadline = time.monotonic() + 30
        while not starts():
            assert time.monotonic() < deadline and keeper.poll() is None, log.read_text()
            time.sleep(0.05)
        first = starts()[0]
        os.kill(first, 9)
        while len(starts()) < 2:
            assert time.monotonic() < deadline and keeper.poll() is None, log.read_text()
            time.sleep(0.05)
        assert log.read_text().count(RESTART_LINE) == 1 and starts()[1] != first
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(timeout=10) != 0  # the node's code: it ended by SIGTERM
        time.sleep(0.5)
        assert len(starts()) == 2 and not [p for p in _session_members(keeper.pid) if p != keeper.pid]
    finally:
        if keeper.poll() is None:
            os.killpg(keeper.pid, 9)
        keeper.wait(timeout=10)
