"""A three-node Ray cluster on one machine: a head and two workers with distinct custom resources.

Why this exists: placement rules (denoiser replicas here, classifier replicas there, Tune trials on
the workers) can only be tested on more than one Ray node. Each node is a `ray start --block`
process started in its own session, so that session holds exactly that node's processes
(raylet, GCS, agents, workers). `down` ends only the node sessions recorded in the state file; it never
calls `ray stop`, which would end every Ray process of every user on the machine. A worker node runs
under `keeper.py`, which leads its session and starts the node again when it dies (see there why).

Every port a node binds is chosen here (free ports on loopback, worker port ranges derived from the
GCS port), and the head gets its own `--temp-dir`, so the cluster never collides with other local
Ray clusters nor becomes the default that a plain `ray.init()` elsewhere would join.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

DEFAULT_GCS_PORT = 6391  # not Ray's 6379: a `ray start --head` with defaults elsewhere never meets this one
HOST = "127.0.0.1"
STATE_FILE = "cluster.json"
RETRY_LINE = "speechguide cluster up: starting this node again"


@dataclass(frozen=True)
class NodeSpec:
    """One node to start: its name, logical CPUs and custom resources (the placement markers)."""

    name: str
    num_cpus: int
    resources: dict[str, float]
    head: bool = False


def default_nodes(head_cpus: int = 1, worker_cpus: int = 2) -> list[NodeSpec]:
    """Head (ingress, Serve controller, drivers) plus a denoiser node and a classifier node.

    CPU counts are Ray's bookkeeping, not cores. The defaults leave each worker room for one
    1-CPU Tune trial beside its model replica (0.5 CPU), and the head none (1 - 0.25 for the
    ingress), so a sweep's trials spread over the two workers as they would over GPU nodes.
    """
    return [
        NodeSpec("head", head_cpus, {"head_node": 1}, head=True),
        NodeSpec("denoiser", worker_cpus, {"denoiser_node": 1}),
        NodeSpec("classifier", worker_cpus, {"classifier_node": 1}),
    ]


@dataclass
class NodeRecord:
    """What `up` started for one node: enough for `down` to end it and nothing else."""

    name: str
    pid: int  # the `ray start --block` process; it leads its own session (sid == pid)
    command: list[str]
    log: str
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class ClusterState:
    gcs_address: str
    dashboard_url: str
    temp_dir: str
    nodes: list[NodeRecord]

    def save(self, state_dir: Path) -> None:
        (state_dir / STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> Optional["ClusterState"]:
        path = state_dir / STATE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        data["nodes"] = [NodeRecord(**n) for n in data["nodes"]]
        return cls(**data)


def default_state_dir(port: int) -> Path:
    """Short on purpose: Ray's socket paths live under it and Unix sockets allow ~107 characters."""
    return Path(f"/tmp/speechguide-ray-{port}")


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now that this process has not handed out before: a node's command takes several before any
    is bound, and the kernel may offer a port again as soon as the probing socket is closed (a test saw two
    options of one `cluster up` given the same port)."""
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def worker_port_range(gcs_port: int, index: int, size: int = 200) -> tuple[int, int]:
    """Ports for a node's worker processes, above Ray's default 10002-19999 and below Linux's
    ephemeral range, keyed on the GCS port so that two of these clusters get different ranges."""
    base = 20000 + 600 * (gcs_port % 20) + size * index
    return base, base + size - 1


def ray_executable() -> str:
    """The `ray` script of the Python running us (the project venv), not whatever is on PATH."""
    candidate = Path(sys.executable).with_name("ray")
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise FileNotFoundError("the `ray` command was not found next to this Python nor on PATH")
    return found


def start_command(
    spec: NodeSpec, index: int, gcs_port: int, temp_dir: Path, object_store_bytes: int, dashboard_port: Optional[int]
) -> list[str]:
    """The exact `ray start` command line for one node (`speechguide cluster up --dry-run` prints it)."""
    lo, hi = worker_port_range(gcs_port, index)
    cmd = [
        ray_executable(), "start", "--block",
        f"--node-ip-address={HOST}",
        f"--num-cpus={spec.num_cpus}",
        "--num-gpus=0",
        f"--resources={json.dumps(spec.resources, sort_keys=True)}",
        f"--object-store-memory={object_store_bytes}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--min-worker-port={lo}",
        f"--max-worker-port={hi}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        "--disable-usage-stats",
    ]
    if spec.head:
        cmd += [
            "--head",
            f"--port={gcs_port}",
            f"--temp-dir={temp_dir}",
            f"--ray-client-server-port={free_port()}",
        ]
        if dashboard_port is None:
            cmd += ["--include-dashboard=false"]
        else:  # the state API (`ray.util.state`) is served by the dashboard: loopback only
            cmd += ["--include-dashboard=true", f"--dashboard-host={HOST}", f"--dashboard-port={dashboard_port}"]
    else:
        cmd += [f"--address={HOST}:{gcs_port}"]
    return cmd


KEEPER = Path(__file__).with_name("keeper.py")


def kept(spec: NodeSpec, command: list[str]) -> list[str]:
    """A worker node's command under `keeper.py`, which starts the node again when it dies (as KubeRay
    recreates a dead worker pod); the head's command as it is (its GCS is the cluster)."""
    return command if spec.head else [sys.executable, str(KEEPER), "--", *command]


