"""Chaos cases for the Serve app: a steady closed-loop load, a fault in the middle, and what the clients saw.

Shared by `bench/chaos.py` (prints the table) and the chaos tests at the end of `tests/test_serve.py`,
`tests/test_parity.py` (the fused app), `tests/test_serve_registry.py` and `tests/test_cluster_local.py`
(worker nodes of the three-node cluster killed), which assert that no request is lost, on those modules'
apps. `tune/chaos.py` adds the sweep cases (rows with Tune trials) to the same table.
A few client threads each send a small /v1/generate request, wait for its answer, and send the next
one. Every answer is one of:

- ok: 200;
- failed: a clear error, an HTTP status whose body is JSON with a `detail` (e.g. 503 with Retry-After);
- lost: no usable answer: connection dropped, client timeout, or an error status without a JSON `detail`
  (e.g. a proxy's bare "Internal Server Error"), which a client cannot tell from a crash.

The clients resend a lost answer the way `serve.client.generate_remote` does (up to `RESENDS` times,
`RESEND_PAUSE_S` apart; generating has no side effects): a request counts as lost only when its last
send was lost too, and `resent` counts the sends that were repeated. With `resends=0` the clients
report raw HTTP.

Time to full service: from the fault to the first 200 of a request sent after the fault, after which
every answer until the end of the case is a 200 (None if the case ended still failing).

Faults here need the driver to be connected to the app's Ray cluster (`ray.init` done); the load itself
is plain HTTP (httpx).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import httpx

from serve.client import RESEND_PAUSE_S, RESENDS, lost_answer

PAYLOAD = {"targets": [{"guide": "digit", "label": "3"}], "num_samples": 1, "steps": 4}


@dataclass
class Answer:
    sent: float  # time.monotonic()
    done: float
    kind: str  # ok | failed | lost
    status: int  # 0: no HTTP answer
    note: str = ""
    resent: int = 0  # sends of this request lost and repeated before this answer


@dataclass
class CaseResult:
    """One row of the chaos table. A case without a request load (a sweep's) has no answers; a case with a
    Tune sweep has `trials` (the sweep's) and `trials_lost` (those that did not finish every batch), and
    its time to full service is `restored_s` (set by the case: e.g. until the killed node is back)."""

    name: str
    fault_at: float
    answers: list[Answer] = field(default_factory=list)
    fault_note: str = ""
    trials: Optional[int] = None
    trials_lost: Optional[int] = None
    restored_s: Optional[float] = None

    def count(self, kind: str) -> int:
        return sum(a.kind == kind for a in self.answers)

    @property
    def ok(self) -> int:
        return self.count("ok")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def lost(self) -> int:
        return self.count("lost")

    @property
    def resent(self) -> int:
        return sum(a.resent for a in self.answers)

    def recovery_s(self) -> Optional[float]:
        """Seconds from the fault to the first 200 of a request sent after the fault, followed only by
        200s until the case ended (a request in flight across the fault may finish early without
        showing that the service is back). A case without requests: its own `restored_s`."""
        if not self.answers:
            return self.restored_s
        after = sorted((a for a in self.answers if a.done >= self.fault_at), key=lambda a: a.done)
        first_ok = None
        for a in after:
            if a.kind != "ok":
                first_ok = None
            elif first_ok is None and a.sent >= self.fault_at:
                first_ok = a
        return None if first_ok is None else first_ok.done - self.fault_at

    def examples(self, kind: str, n: int = 3) -> list[str]:
        return [f"{a.status} {a.note}" for a in self.answers if a.kind == kind][:n]

    def row(self) -> dict:
        rec = self.recovery_s()
        row = {"case": self.name, "200": self.ok, "failed": self.failed, "lost": self.lost, "resent": self.resent,
               "recovery_s": None if rec is None else round(rec, 1)}
        if self.trials is not None:
            row.update(trials=self.trials, trials_lost=self.trials_lost)
        return row

    def nothing_lost(self) -> bool:
        """The acceptance rule of every row: no request lost, no Tune trial lost, full service restored."""
        return self.lost == 0 and not self.trials_lost and self.recovery_s() is not None


def classify(response: httpx.Response) -> tuple[str, str]:
    if response.status_code == 200:
        return "ok", ""
    if lost_answer(response):
        return "lost", f"no JSON detail: {response.text[:120]!r}"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        return "failed", str(body["detail"])[:160]
    return "lost", f"no JSON detail: {response.text[:120]!r}"


class Load:
    """`clients` closed-loop threads posting `payload` to URL/v1/generate until `stop()`."""

    def __init__(self, url: str, clients: int = 3, payload: Optional[dict] = None, timeout_s: float = 60.0, pause_after_error_s: float = 0.2,
                 resends: int = RESENDS):
        self.url, self.clients, self.payload, self.timeout_s = url, clients, payload or PAYLOAD, timeout_s
        self.pause_after_error_s, self.resends = pause_after_error_s, resends
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self, i: int) -> None:
        seed = 1000 * i
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                seed += 1
                t0 = time.monotonic()
                for attempt in range(self.resends + 1):
                    try:
                        r = client.post("/v1/generate", json={**self.payload, "seed": seed})
                        kind, note = classify(r)
                        status = r.status_code
                    except httpx.HTTPError as exc:
                        kind, note, status = "lost", f"{type(exc).__name__}: {exc}"[:160], 0
                        if isinstance(exc, httpx.TimeoutException):
                            break  # a client timeout is not resent (as in generate_remote)
                    if kind != "lost" or attempt == self.resends:
                        break
                    time.sleep(RESEND_PAUSE_S)
                with self._lock:
                    self.answers.append(Answer(t0, time.monotonic(), kind, status, note, attempt))
                if kind != "ok":
                    time.sleep(self.pause_after_error_s)

    def start(self) -> "Load":
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Answer]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 10)
        with self._lock:
            return list(self.answers)

    def since(self, t: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.done >= t]


def run_case(
    name: str,
    url: str,
    fault: Callable[[], str],
    clients: int = 3,
    warmup_s: float = 3.0,
    sustain_s: float = 4.0,
    max_s: float = 90.0,
    payload: Optional[dict] = None,
    resends: int = RESENDS,
) -> CaseResult:
    """Load for `warmup_s`, call `fault()` (returns a note), keep the load on until the service has
    answered only 200s for `sustain_s` after the fault (or `max_s` passed), then stop the load."""
    load = Load(url, clients, payload, resends=resends).start()
    try:
        time.sleep(warmup_s)
        fault_at = time.monotonic()
        note = fault()
        deadline = fault_at + max_s
        while time.monotonic() < deadline:
            time.sleep(0.5)
            recovery = CaseResult(name, fault_at, load.since(fault_at)).recovery_s()
            if recovery is not None and time.monotonic() - (fault_at + recovery) >= sustain_s:
                break
    finally:
        answers = load.stop()
    return CaseResult(name, fault_at, answers, note)


# ---- faults -------------------------------------------------------------------------------------


def replica_actors(deployment: str, app: str = "speechguide") -> list[tuple[str, str]]:
    """(name, namespace) of the live replica actors of `deployment` (Serve names them
    SERVE_REPLICA::APP#DEPLOYMENT#ID); needs no dashboard."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return [(a["name"], a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


def kill_replica(deployment: str, app: str = "speechguide") -> Callable[[], str]:
    """A fault: `ray.kill` one replica of `deployment` (the process dies mid-call; Serve replaces it)."""

    def fault() -> str:
        import ray

        actors = replica_actors(deployment, app)
        if not actors:
            raise RuntimeError(f"no replica of {deployment} found")
        name, namespace = actors[0]
        ray.kill(ray.get_actor(name, namespace=namespace), no_restart=False)
        return f"killed {name}"

    return fault


def kill_replicas(deployments: list[str], app: str = "speechguide") -> Callable[[], str]:
    """A fault: one replica of each of `deployments` killed at the same moment (their replacements start side by side)."""
    faults = [kill_replica(d, app) for d in deployments]

    def fault() -> str:
        return "; ".join(f() for f in faults)

    return fault


def kill_worker_node(state_dir: str, name: str) -> Callable[[], str]:
    """A fault: SIGKILL every process of worker node `name` of the local cluster (`speechguide cluster up`),
    raylet, workers and replicas at once, as a crashed machine; its keeper starts the node again."""

    def fault() -> str:
        from pathlib import Path

        from cluster.local.nodes import kill_node

        killed = kill_node(Path(state_dir), name)
        return f"killed node {name} ({len(killed)} processes)"

    return fault


def wait_node_back(state_dir: str, marker: str, dead: set[str], timeout_s: float = 180.0) -> float:
    """Until a node with custom resource `marker` other than those in `dead` (ids) is alive; returns the
    monotonic time it was first seen."""
    from pathlib import Path

    from cluster.local.nodes import ClusterState, node_ids

    state = ClusterState.load(Path(state_dir))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if set(node_ids(state, marker)) - dead:
                return time.monotonic()
        except Exception:  # the GCS busy with the dead node: ask again
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no new node with {marker} after {timeout_s:.0f} s")


def wait_healthy(app: str = "speechguide", timeout_s: float = 180.0) -> None:
    """Until the app is RUNNING and each of its deployments HEALTHY (a killed replica replaced)."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        if status is not None:
            last = {n: d.status for n, d in status.deployments.items()}
            if status.status == "RUNNING" and all(s == "HEALTHY" for s in last.values()):
                return
        time.sleep(0.5)
    raise TimeoutError(f"{app} not healthy after {timeout_s:.0f} s: {last}")


def format_table(results: list[CaseResult]) -> str:
    """One Markdown table: requests (a case without a load shows "-") and Tune trials (for cases with a sweep)."""
    head = ["case", "requests 200", "failed (clear error)", "lost", "resent (dropped answer)", "Tune trials finished / lost",
            "time to full service (s)"]

    def cells(r: CaseResult) -> list[str]:
        load = [str(r.ok), str(r.failed), str(r.lost), str(r.resent)] if r.answers else ["-"] * 4
        trials = "-" if r.trials is None else f"{r.trials - (r.trials_lost or 0)} / {r.trials_lost or 0}"
        rec = r.recovery_s()
        return [r.name, *load, trials, "not restored" if rec is None else f"{rec:.1f}"]

    rows = [cells(r) for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)])


def promote_mismatched_denoiser(url: str, tracking_uri: str, workdir: str, name: str = "denoiser-unet", wait_s: float = 60.0) -> Callable[[], str]:
    """A fault: register a denoiser made for another feature config (n_mels and mean differ from the app's)
    and promote it to `name@production`; returns once the app's registry watch has resolved the alias to it."""

    def fault() -> str:
        import dataclasses
        from pathlib import Path

        from guidance.diffusion import EDMPrecond
        from guidance.features import FeatureSpec
        from guidance.models import UNet, UNetConfig, save_model
        from guidance.models.checkpoint import config_dict
        from mlops.registry import promote, register_model_file

        cfg = UNetConfig(channels=(8, 16), emb_dim=16)
        spec = dataclasses.replace(FeatureSpec(), n_mels=32, mean=-3.0)
        path = save_model(Path(workdir) / f"{name}.safetensors", EDMPrecond(UNet(cfg)), "denoiser-unet", {**config_dict(cfg), "sigma_data": 1.0}, spec)
        info = register_model_file(path, name=name, tracking_uri=tracking_uri)
        promote(name, info.version, "production", tracking_uri=tracking_uri)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            den = httpx.get(f"{url}/v1/models", timeout=30).json().get("registry", {}).get("denoiser") or {}
            if den.get("version") == info.version:
                return f"promoted {name}/{info.version} (n_mels 32) to production; the app resolved it"
            time.sleep(0.5)
        raise TimeoutError(f"the app did not resolve {name}@production to version {info.version} within {wait_s:.0f} s")

    return fault


def served_profile_version(url: str) -> int:
    """The version of the production profile the app serves right now (`GET /v1/models`)."""
    return int(httpx.get(f"{url}/v1/models", timeout=30).json()["profile_versions"][0]["version"])


def _cli(*args: str) -> tuple[int, str, str]:
    """`speechguide ARGS` in this process (as the user's command, without a second interpreter's start-up):
    (exit code, stdout, stderr)."""
    import contextlib
    import io

    from speechguide.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def promote_with_server_stopped(url: str, name: str, tracking_uri: str, stop: Callable[[], None], start: Callable[[], None] | None,
                                wait_s: float = 60.0, store_uri: str | None = None) -> Callable[[], str]:
    """A fault: stop the MLflow server and run `speechguide models promote NAME` (candidate -> production) as a
    user would: it must end with one line and exit code 1, the alias unmoved (checked once `start()` has the
    server back, same store and address); then the same command again must promote. Returns once the app
    serves the promoted version; the load meanwhile checks that the app kept serving the last one.
    With `start=None` the server stays down: the alias is read from the server's own store (`store_uri`,
    its backend database) and nothing is promoted again (the tests' shorter form of the case)."""

    def fault() -> str:
        from mlops.registry import resolve

        before = served_profile_version(url)
        stop()
        code, _, stderr = _cli("models", "promote", name, "--tracking-uri", tracking_uri)
        lines = stderr.strip().splitlines()
        if code != 1 or len(lines) != 1:
            raise RuntimeError(f"promote with the server stopped: exit {code}, stderr {stderr[-800:]!r}")
        if start is None:
            still = resolve(name, "production", tracking_uri=store_uri).version
            if still != before:
                raise RuntimeError(f"the failed promotion moved {name}@production from {before} to {still}")
            return f"server stopped; `models promote` exit 1: {lines[0][:90]}...; alias still at {before} in the server's store"
        t0 = time.monotonic()
        start()
        back_s = time.monotonic() - t0
        still = resolve(name, "production", tracking_uri=tracking_uri).version
        if still != before:
            raise RuntimeError(f"the failed promotion moved {name}@production from {before} to {still}")
        code, again, stderr = _cli("models", "promote", name, "--tracking-uri", tracking_uri)
        if code != 0:
            raise RuntimeError(f"promote after the server came back: exit {code}: {stderr[-800:]}")
        target = resolve(name, "production", tracking_uri=tracking_uri).version
        deadline = time.monotonic() + wait_s
        while served_profile_version(url) != target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app did not serve {name} version {target} within {wait_s:.0f} s")
            time.sleep(0.5)
        return (f"server stopped; `models promote` exit 1: {lines[0][:90]}...; server back after {back_s:.0f} s, alias still at {before}; "
                f"promoted again: {again.strip()}; the app serves it")

    return fault


def served_denoiser(url: str) -> dict:
    """The denoiser a /v1/generate request is answered with right now (`models.denoiser`)."""
    r = httpx.post(f"{url}/v1/generate", json={**PAYLOAD, "seed": 1}, timeout=60)
    r.raise_for_status()
    return r.json()["models"]["denoiser"]
