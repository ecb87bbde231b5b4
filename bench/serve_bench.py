"""Closed-loop load on four ways of serving the same requests, measured in one run.

(a) in-process: `guidance.pipeline.sample_mels` on the batch of the c requests in flight (the
    best a single process can do: one forward per step for all of them), then vocode and score;
(b) Serve, split topology with step batching: the app from serve/config.yaml, c clients over HTTP;
(c) Serve, per-request unbatched: the same app after `reconfigure` to max_batch_size=1;
(e) Serve, co-located: serve/config-colocated.yaml, the same models in one ModelHost deployment of two
    replicas, each computing whole rounds (denoiser and guides) of one of two cohorts, step-batched and per
    request (no merging, max_batch_size=1, as (c));
(d) the single-backbone generator (ScoreSubnet, guided): Serve's fused app (serve/config-fused.yaml,
    one call per step) against its own in-process counterpart (the guided denoiser with the single-backbone provider on the batch
    of the c requests in flight), so the fused ratio compares like with like;
(f) Serve, models in the ingress: serve/config-ingress.yaml (args.colocate: ingress), no model deployments, each
    of two 1-core ingress replicas computing the merged steps of its requests; batched, per request, and with the
    fused generator (args.generator: score-subnet) against (d)'s in-process counterpart; and as ONE replica of
    two torch threads ("1x2", only when `--only` names it), batched and per request: every core in one forward,
    as in (a), where a batch saves more per row than on one thread.

The in-process baseline gets every core (`--threads`, default all); a second in-process row held to one
thread is printed for reference, and a third runs the layout Serve's model replicas have without Ray: one
one-thread process per baseline thread, each sampling its share of the clients (the room Serve's own
overheads have: a Serve system can at best match it). For each Serve system a breakdown says where each millisecond of a
step goes (model compute, ingress step arithmetic, handle calls/serialisation/queueing) and what a
request costs around its sampling (scores, vocoding, HTTP), from the app's own per-request timings and
the model replicas' busy time in the same run.

Same models, steps, seeds and targets everywhere (request i: digit i % 10, seed i, one sample).
Printed per system and concurrency: throughput (samples/s), p50/p99 end-to-end latency, the
sampling part alone (server-side timing for Serve), per-step time and the per-step overhead
over in-process sampling at the same concurrency, plus the ratios between the systems.

    .venv/bin/python bench/serve_bench.py [--models-dir DIR] [--steps 10] [--concurrency 1,4,16] [--no-fused] [--repeats 3] [--cpu-by-process]
        [--only 'serve in-ingress,serve fused in-ingress'] [--no-colocated] [--no-in-ingress]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guidance.guides import DEFAULT_PROFILES  # noqa: E402
from guidance.pipeline import ModelPaths, ModelSet, default_models_dir, make_noise, sample_mels, vocode  # noqa: E402

REQUIRED = ("denoiser", "noisy_classifier", "clean_classifier")
# The in-ingress layout as one replica of two torch threads (every core in one forward, as the in-process baseline),
# against two replicas of one thread: where the parallelism comes from decides what a batch can save.
ONE_TWO_THREAD = ("serve in-ingress 1x2", "serve in-ingress 1x2 unbatched")
# Each system's per-step overhead is measured against the in-process sampler of the same generator.
BASELINE = {
    "serve batched": "in-process batched", "serve unbatched": "in-process batched", "serve fused": "in-process fused",
    "serve colocated": "in-process batched", "serve colocated unbatched": "in-process batched",
    "serve in-ingress": "in-process batched", "serve in-ingress unbatched": "in-process batched",
    **{name: "in-process batched" for name in ONE_TWO_THREAD},
    "serve fused in-ingress": "in-process fused",
}
ONE_THREAD = "in-process batched, 1 thread"
MODEL_DEPLOYMENTS = {
    "serve batched": ("Denoiser", "Classifier"), "serve unbatched": ("Denoiser", "Classifier"),
    "serve colocated": ("ModelHost",), "serve colocated unbatched": ("ModelHost",), "serve fused": ("Fused",),
    "serve in-ingress": (), "serve in-ingress unbatched": (), "serve fused in-ingress": (),  # the ingress replicas compute
    **{name: () for name in ONE_TWO_THREAD},
}
# The model replicas' layout without Ray: one 1-thread process per core, each sampling its share of the clients.
PROCESSES = "in-process, 1-thread processes"


@dataclass
class Run:
    system: str
    concurrency: int
    steps: int
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    sampling_ms: list[float] = field(default_factory=list)
    items_per_forward: float | None = None  # denoiser
    guide_items_per_forward: float | None = None
    denoiser_busy: float | None = None  # fraction of the wall time the denoiser replica computed
    guide_busy: float | None = None  # fraction of the wall time the classifier replica computed
    timings: list[dict] = field(default_factory=list)  # the app's timings_ms of each request
    guide_kind: str = "noisy"

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.wall_s

    def pct(self, values: list[float], q: float) -> float:
        return float(np.percentile(values, q))


def tiny_models(directory: Path) -> Path:
    """Random tiny models in the models/ layout, for machines without trained ones."""
    from guidance.data import DIGITS
    from guidance.diffusion import EDMPrecond
    from guidance.features import FeatureSpec
    from guidance.models import ClassifierConfig, LogMelClassifier, UNet, UNetConfig, save_model
    from guidance.models.checkpoint import config_dict

    torch.manual_seed(0)
    spec = FeatureSpec()
    unet = UNetConfig(channels=(8, 16), emb_dim=16)
    save_model(directory / "denoiser-unet.safetensors", EDMPrecond(UNet(unet)), "denoiser-unet", {**config_dict(unet), "sigma_data": 1.0}, spec)
    for name, noisy in (("classifier-noisy", True), ("classifier-clean", False)):
        cfg = ClassifierConfig(channels=(8, 16), emb_dim=16, noise_conditioned=noisy)
        save_model(directory / f"{name}.safetensors", LogMelClassifier(cfg), "classifier", config_dict(cfg), spec, DIGITS, "digit")
    from guidance.models.score_subnet import ScoreSubnetConfig, SingleBackboneModel

    sub = SingleBackboneModel.from_backbone_file(directory / "classifier-noisy.safetensors", ScoreSubnetConfig(feature_channels=(8, 16), channels=(8, 16), emb_dim=16))
    save_model(directory / "score-subnet-all.safetensors", sub, "score-subnet", sub.network_config(), spec, DIGITS, "digit")
    return directory


def request(i: int, steps: int, kind: str) -> dict:
    return {"targets": [{"guide": "digit", "label": str(i % 10)}], "num_samples": 1, "seed": i, "steps": steps, "guide_kind": kind}


def bench_in_process(models: ModelSet, n: int, c: int, steps: int, kind: str, name: str = "in-process batched", first: int = 0) -> Run:
    """c clients in one process: the c requests in flight are sampled as one batch (requests first .. first + n - 1)."""
    profile = DEFAULT_PROFILES[kind].with_sampler(steps=steps)
    digit = models.guides[kind]
    run = Run(name, c, steps)
    t_start = time.perf_counter()
    for start in range(first, first + n, c):
        ids = list(range(start, min(start + c, first + n)))
        t0 = time.perf_counter()
        labels = torch.tensor([i % 10 for i in ids])
        noise = torch.cat([make_noise(1, models.spec, i) for i in ids])
        mels = sample_mels(models, kind, labels, profile, noise, seed=ids[0])
        t1 = time.perf_counter()
        vocode(mels, models.vocoder)
        digit.probabilities(mels.to(models.device))
        t2 = time.perf_counter()
        run.latencies_ms += [(t2 - t0) * 1e3] * len(ids)
        run.sampling_ms += [(t1 - t0) * 1e3] * len(ids)
    run.wall_s = time.perf_counter() - t_start
    return run


def _process_share(root: str, device: str, n: int, c: int, first: int, steps: int, kind: str, barrier, results) -> None:
    """One of `bench_in_processes`' processes: one torch thread, its share of the requests, started with the others."""
    torch.set_num_threads(1)
    models = ModelSet.load(ModelPaths(root=Path(root)), device)
    bench_in_process(models, 1, 1, 2, kind)  # warm-up, outside the timing
    barrier.wait()
    run = bench_in_process(models, n, c, steps, kind, PROCESSES, first)
    results.put((run.wall_s, run.latencies_ms, run.sampling_ms))


