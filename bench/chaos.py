"""Chaos matrix: faults injected into the running Serve app under a steady closed-loop load.

Starts the app from serve/config.yaml on a small local Ray cluster (committed models unless
--models-dir), then for each case runs a few closed-loop clients (1 sample x 4 steps each request),
injects the fault mid-load and prints: requests answered 200, failed with a clear error (HTTP status
with a JSON `detail`), lost (no answer, dropped connection, client timeout, or an error without a
JSON detail), and the time from the fault until full service is back (the first 200 followed only by
200s). See serve/chaos.py for the definitions.

Then, with the app following a real `mlflow server` on loopback (1 s poll, the denoiser from
`denoiser-unet@production`): a denoiser made for another feature config is promoted to production
mid-load, and the MLflow server is stopped while the app polls it.

    OMP_NUM_THREADS=1 .venv/bin/python bench/chaos.py [--clients 3]
        [--cases denoiser,classifier,ingress,ingress-raw,promote-mismatch,mlflow-stop]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # mlflow_server.py: a real `mlflow server` on loopback

from serve.client import RESENDS  # noqa: E402
from serve.chaos import format_table, kill_replica, promote_mismatched_denoiser, run_case, wait_healthy  # noqa: E402

# name: (key for --cases, fault, resends by the clients; 0 = raw HTTP, what a client without resending sees)
CASES = {
    "kill Denoiser replica": ("denoiser", lambda: kill_replica("Denoiser"), RESENDS),
    "kill Classifier replica": ("classifier", lambda: kill_replica("Classifier"), RESENDS),
    "kill SpeechIngress replica": ("ingress", lambda: kill_replica("SpeechIngress"), RESENDS),
    "kill SpeechIngress replica, clients without resend": ("ingress-raw", lambda: kill_replica("SpeechIngress"), 0),
}


POLL_S = 1.0
REGISTRY_CASES = ("promote-mismatch", "mlflow-stop")


def app(models_dir, registry=None):
    """The app on a fresh local Ray cluster (2 CPUs); yields its URL."""
    from serve.config import DEFAULT_CONFIG_PATH
    from serve.launch import running_app

    return running_app(DEFAULT_CONFIG_PATH, timeout_s=300, models_dir=models_dir, args={"registry": registry} if registry else None)


def report(result, results: list) -> None:
    results.append(result)
    print(f"{result.name}: {result.fault_note}; {result.row()}", flush=True)
    for kind in ("failed", "lost"):
        for ex in result.examples(kind):
            print(f"    {kind}: {ex}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--cases", default=",".join([*(v[0] for v in CASES.values()), *REGISTRY_CASES]))
    p.add_argument("--models-dir", default=None)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--sustain", type=float, default=4.0)
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    wanted = set(a.cases.split(","))
    results: list = []
    expect_no_loss: list = []  # every case but the one whose clients do not resend
    kw = dict(clients=a.clients, warmup_s=a.warmup)

    kills = [(name, v) for name, v in CASES.items() if v[0] in wanted]
    if kills:
        with app(a.models_dir) as url:
            for name, (_, make_fault, resends) in kills:
                wait_healthy()
                result = run_case(name, url, make_fault(), sustain_s=a.sustain, resends=resends, **kw)
                report(result, results)
                if resends:
                    expect_no_loss.append(result)

    if wanted & set(REGISTRY_CASES):
        from guidance.pipeline import default_models_dir
        from mlflow_server import running_mlflow_server
        from mlops.registry import register_models_dir

        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp, contextlib.ExitStack() as server:
            os.environ["SPEECHGUIDE_REGISTRY_CACHE"] = str(Path(tmp) / "registry-cache")  # the replicas inherit it
            uri = server.enter_context(running_mlflow_server(Path(tmp) / "mlflow"))
            register_models_dir(a.models_dir or default_models_dir(), tracking_uri=uri)
            registry = {"tracking_uri": uri, "poll_seconds": POLL_S, "denoiser": "denoiser-unet@production"}
            with app(a.models_dir, registry) as url:
                if "promote-mismatch" in wanted:
                    wait_healthy()
                    fault = promote_mismatched_denoiser(url, uri, tmp)
                    report(run_case("promote denoiser with mismatched features", url, fault, sustain_s=a.sustain, **kw), results)
                    expect_no_loss.append(results[-1])
                if "mlflow-stop" in wanted:
                    wait_healthy()

                    def stop_server() -> str:
                        server.close()
                        return "stopped the MLflow server"

                    report(run_case("stop MLflow server while polled", url, stop_server, sustain_s=a.sustain + 3 * POLL_S, **kw), results)
                    expect_no_loss.append(results[-1])

    print()
    print(format_table(results))
    return 0 if all(r.lost == 0 and r.recovery_s() is not None for r in expect_no_loss) else 1


if __name__ == "__main__":
    sys.exit(main())