def _ensure_auth_token() -> None:
    """Every node runs with Ray's token authentication (what `ray.init()` does by default now): a
    worker node started with the mode unset would not send the token the head expects. The token
    is the user's (~/.ray/auth_token, or $RAY_AUTH_TOKEN / $RAY_AUTH_TOKEN_PATH); drivers on this
    machine find it the same way."""
    from ray._private.authentication.authentication_token_setup import generate_and_save_token
    from ray._raylet import AuthenticationTokenLoader

    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        generate_and_save_token()


def use_auth_token() -> None:
    """Make this process send the cluster's token, as these nodes expect.

    `ray.init()` does this by itself only for a cluster it finds on its own; with an explicit
    address (or $RAY_ADDRESS) a client must run with RAY_AUTH_MODE=token, or call this first.
    """
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _node_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # `ray start --head` must not try to join whatever the caller points at
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("RAY_AUTH_MODE", "token")
    # On SIGTERM a node drains for up to 30 s by default (Serve moves replicas away first); `down`
    # stops every node at once, so there is nowhere to drain to.
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "3")
    # The GCS declares a node dead after 5 failed health checks, 3 s apart by default: 15 s in which the
    # replicas and trials of a crashed worker still look alive. Checks 1 s apart find it in about 5 s; a
    # node that is alive but slow still has 5 x 10 s (the unchanged timeout) to answer.
    env.setdefault("RAY_health_check_period_ms", "1000")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _spawn(cmd: list[str], log_path: Path, cwd: Path) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:  # a new session: the node outlives this command and Ctrl-C in the caller's terminal
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=_node_env(), cwd=str(cwd))
    finally:
        log.close()