def bench_in_processes(root: Path, device: str, processes: int, n: int, c: int, steps: int, kind: str) -> Run:
    """The model replicas' layout without Ray: `processes` one-thread processes, each sampling its share of the
    n requests with its share of the c clients, all started together; the throughput is n over the slowest."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    shares = [n // processes + (k < n % processes) for k in range(processes)]
    starts = [sum(shares[:k]) for k in range(processes)]
    workers = [
        ctx.Process(target=_process_share, args=(str(root), device, share, max(1, c // processes), first, steps, kind, barrier, results))
        for share, first in zip(shares, starts)
    ]
    for w in workers:
        w.start()
    got = [results.get(timeout=1800) for _ in workers]
    for w in workers:
        w.join()
    run = Run(PROCESSES, c, steps, wall_s=max(wall for wall, _, _ in got))
    for _, latencies, sampling in got:
        run.latencies_ms += latencies
        run.sampling_ms += sampling
    return run


async def bench_serve(url: str, name: str, n: int, c: int, steps: int, kind: str) -> Run:
    """c closed-loop HTTP clients: each sends its next request when the previous one is answered."""
    import httpx

    run = Run(name, c, steps, guide_kind=kind)
    queue = list(range(n))

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            i = queue.pop(0)
            t0 = time.perf_counter()
            r = await http.post("/v1/generate", json=request(i, steps, kind))
            if r.status_code != 200:
                raise RuntimeError(f"request {i} failed: {r.status_code} {r.text[:300]}")
            run.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            timings = r.json()["timings_ms"]
            run.sampling_ms.append(timings["sampling"])
            run.timings.append({**timings, "client": run.latencies_ms[-1]})

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        t_start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(c)))
        run.wall_s = time.perf_counter() - t_start
    return run


def forward_cost_per_row(models: ModelSet, subnet: ModelSet | None, sizes: tuple[int, ...] = (1, 16), reps: int = 3) -> None:
    """ms per row of one model call at batch 1 and 16: how much a merged batch can save at all.

    Step batching only pays where a row costs less in a bigger batch; where the cost per row is flat
    (compute-bound on one thread), no batcher can beat the per-request loop by much.
    """
    from guidance.guides import GuideSettings, GuideTerm, guide_gradient
    from guidance.pipeline import guided_denoiser

    def timed(fn) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps * 1e3

    parts = []
    for b in sizes:
        x = torch.randn(b, 1, models.spec.n_mels, models.spec.frames)
        sigma = torch.full((b,), 2.0)
        target = torch.zeros(b, dtype=torch.long)
        term = GuideTerm(models.guides["noisy"], target, GuideSettings(scale=3.0))
        cost = {}
        with torch.no_grad():
            cost["U-Net D"] = timed(lambda: models.denoiser.model(x, sigma))
            cost["noisy guide grad"] = timed(lambda: guide_gradient(term, x, sigma, x))
            if subnet is not None:
                fused = guided_denoiser(subnet, "noisy", target, DEFAULT_PROFILES["noisy"])
                cost["fused guided step"] = timed(lambda: fused(x, sigma))
        parts.append(f"batch {b:>2}: " + ", ".join(f"{k} {v / b:.1f}" for k, v in cost.items()))
    print(f"forward cost, ms per row (in-process, {torch.get_num_threads()} torch threads): " + "; ".join(parts))


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) each process on this machine has used so far, by pid."""
    import psutil

    out = {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            t = proc.cpu_times()
            out[proc.pid] = (" ".join(proc.info["cmdline"] or [proc.info["name"] or "?"])[:80], t.user + t.system)
        except (psutil.Error, OSError):
            continue
    return out


def print_cpu_use(name: str, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], wall_s: float) -> None:
    """Where the machine's CPU went during one run: the replicas' compute against Ray's own processes."""
    used = sorted(((cpu - before.get(pid, ("", 0.0))[1], label) for pid, (label, cpu) in after.items()), reverse=True)
    cores = os.cpu_count() or 1
    print(f"CPU by process, {name}: {sum(u for u, _ in used):.2f} of {cores * wall_s:.2f} core-s ({cores} cores x {wall_s:.2f} s wall)")
    for u, label in used[:10]:
        print(f"  {u:7.2f}  {label}")


