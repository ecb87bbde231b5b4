"""Overload: a burst of four times what the app samples at once, with and without admission by work.

Starts the app from serve/config.yaml (or `--config`) on a local Ray cluster with the committed models and a short
sampling deadline (`args.request_timeout_s`, so that the default run takes minutes, not hours), then:

1. capacity: closed-loop clients (each sends its next request when the previous one is answered) for a
   few rounds; samples/s completed is the capacity, and the ingress's throughput estimate has then been
   measured under load, as on a running service;
2. burst (admission on): 4 x (ingress replicas x max_ongoing_requests) requests at once, no retries;
3. the same burst with `args.admission.enabled: false` (what the app did before admission), unless
   `--no-baseline`.

Printed per burst: goodput (samples/s of successful answers over the burst, first send to last answer)
as a ratio to capacity, answers by kind (200, 503 from admission, 503 from the proxy's queue limit,
503 after sampling ran into the deadline), the median and slowest rejection, and the p99 latency of
admitted requests against the deadline. The issue's case is `--samples 16 --steps 18 --deadline 120
--burst-factor 1.25` (40 requests; tens of minutes on 2 cores).

    OMP_NUM_THREADS=1 .venv/bin/python bench/overload_bench.py [--samples 4] [--steps 10] [--deadline 20]
        [--clients 8] [--rounds 3] [--burst-factor 4] [--no-baseline] [--models-dir DIR] [--config serve/config-ingress.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guidance.pipeline import ModelPaths, default_models_dir  # noqa: E402
from serve.admission import request_work  # noqa: E402

REQUIRED = ("denoiser", "noisy_classifier", "clean_classifier", "vocoder")


@dataclass
class Answer:
    status: int
    seconds: float
    samples: int = 0
    kind: str = ""  # ok | admission | queue | deadline | other
    retry_after: int | None = None
    server_ms: float | None = None  # the ingress's own time for the request (admission 503s: until refused)


@dataclass
class Burst:
    name: str
    answers: list[Answer] = field(default_factory=list)
    wall_s: float = 0.0
    admission: dict | None = None

    def of(self, kind: str) -> list[Answer]:
        return [a for a in self.answers if a.kind == kind]


def payload(i: int, samples: int, steps: int) -> dict:
    return {"targets": [{"guide": "digit", "label": str(i % 10)}], "num_samples": samples, "seed": i, "steps": steps}


def classify(status: int, body: dict | None) -> str:
    if status == 200:
        return "ok"
    if status == 503 and body is not None:
        if "admission" in body:
            return "admission"
        if "sampling took longer" in str(body.get("detail", "")):
            return "deadline"
    if status == 503:  # Ray's backpressure: the ingress's queue is full
        return "queue"
    return "other"


async def send(http, i: int, samples: int, steps: int) -> Answer:
    t0 = time.perf_counter()
    r = await http.post("/v1/generate", json=payload(i, samples, steps))
    seconds = time.perf_counter() - t0
    try:
        body = r.json()
    except ValueError:
        body = None
    kind = classify(r.status_code, body if isinstance(body, dict) else None)
    retry = r.headers.get("retry-after")
    n = len(body["samples"]) if kind == "ok" else 0
    timings = body.get("timings_ms", {}) if isinstance(body, dict) else {}
    server = timings.get("total", timings.get("validate"))
    return Answer(r.status_code, seconds, n, kind, int(retry) if retry and retry.isdigit() else None, server)


def client(url: str):
    import httpx

    return httpx.AsyncClient(base_url=url, timeout=3600, limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))


async def capacity(url: str, clients: int, rounds: int, samples: int, steps: int) -> tuple[float, list[Answer]]:
    """Samples/s at steady closed-loop load: `clients` clients, `rounds` requests each."""
    answers: list[Answer] = []
    counter = iter(range(10**9))

    async def one(http) -> None:
        for _ in range(rounds):
            a = await send(http, next(counter), samples, steps)
            answers.append(a)
            if a.kind != "ok":  # should not happen at this load; honour Retry-After if it does
                await asyncio.sleep(a.retry_after or 1)

    async with client(url) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return sum(a.samples for a in answers) / wall, answers


async def burst(url: str, name: str, n: int, samples: int, steps: int) -> Burst:
    async with client(url) as http:
        t0 = time.perf_counter()
        answers = await asyncio.gather(*(send(http, 1000 + i, samples, steps) for i in range(n)))
        return Burst(name, list(answers), time.perf_counter() - t0)


def ingress_admission() -> dict:
    from ray import serve

    return serve.get_deployment_handle("SpeechIngress", app_name="speechguide").admission_stats.remote().result(timeout_s=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(bursts: list[Burst], cap: float, deadline: float, work: int, samples: int) -> None:
    header = (
        f"{'burst':<26}{'sent':>5}{'200':>5}{'503 adm':>8}{'503 queue':>10}{'503 late':>9}{'wall s':>8}"
        f"{'goodput':>9}{'/ capacity':>11}{'503 s p50':>10}{'slowest':>8}{'p99 200 s':>10}{'/ deadline':>11}"
    )
    print(header)
    print("-" * len(header))
    for b in bursts:
        ok = b.of("ok")
        rejected = [a for a in b.answers if a.status == 503]
        goodput = sum(a.samples for a in ok) / b.wall_s
        p99 = float(np.percentile([a.seconds for a in ok], 99)) if ok else float("nan")
        slowest = max((a.seconds for a in rejected), default=float("nan"))
        median = float(np.median([a.seconds for a in rejected])) if rejected else float("nan")
        print(
            f"{b.name:<26}{len(b.answers):>5}{len(ok):>5}{len(b.of('admission')):>8}{len(b.of('queue')):>10}"
            f"{len(b.of('deadline')):>9}{b.wall_s:>8.1f}{goodput:>9.3f}{goodput / cap:>10.2f}x{median:>10.2f}{slowest:>8.2f}"
            f"{p99:>10.1f}{p99 / deadline:>10.2f}x"
        )
    print()
    print(
        f"goodput: samples/s of 200 answers over the burst's wall time (first send to last answer); capacity {cap:.3f} samples/s "
        f"= {cap * work / samples:.1f} units/s at {work} units per request. '503 adm': refused by admission (Retry-After, no sampling); "
        f"'503 queue': the proxy's queue limit (Ray backpressure); '503 late': sampled until the {deadline:g} s deadline, then thrown away."
    )
    for b in bursts:
        if b.admission:
            a = b.admission
            print(f"ingress after '{b.name}': throughput estimate {a['units_per_s']} units/s (measured: {a['measured']}), "
                  f"admitted {a['admitted']}, refused {a['refused']} (counts since the replica started)")
        inside = [a.server_ms for a in b.of("admission") if a.server_ms is not None]
        if inside:
            print(f"'{b.name}': admission 503s took {np.median(inside):.0f} ms median, {max(inside):.0f} ms at most inside the ingress "
                  "(the rest of their latency is waiting for an ingress slot and the proxy)")
        retry = [a.retry_after for a in b.of("admission") if a.retry_after is not None]
        if retry:
            print(f"'{b.name}': Retry-After of admission 503s: min {min(retry)} s, median {int(np.median(retry))} s, max {max(retry)} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=None, help="default: the committed models/")
    parser.add_argument("--samples", type=int, default=4, help="num_samples of every request")
    parser.add_argument("--steps", type=int, default=10, help="Heun steps of every request (noisy guide, default profile otherwise)")
    parser.add_argument("--deadline", type=float, default=20.0, help="args.request_timeout_s of the app (its default is 120)")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients while measuring capacity")
    parser.add_argument("--rounds", type=int, default=3, help="requests per client while measuring capacity")
    parser.add_argument("--burst-factor", type=float, default=4, help="burst size = this x (ingress replicas x max_ongoing_requests)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the burst with admission disabled")
    parser.add_argument("--config", type=Path, default=None, help="the app's Serve config (default: serve/config.yaml)")
    parser.add_argument(
        "--ingress-max-ongoing", type=int, default=0,
        help="override SpeechIngress max_ongoing_requests (the burst stays sized by the shipped config): above what admission "
        "admits, refusals stop queueing in the proxy behind sampling requests",
    )
    args = parser.parse_args(argv)

    root = (args.models_dir or default_models_dir()).resolve()
    missing = [f for f in REQUIRED if not ModelPaths(root=root).path(f).is_file()]
    if missing:
        parser.error(f"{root} lacks {', '.join(missing)} (the committed models are in models/)")

    from ray import serve

    from serve.config import DEFAULT_CONFIG_PATH
    from serve.launch import connect_ray, deploy, prepare_config

    port = _free_port()
    url = f"http://127.0.0.1:{port}"

    def config(enabled: bool):
        ongoing = {"SpeechIngress": {"max_ongoing_requests": args.ingress_max_ongoing}} if args.ingress_max_ongoing else None
        app_args = {"request_timeout_s": args.deadline, "admission": {"enabled": enabled}}
        return prepare_config(config_path, root, port=port, args=app_args, deployments=ongoing)

    config_path = args.config or DEFAULT_CONFIG_PATH
    shipped = prepare_config(config_path, root, port=port)
    ingress = next(d for d in shipped.applications[0].deployments if d.name == "SpeechIngress")
    at_once = (ingress.num_replicas or 1) * ingress.max_ongoing_requests
    schema = config(True)
    n_burst = max(1, round(args.burst_factor * at_once))
    work = request_work(args.samples, args.steps, "heun")
    print(
        f"config: {config_path}; models: {root}; requests of {args.samples} samples x {args.steps} Heun steps = {work} units; deadline {args.deadline:g} s; "
        f"the app samples {at_once} requests at once (ingress replicas x max_ongoing_requests), burst {n_burst}; cpu cores {os.cpu_count()}"
        + (f"; ingress max_ongoing_requests overridden to {args.ingress_max_ongoing}" if args.ingress_max_ongoing else "")
    )
    connect_ray(num_cpus=os.cpu_count())
    bursts: list[Burst] = []
    try:
        t0 = time.perf_counter()
        deploy(schema, timeout_s=300)
        print(f"deployed in {time.perf_counter() - t0:.0f} s")
        asyncio.run(capacity(url, 2, 1, 1, 2))  # warm-up: catalog, vocoder, first forwards
        # One unmeasured round at the same load first: the ingress's throughput estimate starts from its
        # (deliberately low) prior and refuses part of the load until it has measured a window.
        asyncio.run(capacity(url, args.clients, 1, args.samples, args.steps))
        cap, answers = asyncio.run(capacity(url, args.clients, args.rounds, args.samples, args.steps))
        lat = [a.seconds for a in answers if a.kind == "ok"]
        print(
            f"capacity: {cap:.3f} samples/s with {args.clients} closed-loop clients x {args.rounds} requests "
            f"({sum(a.kind != 'ok' for a in answers)} not 200; latency p50 {np.percentile(lat, 50):.1f} s); "
            f"ingress estimate then {ingress_admission()['units_per_s']} units/s"
        )
        b = asyncio.run(burst(url, "admission on", n_burst, args.samples, args.steps))
        b.admission = ingress_admission()
        bursts.append(b)
        if not args.no_baseline:
            deploy(config(False), timeout_s=300)
            deadline = time.monotonic() + 120
            while ingress_admission()["enabled"] and time.monotonic() < deadline:
                time.sleep(0.5)
            asyncio.run(capacity(url, 2, 1, 1, 2))  # the new ingress replica's warm-up
            b = asyncio.run(burst(url, "admission off (before)", n_burst, args.samples, args.steps))
            bursts.append(b)
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
    print()
    report(bursts, cap, args.deadline, work, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