def _wait_started(proc: subprocess.Popen, log_path: Path, timeout_s: float, offset: int = 0) -> None:
    """Wait for `ray start`'s success line in its log, after byte `offset` (an earlier attempt's lines
    come before it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if b"Ray runtime started" in log_path.read_bytes()[offset:]:
            return
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"`ray start` exited with code {proc.returncode}; log {log_path}:\n{tail}")
        time.sleep(0.2)
    raise TimeoutError(f"node not started after {timeout_s:.0f} s; see {log_path}")


def up(
    gcs_port: int = DEFAULT_GCS_PORT,
    state_dir: Optional[Path] = None,
    nodes: Optional[list[NodeSpec]] = None,
    object_store_mb: int = 150,
    dashboard: bool = True,
    timeout_s: float = 60.0,
    cwd: Optional[Path] = None,
    start_attempts: int = 2,
) -> ClusterState:
    """Start the head, then the workers; wait until every node is alive in the GCS.

    A worker that has not started after `timeout_s` (about 5 s on an idle 2-core machine) is ended and
    started again, up to `start_attempts` times. A second `up` while the recorded cluster runs fails
    rather than adopting processes it did not start; if any node fails to start, the ones already
    started are stopped again.
    """
    state_dir = Path(state_dir or default_state_dir(gcs_port))
    nodes = nodes or default_nodes()
    if not nodes[0].head or any(n.head for n in nodes[1:]):
        raise ValueError("the first node, and only it, must be the head")
    existing = ClusterState.load(state_dir)
    if existing and any(_alive(n.pid) for n in existing.nodes):
        raise RuntimeError(f"a cluster recorded in {state_dir} is still running; `speechguide cluster down` first")
    if port_in_use(gcs_port):
        raise RuntimeError(f"port {gcs_port} is already in use on {HOST}; choose another with --port")
    state_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RAY_AUTH_MODE", "token").lower() == "token":
        _ensure_auth_token()
    cwd = Path(cwd or Path.cwd())
    dashboard_port = free_port() if dashboard else None
    state = ClusterState(
        gcs_address=f"{HOST}:{gcs_port}",
        dashboard_url=f"http://{HOST}:{dashboard_port}" if dashboard_port else "",
        temp_dir=str(state_dir),
        nodes=[],
    )
    object_store = object_store_mb * 2**20
    try:
        for index, spec in enumerate(nodes):
            # One at a time: nodes on one host pick socket names (plasma_store.N) by looking at which
            # exist, and two raylets starting together pick the same name. Fresh ports on every attempt.
            _start_node(
                state, state_dir, spec,
                lambda: kept(spec, start_command(spec, index, gcs_port, state_dir, object_store, dashboard_port)),
                cwd, timeout_s, start_attempts,
            )
        wait_nodes_alive(state, len(nodes), timeout_s)
    except BaseException:
        down(state_dir)
        raise
    return state


def alive_nodes(gcs_address: str) -> list[dict]:
    """Alive nodes as the GCS lists them (no dashboard needed)."""
    from ray._raylet import GcsClient

    use_auth_token()
    client = GcsClient(address=gcs_address)
    infos = client.get_all_node_info(timeout=10)
    out = []
    for node_id, info in infos.items():
        if info.state == 0:  # ALIVE
            out.append({"node_id": node_id.hex(), "resources": dict(info.resources_total)})
    return out


def _start_node(
    state: ClusterState,
    state_dir: Path,
    spec: NodeSpec,
    make_command: Callable[[], list[str]],
    cwd: Path,
    timeout_s: float,
    attempts: int,
) -> None:
    """Start one node and wait for its `ray start` to report; a worker that does not is ended and
    started again (a worker's `ray start` can wait on the GCS without end: Ray retries its first queries
    forever). Every attempt is recorded in `state` at once, so that `down` can end it whatever happens."""
    log_path = state_dir / f"node-{spec.name}.log"
    log_path.write_bytes(b"")
    for attempt in range(1, attempts + 1):
        cmd = make_command()
        offset = log_path.stat().st_size
        proc = _spawn(cmd, log_path, cwd)
        state.nodes.append(NodeRecord(spec.name, proc.pid, cmd, str(log_path), dict(spec.resources)))
        state.save(state_dir)
        try:
            _wait_started(proc, log_path, timeout_s, offset)
            return
        except TimeoutError:
            if spec.head or attempt == attempts:
                raise
        _end_attempt(proc)
        state.nodes.pop()
        state.save(state_dir)
        with open(log_path, "a") as log:
            log.write(f"\n{RETRY_LINE}: not started after {timeout_s:.0f} s (attempt {attempt} of {attempts})\n")


def wait_nodes_alive(state: ClusterState, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    seen: list = []
    while time.monotonic() < deadline:
        try:
            seen = alive_nodes(state.gcs_address)
        except Exception:  # GCS still starting
            seen = []
        if len(seen) >= count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{len(seen)} of {count} nodes alive after {timeout_s:.0f} s")


def _end_attempt(proc: subprocess.Popen) -> None:
    """SIGKILL every process of one node attempt (its session: keeper, `ray start` and their children)."""
    for pid in _session_members(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _session_members(sid: int) -> list[int]:
    """Live PIDs in session `sid` (Linux /proc). A node's `ray start` leads its own session, and every
    process of that node stays in it, including Ray workers, which move to process groups of
    their own but keep the session."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] != "Z":  # a zombie has ended already
            members.append(int(entry.name))
    return members


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ours(record: NodeRecord, state: ClusterState) -> bool:
    """Guard against PID reuse: the session leader must still be our `ray start`, or, if it is gone,
    every remaining member must be a Ray process naming our GCS address or temp dir."""
    leader = _cmdline(record.pid)
    if leader:
        return "ray" in leader and ("--block" in leader) and (state.gcs_address.split(":")[1] in leader)
    members = _session_members(record.pid)
    return bool(members) and all(
        (c := _cmdline(p)).startswith("ray::") or state.gcs_address in c or state.temp_dir in c or "ray" in c
        for p in members
    )


