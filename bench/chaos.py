"""Chaos matrix: faults injected into the running Serve app under a steady closed-loop load.

Starts the app from serve/config.yaml on a small local Ray cluster (committed models unless
--models-dir), then for each case runs a few closed-loop clients (1 sample x 4 steps each request),
injects the fault mid-load and prints: requests answered 200, failed with a clear error (HTTP status
with a JSON `detail`), lost (no answer, dropped connection, client timeout, or an error without a
JSON detail), and the time from the fault until full service is back (the first 200 followed only by
200s). See serve/chaos.py for the definitions.

    OMP_NUM_THREADS=1 .venv/bin/python bench/chaos.py [--clients 3] [--cases denoiser,classifier,ingress]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serve.client import RESENDS  # noqa: E402
from serve.chaos import format_table, kill_replica, run_case, wait_healthy  # noqa: E402

# name: (key for --cases, fault, resends by the clients; 0 = raw HTTP, what a client without resending sees)
CASES = {
    "kill Denoiser replica": ("denoiser", lambda: kill_replica("Denoiser"), RESENDS),
    "kill Classifier replica": ("classifier", lambda: kill_replica("Classifier"), RESENDS),
    "kill SpeechIngress replica": ("ingress", lambda: kill_replica("SpeechIngress"), RESENDS),
    "kill SpeechIngress replica, clients without resend": ("ingress-raw", lambda: kill_replica("SpeechIngress"), 0),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--cases", default="denoiser,classifier,ingress,ingress-raw")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--sustain", type=float, default=4.0)
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import ray
    from ray import serve

    from serve.config import DEFAULT_CONFIG_PATH
    from serve.launch import deploy, prepare_config

    wanted = set(a.cases.split(","))
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="serve", log_to_driver=False)
    results = []
    try:
        port = free_port()
        deploy(prepare_config(DEFAULT_CONFIG_PATH, models_dir=a.models_dir, port=port), timeout_s=300)
        url = f"http://127.0.0.1:{port}"
        for name, (key, make_fault, resends) in CASES.items():
            if key not in wanted:
                continue
            wait_healthy()
            result = run_case(name, url, make_fault(), clients=a.clients, warmup_s=a.warmup, sustain_s=a.sustain, resends=resends)
            results.append(result)
            print(f"{name}: {result.fault_note}; {result.row()}", flush=True)
            for kind in ("failed", "lost"):
                for ex in result.examples(kind):
                    print(f"    {kind}: {ex}", flush=True)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    print()
    print(format_table(results))
    resending = [r for r, (_, _, resends) in zip(results, (v for k, v in CASES.items() if v[0] in wanted)) if resends]
    return 0 if all(r.lost == 0 and r.recovery_s() is not None for r in resending) else 1


if __name__ == "__main__":
    sys.exit(main())