def _handle_stats(name: str, reset: bool = False) -> dict:
    """A model deployment's forward counters."""
    from ray import serve

    handle = serve.get_deployment_handle(name, app_name="speechguide")
    return (handle.reset_stats if reset else handle.stats).remote().result(timeout_s=60)


def _replica_counts(deployments: tuple[str, ...]) -> dict[str, int]:
    """Running replicas of each model deployment of the app."""
    from ray import serve

    app = serve.status().applications["speechguide"]
    return {d: app.deployments[d].replica_states.get("RUNNING", 0) for d in deployments}


def breakdown(runs: list[Run], steps: int) -> None:
    """Where a Serve step's milliseconds go, and what a request costs around its sampling (medians).

    Per step (wall time of one step of a request): the model replicas computing (their busy share of the
    run's wall time, times the step), the ingress's own step arithmetic (sampling time not spent waiting
    on a model call), and the rest of the wait: handle calls, serialisation and queueing, i.e. the wait
    beyond the compute on the step's critical path (the denoiser and a guide reading x_t run side by side
    in the split app, so the longer of the two; x0_hat guides run after the denoiser, so their sum). Per
    request: validation, scores, vocoding and what the client saw beyond the app's total (HTTP, JSON,
    proxy)."""
    serve_runs = [r for r in runs if r.timings]
    if not serve_runs:
        return
    med = lambda r, key: float(np.median([t[key] for t in r.timings]))  # noqa: E731
    header = f"{'system':<22}{'conc':>5}{'step ms':>9}{'D comp':>8}{'C comp':>8}{'ingress':>9}{'handles+q':>10}  |{'valid':>7}{'scores':>8}{'vocode':>8}{'http':>7}"
    print("\nwhere the time goes (ms, medians): per step | per request outside sampling")
    print(header)
    print("-" * len(header))
    for r in serve_runs:
        side_by_side = r.system in ("serve batched", "serve unbatched") and r.guide_kind == "noisy"
        step = med(r, "per_step")
        wait = med(r, "waiting_on_deployments") / steps
        # None: the deployment ran several replicas, whose counters one handle call cannot gather
        d = r.denoiser_busy * step if r.denoiser_busy is not None else None
        c = r.guide_busy * step if r.guide_busy is not None else (0.0 if r.system == "serve fused" else None)
        rest = max(wait - (max(d, c) if side_by_side else d + c), 0.0) if d is not None and c is not None else None
        ms = lambda v, width: f"{'-':>{width}}" if v is None else f"{v:>{width}.1f}"  # noqa: E731
        http = float(np.median([t["client"] - t["total"] for t in r.timings]))
        print(
            f"{r.system:<22}{r.concurrency:>5}{step:>9.1f}{ms(d, 8)}{ms(c, 8)}{step - wait:>9.1f}{ms(rest, 10)}  |"
            f"{med(r, 'validate'):>7.1f}{med(r, 'scores'):>8.1f}{med(r, 'vocode'):>8.1f}{http:>7.1f}"
        )