def down(state_dir: Path, grace_s: float = 15.0) -> list[str]:
    """End the recorded nodes, workers first: SIGTERM to each `ray start --block` (it drains and
    stops its own processes), then SIGKILL to whatever is left in that node's session. Returns
    what it did, one line per node."""
    state_dir = Path(state_dir)
    state = ClusterState.load(state_dir)
    if state is None:
        return [f"no cluster recorded in {state_dir}"]
    records = list(reversed(state.nodes))
    targets = [r for r in records if _session_members(r.pid) and _ours(r, state)]
    for r in targets:
        try:
            os.kill(r.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_session_members(r.pid) for r in targets):
        time.sleep(0.2)
    done = []
    for r in targets:
        left = _session_members(r.pid)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        done.append(f"{r.name}: stopped (pid {r.pid}{f', {len(left)} left-over processes killed' if left else ''})")
    for r in records:
        if r not in targets:
            done.append(f"{r.name}: not running")
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return done


def restarts(record: NodeRecord) -> int:
    """Times the keeper started this node again (its lines in the node's log)."""
    from cluster.local.keeper import RESTART_LINE

    try:
        return Path(record.log).read_text(errors="replace").count(RESTART_LINE)
    except OSError:
        return 0


def kill_node(state_dir: Path, name: str) -> list[int]:
    """SIGKILL every process of worker node `name` (its `ray start`, raylet, agents, workers and their
    actors) at once, but not its keeper: to Ray this is a machine that crashed. The keeper starts the
    node again (a new node id, the same custom resources). Returns the pids killed."""
    state = ClusterState.load(Path(state_dir))
    if state is None:
        raise RuntimeError(f"no cluster recorded in {state_dir}")
    record = next((n for n in state.nodes if n.name == name), None)
    if record is None:
        raise ValueError(f"no node {name!r}; nodes: {', '.join(n.name for n in state.nodes)}")
    if record is state.nodes[0]:
        raise ValueError("the head is not kept: killing it ends the cluster")
    if not _ours(record, state):
        raise RuntimeError(f"node {name} (pid {record.pid}) is not running")
    killed = [pid for pid in _session_members(record.pid) if pid != record.pid]
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return killed


def node_ids(state: ClusterState, marker: str) -> list[str]:
    """Ids of the alive nodes that carry custom resource `marker`."""
    return [n["node_id"] for n in alive_nodes(state.gcs_address) if marker in n["resources"]]


def status(state_dir: Path) -> dict:
    """Recorded nodes, whether their processes live, and the cluster's nodes and actors per Ray."""
    state = ClusterState.load(Path(state_dir))
    if state is None:
        return {"running": False, "state_dir": str(state_dir)}
    out: dict = {
        "running": any(_alive(n.pid) for n in state.nodes),
        "state_dir": str(state_dir),
        "gcs_address": state.gcs_address,
        "dashboard_url": state.dashboard_url,
        "processes": {n.name: {"pid": n.pid, "alive": _alive(n.pid), "log": n.log, "restarts": restarts(n)} for n in state.nodes},
    }
    if not out["running"]:
        return out
    try:
        out["nodes"] = cluster_nodes(state)
    except Exception as exc:  # report, do not crash: status is what one runs when things are odd
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def cluster_nodes(state: ClusterState) -> list[dict]:
    """Nodes through Ray's state API (dashboard) with their custom resources and live actor count."""
    from ray.util.state import list_actors, list_nodes

    address = state.dashboard_url or None
    if address is None:
        return alive_nodes(state.gcs_address)
    use_auth_token()  # the dashboard's HTTP API checks the same token
    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=10000, raise_on_missing_output=False)
    per_node: dict[str, int] = {}
    for a in actors:
        per_node[a.node_id] = per_node.get(a.node_id, 0) + 1
    rows = []
    for n in list_nodes(address=address, detail=True, raise_on_missing_output=False):
        custom = {k: v for k, v in (n.resources_total or {}).items() if not k.startswith("node:") and k not in ("memory", "object_store_memory")}
        rows.append({"node_id": n.node_id, "state": n.state, "is_head": n.is_head_node,
                     "resources": custom, "actors": per_node.get(n.node_id, 0)})
    return rows
