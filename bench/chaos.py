"""Chaos matrix: faults injected into the running Serve app under a steady closed-loop load, and into Tune sweeps.

Prints one table, a row per case: requests answered 200, failed with a clear error (HTTP status with a
JSON `detail`), lost (no answer, dropped connection, client timeout, or an error without a JSON detail),
resent (answers dropped and sent again by the project's client), Tune trials finished / lost (cases with
a sweep), and the time from the fault until full service is back (the first 200 followed only by 200s;
for a sweep: until the killed node is back). See serve/chaos.py and tune/chaos.py for the definitions.
Every row must lose no request and no trial; the script exits 1 otherwise. The ingress kill seen by clients
that do not resend (`ingress-raw`) is printed apart, for reference: it shows what the resending is for.

Sections (each on its own cluster, committed models unless --models-dir; clients send 1 sample x 4 steps):
- replicas (serve/config.yaml, local 2-CPU Ray): kill a Denoiser, Classifier or SpeechIngress replica;
- fused (serve/config-fused.yaml, local 2-CPU Ray): kill the Fused replica;
- registry (the app following a real `mlflow server` on loopback, 1 s poll): promote a denoiser made for
  another feature config; stop the server during `speechguide models promote` (exit 1, nothing moved; the
  same command works once the server is back); stop the server while the app polls it;
- cluster (the three-node `speechguide cluster up`, the rendered cluster/local/serve-config.yaml): kill
  the denoiser worker node while serving; kill the classifier worker node during a 2-trial sweep; stop
  the MLflow server during a sweep's logging and start it again (the trials' logs catch up).

    OMP_NUM_THREADS=1 .venv/bin/python bench/chaos.py [--clients 3]
        [--cases denoiser,classifier,ingress,ingress-raw,fused,promote-mismatch,promote-stopped,mlflow-stop,
                 node-serve,node-sweep,mlflow-sweep]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # mlflow_server.py: a real `mlflow server` on loopback

from serve.client import RESENDS  # noqa: E402
from serve.chaos import (  # noqa: E402
    format_table, kill_replica, kill_worker_node, promote_mismatched_denoiser, promote_with_server_stopped, run_case, wait_healthy,
    wait_node_back,
)

# name: (key for --cases, fault, resends by the clients; 0 = raw HTTP, what a client without resending sees)
CASES = {
    "kill Denoiser replica": ("denoiser", lambda: kill_replica("Denoiser"), RESENDS),
    "kill Classifier replica": ("classifier", lambda: kill_replica("Classifier"), RESENDS),
    "kill SpeechIngress replica": ("ingress", lambda: kill_replica("SpeechIngress"), RESENDS),
    "kill SpeechIngress replica, clients without resend": ("ingress-raw", lambda: kill_replica("SpeechIngress"), 0),
}
FUSED_CASES = {"kill Fused replica": ("fused", lambda: kill_replica("Fused"), RESENDS)}
POLL_S = 1.0
REGISTRY_CASES = ("promote-mismatch", "promote-stopped", "mlflow-stop")
CLUSTER_CASES = ("node-serve", "node-sweep", "mlflow-sweep")


def app(models_dir, registry=None, config=None):
    """The app on a fresh local Ray cluster (2 CPUs); yields its URL."""
    from serve.config import DEFAULT_CONFIG_PATH
    from serve.launch import running_app

    return running_app(config or DEFAULT_CONFIG_PATH, timeout_s=300, models_dir=models_dir, args={"registry": registry} if registry else None)


def report(result, results: list) -> None:
    results.append(result)
    print(f"{result.name}: {result.fault_note}; {result.row()}", flush=True)
    for kind in ("failed", "lost"):
        for ex in result.examples(kind):
            print(f"    {kind}: {ex}", flush=True)


def replica_section(a, wanted, results, expect_no_loss, kw) -> None:
    for cases, config in ((CASES, None), (FUSED_CASES, "fused")):
        kills = [(name, v) for name, v in cases.items() if v[0] in wanted]
        if not kills:
            continue
        from serve.config import FUSED_CONFIG_PATH

        with app(a.models_dir, config=FUSED_CONFIG_PATH if config else None) as url:
            for name, (_, make_fault, resends) in kills:
                wait_healthy()
                result = run_case(name, url, make_fault(), sustain_s=a.sustain, resends=resends, **kw)
                report(result, results)
                if resends:
                    expect_no_loss.append(result)


def registry_section(a, wanted, results, expect_no_loss, kw) -> None:
    from guidance.pipeline import default_models_dir
    from mlflow_server import running_mlflow_server
    from mlops.registry import promote, register_models_dir, register_profile

    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp, contextlib.ExitStack() as server:
        os.environ["SPEECHGUIDE_REGISTRY_CACHE"] = str(Path(tmp) / "registry-cache")  # the replicas inherit it
        root = Path(tmp) / "mlflow"
        uri = server.enter_context(running_mlflow_server(root))
        register_models_dir(a.models_dir or default_models_dir(), tracking_uri=uri)
        from guidance.guides import DEFAULT_PROFILES

        profile = DEFAULT_PROFILES["noisy"]
        register_profile(profile.model_copy(update={"name": "chaos-one"}), "speechguide-profile", {}, tracking_uri=uri)
        promote("speechguide-profile", "candidate", "production", tracking_uri=uri)
        registry = {"tracking_uri": uri, "poll_seconds": POLL_S, "denoiser": "denoiser-unet@production"}
        with app(a.models_dir, registry) as url:
            if "promote-mismatch" in wanted:
                wait_healthy()
                fault = promote_mismatched_denoiser(url, uri, tmp)
                report(run_case("promote denoiser with mismatched features", url, fault, sustain_s=a.sustain, **kw), results)
                expect_no_loss.append(results[-1])
            if "promote-stopped" in wanted:
                wait_healthy()
                register_profile(profile.model_copy(update={"name": "chaos-two"}), "speechguide-profile", {}, tracking_uri=uri)
                port = int(uri.rsplit(":", 1)[1])
                fault = promote_with_server_stopped(url, "speechguide-profile", uri, stop=server.close,
                                                    start=lambda: server.enter_context(running_mlflow_server(root, port=port)))
                report(run_case("stop MLflow server during a promotion", url, fault, sustain_s=a.sustain, **kw), results)
                expect_no_loss.append(results[-1])
            if "mlflow-stop" in wanted:
                wait_healthy()

                def stop_server() -> str:
                    server.close()
                    return "stopped the MLflow server"

                report(run_case("stop MLflow server while polled", url, stop_server, sustain_s=a.sustain + 3 * POLL_S, **kw), results)
                expect_no_loss.append(results[-1])


def cluster_section(a, wanted, results, expect_no_loss, kw) -> None:
    """The three-node local cluster: node kills while serving and during a sweep, MLflow stopped during a sweep."""
    import ray

    from cluster.local import nodes
    from guidance.pipeline import default_models_dir
    from serve.launch import deploy, prepare_config
    from tune.chaos import run_sweep_case
    from tune.settings import TuneSettings

    port = nodes.free_port()
    state_dir = nodes.default_state_dir(port)
    tmp = Path(tempfile.mkdtemp(prefix="chaos-cluster-"))
    try:
        state = nodes.up(port, state_dir, cwd=ROOT)
        nodes.use_auth_token()
        ray.init(address=state.gcs_address, namespace="serve", log_to_driver=False)
        http_port = nodes.free_port()
        deploy(prepare_config(ROOT / "cluster" / "local" / "serve-config.yaml", models_dir=a.models_dir, port=http_port), timeout_s=300)
        url = f"http://127.0.0.1:{http_port}"
        if "node-serve" in wanted:
            wait_healthy()
            before = set(nodes.node_ids(state, "denoiser_node"))
            result = run_case("kill the denoiser worker node while serving", url, kill_worker_node(str(state_dir), "denoiser"),
                              sustain_s=a.sustain, max_s=180, **kw)
            report(result, results)
            expect_no_loss.append(result)
            wait_node_back(str(state_dir), "denoiser_node", before)
        sweep = dict(trials=2, max_concurrent=2, cpus_per_trial=1, scheduler="fifo", per_class=6, batch_per_class=2, steps_min=2,
                     steps_max=3, base_steps=2, seed=0, storage_path=str(tmp / "sweeps"), models_dir=str(a.models_dir or default_models_dir()),
                     data_dir=os.environ.get("SPEECHGUIDE_FSDD_DIR") or str(ROOT.parent / "shared" / "data" / "fsdd"))
        if "node-sweep" in wanted:
            wait_healthy()
            before = set(nodes.node_ids(state, "classifier_node"))
            keeper = next(n.pid for n in state.nodes if n.name == "classifier")
            row, _ = run_sweep_case("kill the classifier worker node during a sweep", TuneSettings(**sweep, mlflow=False, name="node-kill"),
                                    kill_worker_node(str(state_dir), "classifier"),
                                    fault_when=lambda mid: bool(mid & set(nodes._session_members(keeper))),
                                    restored=lambda: wait_node_back(str(state_dir), "classifier_node", before))
            report(row, results)
            expect_no_loss.append(row)
        if "mlflow-sweep" in wanted:
            wait_healthy()
            row = mlflow_sweep_case(TuneSettings(**sweep, name="mlflow-stop", experiment="chaos"), tmp / "mlflow")
            report(row, results)
            expect_no_loss.append(row)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        nodes.down(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def mlflow_sweep_case(settings, root: Path, down_s: float = 8.0):
    """A sweep logging to a real MLflow server that is stopped once a trial is mid-way and started again
    `down_s` later (same store and address). The row's note says what MLflow did not get in the end."""
    from mlflow_server import running_mlflow_server
    from tune.chaos import run_sweep_case

    with contextlib.ExitStack() as server:
        uri = server.enter_context(running_mlflow_server(root))
        port = int(uri.rsplit(":", 1)[1])

        def stop() -> str:
            server.close()
            return f"stopped the MLflow server for {down_s:g} s"

        def start_again() -> None:
            time.sleep(down_s)
            server.enter_context(running_mlflow_server(root, port=port))

        row, result = run_sweep_case("stop MLflow server during a sweep's logging", settings.model_copy(update={"tracking_uri": uri}),
                                     stop, fault_when=bool, restored=start_again)
        summary = result.summary()
        row.fault_note += f"; after the sweep: {summary['mlflow_unlogged']:g} report(s) never reached MLflow, problems: {summary['tracking_problems'] or 'none'}"
        return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--cases", default=",".join([*(v[0] for v in CASES.values()), *(v[0] for v in FUSED_CASES.values()), *REGISTRY_CASES, *CLUSTER_CASES]))
    p.add_argument("--models-dir", default=None)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--sustain", type=float, default=4.0)
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    wanted = set(a.cases.split(","))
    results: list = []
    expect_no_loss: list = []  # every case but the one whose clients do not resend
    kw = dict(clients=a.clients, warmup_s=a.warmup)

    replica_section(a, wanted, results, expect_no_loss, kw)
    if wanted & set(REGISTRY_CASES):
        registry_section(a, wanted, results, expect_no_loss, kw)
    if wanted & set(CLUSTER_CASES):
        cluster_section(a, wanted, results, expect_no_loss, kw)

    print()
    print(format_table([r for r in results if r in expect_no_loss]))
    reference = [r for r in results if r not in expect_no_loss]
    if reference:  # what the fault costs a client that does not resend: why the project's client does
        print("\nFor reference, not a case of the matrix: the same fault seen by clients that do not resend")
        print(format_table(reference))
    return 0 if all(r.nothing_lost() for r in expect_no_loss) else 1


if __name__ == "__main__":
    sys.exit(main())