def report(runs: list[Run], steps: int, rounds: list[list[Run]]) -> None:
    by = {(r.system, r.concurrency): r for r in runs}
    header = (
        f"{'system':<28}{'conc':>5}{'n':>4}{'samples/s':>11}{'p50 ms':>10}{'p99 ms':>10}"
        f"{'samp p50':>10}{'ms/step':>9}{'ovh ms/step':>13}{'D req/fwd':>10}{'C req/fwd':>10}{'D busy':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        samp = r.pct(r.sampling_ms, 50)
        base = by.get((BASELINE.get(r.system, ""), r.concurrency))
        overhead = (samp - base.pct(base.sampling_ms, 50)) / steps if base else float("nan")
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(
            f"{r.system:<28}{r.concurrency:>5}{len(r.latencies_ms):>4}{r.throughput:>11.3f}{r.pct(r.latencies_ms, 50):>10.0f}"
            f"{r.pct(r.latencies_ms, 99):>10.0f}{samp:>10.0f}{samp / steps:>9.1f}{overhead:>13.1f}"
            f"{fmt(r.items_per_forward, '.2f'):>10}{fmt(r.guide_items_per_forward, '.2f'):>10}{fmt(r.denoiser_busy, '.0%'):>8}"
        )
    print()
    print("ratios (throughput)" + (f", the median of {len(rounds)} rounds' ratios, each round's systems run back to back [every round's ratio]:" if len(rounds) > 1 else ":"))
    pairs = [
        ("serve batched / unbatched", "serve batched", "serve unbatched"),
        ("serve batched / in-process", "serve batched", "in-process batched"),
        ("serve batched / in-process 1-thread processes", "serve batched", PROCESSES),
        ("in-process 1-thread processes / in-process", PROCESSES, "in-process batched"),
        ("serve unbatched / in-process", "serve unbatched", "in-process batched"),
        ("serve colocated / in-process", "serve colocated", "in-process batched"),
        ("serve colocated / colocated unbatched", "serve colocated", "serve colocated unbatched"),
        ("serve colocated / serve batched (split)", "serve colocated", "serve batched"),
        ("serve in-ingress / in-process", "serve in-ingress", "in-process batched"),
        ("serve in-ingress / in-ingress unbatched", "serve in-ingress", "serve in-ingress unbatched"),
        ("serve in-ingress / serve batched (split)", "serve in-ingress", "serve batched"),
        ("serve in-ingress 1x2 / in-process", "serve in-ingress 1x2", "in-process batched"),
        ("serve in-ingress 1x2 / in-ingress 1x2 unbatched", "serve in-ingress 1x2", "serve in-ingress 1x2 unbatched"),
        ("serve fused / in-process fused", "serve fused", "in-process fused"),
        ("serve fused in-ingress / in-process fused", "serve fused in-ingress", "in-process fused"),
        ("serve fused / serve batched (split)", "serve fused", "serve batched"),
    ]
    for c in sorted({r.concurrency for r in runs}):
        parts = []
        for label, top, bottom in pairs:
            ratios = []
            for round_runs in rounds:
                got = {r.system: r for r in round_runs if r.concurrency == c}
                if top in got and bottom in got:
                    ratios.append(got[top].throughput / got[bottom].throughput)
            if ratios:
                spread = f" [{', '.join(f'{v:.2f}' for v in ratios)}]" if len(ratios) > 1 else ""
                parts.append(f"{label} = {float(np.median(ratios)):.2f}x{spread}")
        print(f"  concurrency {c:>2}: " + "; ".join(parts))


def in_process_round(args: argparse.Namespace, root: Path, models: ModelSet, subnet: ModelSet | None, levels: list[int], count) -> list[Run]:
    """(a) with every core, (a) held to one thread, (a) as one-thread processes (on CPU: one per baseline thread, at
    levels with at least as many clients) and (d)'s in-process counterpart, each level once (no Ray running)."""
    runs = [bench_in_process(models, count(c), c, args.steps, args.guide_kind) for c in levels]
    if args.threads != 1:
        torch.set_num_threads(1)
        runs += [bench_in_process(models, count(c), c, args.steps, args.guide_kind, ONE_THREAD) for c in levels]
        torch.set_num_threads(args.threads)
        if args.device == "cpu":  # as many one-thread processes as the baseline has threads: the replicas' layout, no Ray
            runs += [bench_in_processes(root, args.device, args.threads, count(c), c, args.steps, args.guide_kind) for c in levels if c >= args.threads]
    if subnet is not None:  # (d) in-process: single-backbone provider (guided with its own backbone, the noisy profile)
        runs += [bench_in_process(subnet, count(c), c, args.steps, "noisy", "in-process fused") for c in levels]
    return runs


def bracket(before: list[Run], after: list[Run]) -> list[Run]:
    """Each in-process system's two runs of a round as one: every request of both over both wall times."""
    out = []
    for a, b in zip(before, after):
        assert (a.system, a.concurrency) == (b.system, b.concurrency)
        out.append(Run(a.system, a.concurrency, a.steps, a.wall_s + b.wall_s, a.latencies_ms + b.latencies_ms, a.sampling_ms + b.sampling_ms))
    return out


def serve_round(args: argparse.Namespace, root: Path, levels: list[int], count, fused: bool, rotate: int = 0) -> list[Run]:
    """(b), (c), (e) and (d) over HTTP on a private local Ray cluster, started and stopped within the round so
    its processes do not run beside the in-process systems. Round k starts k systems further down the list,
    so no system always runs first or last while the machine's speed drifts."""
    from ray import serve

    from serve.config import COLOCATED_CONFIG_PATH, DEFAULT_CONFIG_PATH, FUSED_CONFIG_PATH, INGRESS_HOSTED_CONFIG_PATH
    from serve.launch import connect_ray, deploy, free_port, prepare_config

    runs: list[Run] = []
    connect_ray(num_cpus=os.cpu_count())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        threads = {"torch_threads": args.replica_threads} if args.replica_threads else {}
        per_request = {"step_merging": {"enabled": False}}  # (c): no merging anywhere, one call per request and step
        systems = [
            ("serve batched", DEFAULT_CONFIG_PATH, threads, None),
            ("serve unbatched", DEFAULT_CONFIG_PATH, {**threads, "max_batch_size": 1}, per_request),
        ]
        if not args.no_colocated:  # the same models in one ModelHost deployment, batched and per request
            systems += [
                ("serve colocated", COLOCATED_CONFIG_PATH, threads, None),
                ("serve colocated unbatched", COLOCATED_CONFIG_PATH, {**threads, "max_batch_size": 1}, per_request),
            ]
        if not args.no_in_ingress:  # no model deployments: each ingress replica hosts the models (args.colocate: ingress)
            systems += [
                ("serve in-ingress", INGRESS_HOSTED_CONFIG_PATH, None, {"tuning": threads} if threads else None),
                ("serve in-ingress unbatched", INGRESS_HOSTED_CONFIG_PATH, None, {**per_request, "tuning": {**threads, "max_batch_size": 1}}),
            ]
            if args.only and set(ONE_TWO_THREAD) & set(args.only):  # only when named: a layout study
                one_replica = {"SpeechIngress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 2, "num_gpus": args.gpus_per_replica}}}
                systems += [  # one replica of two threads, one cohort (two cohorts on it: 0.57-0.80x in-process, Dec 7)
                    (ONE_TWO_THREAD[0], INGRESS_HOSTED_CONFIG_PATH, None, {"step_merging": {"cohorts": 1}, "tuning": {"torch_threads": 2}}, one_replica),
                    (ONE_TWO_THREAD[1], INGRESS_HOSTED_CONFIG_PATH, None, {**per_request, "tuning": {"torch_threads": 2, "max_batch_size": 1}}, one_replica),
                ]
        if fused:
            systems.append(("serve fused", FUSED_CONFIG_PATH, threads, None))
            if not args.no_in_ingress:  # the ScoreSubnet generator hosted by the ingress replicas
                systems.append(("serve fused in-ingress", INGRESS_HOSTED_CONFIG_PATH, None, {"generator": "score-subnet", **({"tuning": threads} if threads else {})}))
        if args.only:
            systems = [s for s in systems if s[0] in args.only]
        shift = rotate % len(systems)
        systems = systems[shift:] + systems[:shift]
        gpu = args.gpus_per_replica
        deployed = None
        for name, config_path, tuning, app_args, *layout in systems:
            layout = layout[0] if layout else None  # replicas other than the file's
            if deployed not in (None, (config_path, layout)):
                # one app's deployments at a time on one machine (same file and layout: reconfigured; a new layout's
                # replicas would wait for the CPUs the old ones hold)
                serve.delete("speechguide")
            deployed = (config_path, layout)
            # the replicas that compute get the GPU share (device null lets them use it): the model deployments,
            # or the ingress where it hosts the models (one core per replica, as in its config)
            computing = {d: 0.5 for d in MODEL_DEPLOYMENTS[name]} or {"SpeechIngress": 1}
            on_gpu = {d: {"ray_actor_options": {"num_cpus": cpus, "num_gpus": gpu}} for d, cpus in computing.items()} if gpu else None
            deploy(prepare_config(config_path, root, port=port, user_config=tuning or None, args=app_args, deployments=layout or on_gpu), timeout_s=300)
            kind = "noisy" if name.startswith("serve fused") else args.guide_kind
            model_deps = MODEL_DEPLOYMENTS[name]
            asyncio.run(bench_serve(url, "warm-up", 8, 4, 2, kind))  # every replica (two per app here) loads its lazy parts

            def one_run(c: int) -> Run:
                for d in model_deps:
                    _handle_stats(d, reset=True)
                before = _cpu_by_process() if args.cpu_by_process else {}
                run = asyncio.run(bench_serve(url, name, count(c), c, args.steps, kind))
                stats = {d: _handle_stats(d) for d in model_deps}
                if args.cpu_by_process:
                    print_cpu_use(f"{name}, c = {c}", before, _cpu_by_process(), run.wall_s)
                    for d, st in stats.items():  # compute thread's CPU against its wall time: contention shows as the gap
                        print(f"  {d} (one replica): forward wall {st['busy_s']:.2f} s, compute thread CPU {st['cpu_s']:.2f} s, replica process CPU {st['process_cpu_s']:.2f} s")
                replicas = _replica_counts(model_deps)
                den = stats[model_deps[0]] if model_deps else None
                if den is not None and replicas[model_deps[0]] == 1:  # one replica's counters describe the deployment only when it is the only one
                    run.items_per_forward = den["mean_items_per_batch"]
                    run.denoiser_busy = den["busy_s"] / run.wall_s
                if len(model_deps) > 1 and replicas[model_deps[1]] == 1:
                    guide = stats[model_deps[1]]
                    run.guide_items_per_forward = guide["mean_items_per_batch"]
                    run.guide_busy = guide["busy_s"] / run.wall_s
                return run

            runs += [one_run(c) for c in levels]
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
    return runs


def median_runs(rounds: list[list[Run]]) -> list[Run]:
    """Per system and level, the run of median throughput across the rounds (in the first round's order)."""
    out = []
    for first in rounds[0]:
        same = sorted((r for runs in rounds for r in runs if (r.system, r.concurrency) == (first.system, first.concurrency)), key=lambda r: r.throughput)
        out.append(same[len(same) // 2])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=None, help="default: models/ when complete, else tiny random models")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default: max(4, 2 x concurrency))")
    parser.add_argument("--guide-kind", choices=("noisy", "clean"), default="noisy")
    parser.add_argument("--no-fused", action="store_true", help="skip (d), the fused single-backbone app and its in-process counterpart")
    parser.add_argument("--no-colocated", action="store_true", help="skip (e), the split models co-located in one ModelHost deployment")
    parser.add_argument(
        "--only", type=lambda v: [x.strip() for x in v.split(",") if x.strip()], default=None,
        help="run only these Serve systems (comma-separated names as printed, e.g. 'serve in-ingress,serve fused in-ingress'); "
        "'serve in-ingress 1x2' and 'serve in-ingress 1x2 unbatched' (one 2-thread ingress replica) run only when named here",
    )
    parser.add_argument("--no-in-ingress", action="store_true", help="skip (f), the models hosted by the ingress replicas (no model deployments)")
    parser.add_argument(
        "--no-bracket", dest="bracket", action="store_false",
        help="run the in-process systems only before the Serve systems in each round (default: before and after, taken together)",
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(),
        help="torch threads of the in-process baseline (default: every core, as a user running one process would); "
        "a one-thread in-process row is printed beside it",
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda: where the in-process baseline runs")
    parser.add_argument(
        "--gpus-per-replica", type=float, default=0.0,
        help="num_gpus of each model replica; e.g. 0.5 packs two replicas on one GPU",
    )
    parser.add_argument(
        "--repeats", type=int, default=1,
        help="rounds; each runs every system once, back to back (the machine's speed drifts over minutes), and its ratios are "
        "taken within the round; the median round ratio and the median-throughput run per system are reported",
    )
    parser.add_argument(
        "--replica-threads", type=int, default=0,
        help="torch threads of every model replica, batched and unbatched alike (default: the config's, 1 per replica)",
    )
    parser.add_argument(
        "--cpu-by-process", action="store_true",
        help="after each Serve run print the CPU seconds each process used (replicas, ingress, Ray's own) and the replicas' compute-thread CPU",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    levels = [int(v) for v in args.concurrency.split(",")]

    root = args.models_dir or default_models_dir()
    tmp = None
    if not all(ModelPaths(root=root).path(f).is_file() for f in REQUIRED):
        if args.models_dir:
            parser.error(f"{root} lacks one of the models the app loads")
        tmp = tempfile.TemporaryDirectory(prefix="serve-bench-")
        root = tiny_models(Path(tmp.name))
        print(f"models: tiny random models ({root}); {default_models_dir()} is incomplete")
    else:
        print(f"models: {root.resolve()}")
    models = ModelSet.load(ModelPaths(root=root), args.device)
    count = lambda c: args.requests or max(4, 2 * c)  # noqa: E731
    print(
        f"steps={args.steps} (heun), guide={args.guide_kind}, concurrency={levels}, cpu cores={os.cpu_count()}, "
        f"in-process torch threads={torch.get_num_threads()}, device={args.device}, gpus per replica={args.gpus_per_replica:g}, "
        f"rounds={args.repeats} (medians)"
    )
    fused = not args.no_fused and ModelPaths(root=root).path("score_subnet").is_file()
    if not fused and not args.no_fused:
        print(f"(d) skipped: {ModelPaths(root=root).path('score_subnet')} not found")
    subnet = ModelSet.from_score_subnet(ModelPaths(root=root).path("score_subnet"), args.device) if fused else None
    sample_mels(models, args.guide_kind, torch.tensor([0]), DEFAULT_PROFILES[args.guide_kind].with_sampler(steps=2), make_noise(1, models.spec, 0))
    if subnet is not None:
        sample_mels(subnet, "noisy", torch.tensor([0]), DEFAULT_PROFILES["noisy"].with_sampler(steps=2), make_noise(1, subnet.spec, 0))
    forward_cost_per_row(models, subnet)
    if args.device == "cpu" and torch.get_num_threads() != 1:  # what a 1-thread replica gains from batching at all
        torch.set_num_threads(1)
        forward_cost_per_row(models, subnet)
        torch.set_num_threads(args.threads)

    rounds: list[list[Run]] = []
    for k in range(max(1, args.repeats)):
        if args.repeats > 1:
            print(f"round {k + 1} of {args.repeats}", flush=True)
        before = in_process_round(args, root, models, subnet, levels, count)
        served = serve_round(args, root, levels, count, fused, rotate=k)
        # The machine's speed drifts over minutes: the in-process systems run before and after the Serve systems,
        # and their throughput is taken over both runs together (a linear drift cancels).
        runs = bracket(before, in_process_round(args, root, models, subnet, levels, count)) if args.bracket else before
        rounds.append(runs + served)
    if tmp is not None:
        tmp.cleanup()
    runs = median_runs(rounds)
    print()
    report(runs, args.steps, rounds)
    breakdown(runs, args.steps)
    print(
        "\nmeasured end to end (sampling + scores + vocoding with the app's vocoder); 'samp p50' is the sampling part alone "
        "(server-side for Serve), 'ovh ms/step' its excess over in-process sampling of the same generator at the same concurrency, "
        "'D/C req/fwd' the mean requests merged per denoiser (fused: Fused) / classifier forward, "
        "'D busy' that replica's compute share of the wall time. (d): ScoreSubnet guided with its own backbone, noisy profile."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
