"""The model deployments: the denoiser D(x, sigma), the classifier guides and the fused single-backbone
generator, each step-batched.

Each replica loads its weights once (safetensors through `guidance.models.load_model`, never
pickles) and answers per-step calls from the sampler ingress. `@serve.batch` merges the calls
that concurrent requests make at about the same time, each with its own sigma, class and guide
settings; `_Coalescer` then merges every batch that waited while the previous forward ran, so
under load one forward serves the whole backlog. The forward itself runs in a worker thread so
the replica's event loop keeps accepting calls while torch computes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from ray import serve

from guidance.device import pick_device
from guidance.features import FeatureSpec
from guidance.files import file_sha256
from guidance.guides import ClassifierGuide
from guidance.models import ModelFile, load_model, read_metadata
from guidance.models.score_subnet import resolve_backbone
from guidance.pipeline import ModelPaths
from serve.config import DeploymentTuning
from serve.metrics import forward_metrics
from serve.routing import ROUTER_PATH
from serve.steps import GuideCall, GuideResult, HostAnswer, HostRound, denoise_batch, from_wire, guide_batch, host_round_batch, to_wire

log = logging.getLogger("ray.serve")

# Shared by both model deployments: the defaults below and `DeploymentTuning`'s must agree.
_TUNING = DeploymentTuning()
_MODEL_DEPLOYMENT = dict(
    max_ongoing_requests=256,  # >= max_batch_size x _CONCURRENT_BATCHES: every waiting call reaches the coalescer
    max_queued_requests=256,
    health_check_period_s=10.0,
    health_check_timeout_s=30.0,
    request_router_config={"request_router_class": ROUTER_PATH},
    ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},
)


def file_version(path: Path) -> str:
    """Content hash of a model file: what a response reports as the model's version."""
    return file_sha256(path)[:12]


# Registered models a replica keeps loaded (least recently used ones are dropped).
MAX_REGISTRY_GUIDES_PER_REPLICA = 4
MAX_REGISTRY_DENOISERS_PER_REPLICA = 2

# How many arrival batches `@serve.batch` may hand over at once; the coalescer merges them. Arrivals
# spread over a forward's duration form batches of one or two calls, so with 4 here the coalescer saw
# at most ~4-6 of 16 concurrent requests' calls (measured: 4.4 requests per forward at concurrency 16);
# 16 lets every waiting call through. max_batch_size * this must stay within max_ongoing_requests
# (Serve warns otherwise).
_CONCURRENT_BATCHES = 16


class _Coalescer:
    """Runs one forward at a time over everything that is waiting when the previous one ends.

    `@serve.batch` forms a batch from the calls that arrive within its wait window and hands it
    over right away, even when the previous forward is still running; under load that yields a
    queue of one-call batches. Here the calls of every batch handed over meanwhile are merged
    (up to `max_items`), so the batch size follows the backlog, not the arrival pattern.
    """

    def __init__(
        self,
        run: Callable[[list], list],
        rows: Callable[[Any], int],
        max_items: int,
        on_forward: Optional[Callable[[int, int, float], None]] = None,
    ) -> None:
        self.run = run
        self.rows = rows
        self.max_items = max_items
        self.on_forward = on_forward  # (calls, rows, seconds) of each forward: the replica's metrics
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.worker: Optional[asyncio.Task] = None
        self.reset()

    def reset(self) -> None:
        self.forwards = self.items = self.rows_done = self.largest = 0
        self.busy_s = 0.0
        self.cpu_s = 0.0
        self.process_cpu0 = time.process_time()

    async def submit(self, items: list) -> list:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self.pending.extend(zip(items, futures))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    def _timed_run(self, items: list) -> tuple[list, float]:
        """The forward and the CPU its thread spent: against the wall time it shows waiting for a core."""
        t0 = time.thread_time()
        out = self.run(items)
        return out, time.thread_time() - t0

    async def _drain(self) -> None:
        while self.pending:
            take, self.pending = self.pending[: self.max_items], self.pending[self.max_items :]
            take = [(item, f) for item, f in take if not f.done()]  # callers that gave up
            if not take:
                continue
            t0 = time.perf_counter()
            try:
                out, cpu = await asyncio.to_thread(self._timed_run, [item for item, _ in take])
            except Exception as exc:  # every caller of this forward gets the error; the replica lives on
                for _, f in take:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for (_, f), result in zip(take, out):
                if not f.done():
                    f.set_result(result)
            seconds = time.perf_counter() - t0
            rows = sum(self.rows(item) for item, _ in take)
            self.forwards += 1
            self.items += len(take)
            self.largest = max(self.largest, len(take))
            self.rows_done += rows
            self.busy_s += seconds
            self.cpu_s += cpu
            if self.on_forward is not None:
                self.on_forward(len(take), rows, seconds)


class _Batcher:
    """What both model deployments share: tuning via `reconfigure`, batch statistics."""

    batched_methods: tuple[str, ...] = ()
    coalescer: _Coalescer

    def _init_batching(self, run: Callable[[list], list], rows: Callable[[Any], int], tuning: Optional[dict]) -> None:
        self.tuning = DeploymentTuning.model_validate(tuning or {})
        self.coalescer = _Coalescer(run, rows, self.tuning.max_batch_size, on_forward=forward_metrics())
        self._apply(self.tuning)

    def reconfigure(self, user_config: dict) -> None:
        """Live change of batch size, wait and threads (Serve calls this on `user_config` updates)."""
        self.tuning = DeploymentTuning.model_validate(user_config or {})
        self._apply(self.tuning)
        log.info("%s reconfigured: %s", type(self).__name__, self.tuning.model_dump())

    def _apply(self, tuning: DeploymentTuning) -> None:
        for name in self.batched_methods:
            method = getattr(self, name)
            method.set_max_batch_size(tuning.max_batch_size)
            method.set_batch_wait_timeout_s(tuning.batch_wait_timeout_s)
        self.coalescer.max_items = tuning.max_batch_size
        if tuning.torch_threads:
            torch.set_num_threads(tuning.torch_threads)

    def stats(self) -> dict:
        """Forward-pass counters since the last reset (the benchmark reads requests per forward here)."""
        c = self.coalescer
        return {
            "batches": c.forwards,
            "items": c.items,
            "rows": c.rows_done,
            "mean_items_per_batch": c.items / c.forwards if c.forwards else 0.0,
            "max_items_per_batch": c.largest,
            "busy_s": round(c.busy_s, 4),
            "cpu_s": round(c.cpu_s, 4),
            "process_cpu_s": round(time.process_time() - c.process_cpu0, 4),
            "tuning": self.tuning.model_dump(),
        }

    def reset_stats(self) -> None:
        self.coalescer.reset()


@serve.deployment(name="Denoiser", **_MODEL_DEPLOYMENT)
class Denoiser(_Batcher):
    """D(x, sigma) -> x0_hat for batches of rows, each row with its own sigma."""

    batched_methods = ("denoise",)

    def __init__(
        self, models_dir: str, device: Optional[str] = None, tuning: Optional[dict] = None, registry_uri: Optional[str] = None
    ) -> None:
        self.device = pick_device(device)
        self.registry_uri = registry_uri
        path = ModelPaths(root=Path(models_dir)).path("denoiser")
        self.model_file: ModelFile = load_model(path, kind="denoiser-unet", device=self.device)
        self.model = self.model_file.model.requires_grad_(False)
        self.version = file_version(path)
        self.registry_loads = 0
        self._init_batching(self._run_denoise, lambda item: len(item[0][0]), tuning)

    def _run_denoise(self, items: list[tuple[tuple[np.ndarray, np.ndarray], torch.nn.Module]]) -> list[np.ndarray]:
        """One forward per denoiser over every waiting call (calls name the model they were sent for)."""
        out: list[Optional[np.ndarray]] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (_, model) in enumerate(items):
            groups.setdefault(id(model), []).append(i)
        for idx in groups.values():
            results = denoise_batch(items[idx[0]][1], [items[i][0] for i in idx], self.device)
            for i, result in zip(idx, results):
                out[i] = result
        return out  # type: ignore[return-value]

    @serve.multiplexed(max_num_models_per_replica=MAX_REGISTRY_DENOISERS_PER_REPLICA)
    async def registry_denoiser(self, model_id: str) -> torch.nn.Module:
        """A registered U-Net denoiser `NAME/VERSION`, loaded on first use and checked against this app's features."""
        if not self.registry_uri:
            raise ValueError("this app has no model registry configured (args.registry)")
        from mlops.registry import parse_ref, resolve_model_file

        name, version = parse_ref(model_id)

        def load() -> torch.nn.Module:
            path = resolve_model_file(name, version, tracking_uri=self.registry_uri)
            return load_model(path, self.model_file.spec, "denoiser-unet", self.device).model.requires_grad_(False)

        model = await asyncio.to_thread(load)
        self.registry_loads += 1
        log.info("Denoiser loaded registered model %s (%d registry loads so far)", model_id, self.registry_loads)
        return model

    @serve.batch(
        max_batch_size=_TUNING.max_batch_size,
        batch_wait_timeout_s=_TUNING.batch_wait_timeout_s,
        max_concurrent_batches=_CONCURRENT_BATCHES,
    )
    async def denoise(self, items: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """D(x, sigma) for each (x, sigma) item; concurrent requests' items share one forward.

        Calls sent with a `multiplexed_model_id` (`NAME/VERSION`) run on that registered denoiser.
        """
        model_id = serve.get_multiplexed_model_id()
        model = await self.registry_denoiser(model_id) if model_id else self.model
        return await self.coalescer.submit([(item, model) for item in items])

    async def denoise_many(self, items: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """`denoise` for calls an ingress already merged (`serve.merge.CallMerger`): one handle call, one forward."""
        return await self.coalescer.submit([(item, self.model) for item in items])

    async def describe_model(self, model_id: str) -> dict:
        """Loads a registered denoiser here (so the first request finds it warm) and describes it."""
        await self.registry_denoiser(model_id)
        return {"name": model_id, "kind": "denoiser-unet", "version": model_id.rpartition("/")[2], "alias": None}

    def describe_denoiser(self) -> dict:
        """What the ingress's catalog reads of the denoiser (named by role: a ModelHost answers both roles)."""
        return self.describe()

    def describe(self) -> dict:
        spec = self.model_file.spec
        return {
            "name": self.model_file.name,
            "kind": self.model_file.kind,
            "version": self.version,
            "alias": None,
            "card": self.model_file.card,
            "feature_spec": spec.to_dict(),
            "device": str(self.device),
        }

    async def check_health(self) -> None:
        """Unhealthy (and replaced by Serve) when the model no longer gives finite output."""
        spec = self.model_file.spec
        x = to_wire(torch.zeros(1, 1, spec.n_mels, spec.frames))
        out = await asyncio.to_thread(denoise_batch, self.model, [(x, np.ones(1, dtype=np.float32))], self.device)
        if not np.isfinite(out[0]).all():
            raise RuntimeError("denoiser produced non-finite output on its health probe")


@serve.deployment(name="Classifier", **_MODEL_DEPLOYMENT)
class Classifier(_Batcher):
    """Every guide the app hosts (`guidance.guide_host`): grad of log p(y | input, sigma) and the target
    probability, per row, whatever the guide's kind.

    Holds the digit classifiers (the noise-conditioned one reads x_t and sigma, the clean one x0_hat), the
    zero-shot voice guides, the Hugging Face classifiers of `args.hf_guides`, the pitch guide (CREPE, through
    the app's vocoder), and registered classifiers loaded on demand. Each call names its guide by key and
    carries its own settings (and, for a guide with a request table, its request's: voice references, pitch
    lines); nothing here is written for one guide kind.
    """

    batched_methods = ("guide",)

    def __init__(
        self, models_dir: str, device: Optional[str] = None, tuning: Optional[dict] = None, registry_uri: Optional[str] = None,
        hf_guides: Optional[dict] = None, vocoder: Optional[str] = "neural",
    ) -> None:
        from guidance.guide_host import load_guide_host

        self.device = pick_device(device)
        self.registry_uri = registry_uri
        paths = ModelPaths(root=Path(models_dir))
        # The denoiser's front end is the contract: read it from the file's metadata (no weights).
        self.spec = FeatureSpec.from_dict(read_metadata(paths.path("denoiser"))["feature_spec"])
        sources = {name: (h["source"], h.get("label_map")) for name, h in (hf_guides or {}).items()}
        self.host = load_guide_host(paths.root, self.spec, self.device, sources, vocoder=vocoder)  # the app's vocoder: the pitch guide's route
        self.guides = {key: h.guide for key, h in self.host.items()}
        self._references: dict[tuple[str, str], np.ndarray] = {}  # (guide key, clip sha256) -> feature rows
        self.registry_loads = 0
        self._init_batching(self._run_guides, lambda item: len(item[0].inp), tuning)

    def _run_guides(self, items: list[tuple[GuideCall, Any]]) -> list[GuideResult]:
        """One merged pass per guide over every waiting call, whichever guide each call names."""
        guides = {call.kind: guide for call, guide in items}
        return guide_batch(guides, [call for call, _ in items], self.device)

    @serve.multiplexed(max_num_models_per_replica=MAX_REGISTRY_GUIDES_PER_REPLICA)
    async def registry_guide(self, model_id: str) -> ClassifierGuide:
        """A registered classifier, `NAME/VERSION` (versions never change, so caching by id is safe).

        Loaded on first use through `mlops.registry` (downloaded from MLflow, checked against the
        app's feature spec); Serve keeps the most recently used few per replica and routes calls
        for a model to the replicas that hold it.
        """
        if not self.registry_uri:
            raise ValueError("this app has no model registry configured (args.registry)")
        from mlops.registry import parse_ref, resolve_model_file

        name, version = parse_ref(model_id)

        def load() -> ClassifierGuide:
            path = resolve_model_file(name, version, tracking_uri=self.registry_uri)
            return ClassifierGuide.from_file(load_model(path, self.spec, "classifier", self.device))

        guide = await asyncio.to_thread(load)
        self.registry_loads += 1
        log.info("Classifier loaded registered guide %s (%d registry loads so far)", model_id, self.registry_loads)
        return guide

    async def _guide_named(self, kind: str):
        """A hosted guide by key or, for any other name, the multiplexed registry model."""
        if kind in self.guides:
            return self.guides[kind]
        return await self.registry_guide(kind)

    @serve.batch(
        max_batch_size=_TUNING.max_batch_size,
        batch_wait_timeout_s=_TUNING.batch_wait_timeout_s,
        max_concurrent_batches=_CONCURRENT_BATCHES,
    )
    async def guide(self, calls: list[GuideCall]) -> list[GuideResult]:
        """Guide gradients per call; concurrent requests' calls share passes (merged by guide).

        Each call names its guide (`call.kind`): a hosted key, or a registry model id that the caller
        also set as the handle's `multiplexed_model_id` (Serve splits batches by it).
        """
        guides = {kind: await self._guide_named(kind) for kind in {c.kind for c in calls}}
        return await self.coalescer.submit([(c, guides[c.kind]) for c in calls])

    async def guide_many(self, calls: list[GuideCall]) -> list[GuideResult]:
        """`guide` for hosted-guide calls an ingress already merged: one handle call, merged passes."""
        unknown = sorted({c.kind for c in calls} - set(self.guides))
        if unknown:
            raise ValueError(f"guide_many serves the hosted guides {sorted(self.guides)}, not {unknown}")
        return await self.coalescer.submit([(c, self.guides[c.kind]) for c in calls])

    async def describe_model(self, model_id: str) -> dict:
        """Labels and kind of a registered guide (loads it here, so later calls find it warm)."""
        g = await self._guide_named(model_id)
        return {
            "name": model_id,
            "guide": g.name,
            "version": model_id.rpartition("/")[2],
            "alias": None,
            "labels": g.labels,
            "noise_conditioned": g.needs_sigma,
        }

    async def probabilities(self, kind: str, mels: np.ndarray) -> np.ndarray:
        """Class probabilities of finished samples (for the response's scores) or of reference clips."""
        guide = await self._guide_named(kind)

        def run() -> np.ndarray:
            return to_wire(guide.probabilities(from_wire(mels).to(self.device)).float().cpu())

        return await asyncio.to_thread(run)

    async def reference_features(self, kind: str, sha256: str, wave: np.ndarray) -> np.ndarray:
        """What a guide reads of one reference clip (mono, at the app's rate; a voice guide's feature row, the
        pitch guide's median F0), cached by the clip's content hash."""
        key = (kind, sha256)
        row = self._references.get(key)
        if row is None:
            guide = self.guides[kind]

            def run() -> np.ndarray:
                return to_wire(guide.features_of(from_wire(wave), self.spec.sample_rate).float().cpu())

            row = await asyncio.to_thread(run)
            if len(self._references) >= 256:
                self._references.pop(next(iter(self._references)))
            self._references[key] = row
        return row

    async def score(self, kind: str, mels: np.ndarray, references: np.ndarray, target: np.ndarray) -> np.ndarray:
        """A guide's own score of finished samples against their request table's rows (a voice guide's: higher is
        closer; the pitch guide's: its error in semitones)."""
        guide = self.guides[kind].with_request_table(from_wire(references).to(self.device))

        def run() -> np.ndarray:
            with torch.no_grad():
                return to_wire(guide.score(from_wire(mels).to(self.device), from_wire(target)).float().cpu())

        return await asyncio.to_thread(run)

    def describe(self) -> dict:
        from guidance.guide_host import describe_hosted

        return {key: describe_hosted(key, hosted) for key, hosted in self.host.items()}

    def describe_guides(self) -> dict:
        """What the ingress's catalog reads of the hosted guides (named by role: a ModelHost answers both roles)."""
        return self.describe()

    async def check_health(self) -> None:
        """Unhealthy when a classifier stops giving finite probabilities."""
        from guidance.guides.kinds import CLASSIFIER_GUIDE_KINDS

        for kind in CLASSIFIER_GUIDE_KINDS:
            probs = await self.probabilities(kind, to_wire(torch.zeros(1, 1, self.spec.n_mels, self.spec.frames)))
            if not np.isfinite(probs).all() or not math.isclose(float(probs.sum()), 1.0, rel_tol=1e-3):
                raise RuntimeError(f"{kind} classifier failed its health probe")



@serve.deployment(name="ModelHost", **_MODEL_DEPLOYMENT)
class ModelHost(_Batcher):
    """The Denoiser's and the Classifier's work in one replica: a small machine's layout (`args.colocate`).

    The ingress sends each request's calls of one sampler round as one call (`serve.steps.host_answerer`),
    so a cohort's whole evaluation, denoiser and guides one after the other, runs on one replica. With two
    replicas and two cohorts (`step_merging.cohorts`) both cores compute all the time, where a Denoiser and a
    Classifier replica do not share the work evenly (on 2 cores: Denoiser 95% busy, Classifier 58-70%).
    The ingress also reads the catalog, scores and reference features here. Registered models
    (args.registry guides or denoiser) are not hosted here.
    """

    batched_methods = ("answer",)

    def __init__(
        self, models_dir: str, device: Optional[str] = None, tuning: Optional[dict] = None,
        hf_guides: Optional[dict] = None, vocoder: Optional[str] = "neural",
    ) -> None:
        self.denoiser = Denoiser.func_or_class(models_dir, device, tuning, None)
        self.classifier = Classifier.func_or_class(models_dir, device, tuning, None, hf_guides, vocoder)
        self.device = self.denoiser.device
        self._init_batching(self._run_rounds, lambda item: item.rows, tuning)

    def _run_rounds(self, rounds: list[HostRound]) -> list[HostAnswer]:
        unknown = sorted({g.kind for r in rounds for g in r.guides} - set(self.classifier.guides))
        if unknown:
            raise ValueError(f"a model host serves the hosted guides {sorted(self.classifier.guides)}, not {unknown}")
        return host_round_batch(self.denoiser.model, self.classifier.guides, rounds, self.device)

    @serve.batch(
        max_batch_size=_TUNING.max_batch_size,
        batch_wait_timeout_s=_TUNING.batch_wait_timeout_s,
        max_concurrent_batches=_CONCURRENT_BATCHES,
    )
    async def answer(self, rounds: list[HostRound]) -> list[HostAnswer]:
        """One request's round per call; concurrent calls merge into one forward."""
        return await self.coalescer.submit(rounds)

    async def answer_many(self, rounds: list[HostRound]) -> list[HostAnswer]:
        """`answer` for rounds an ingress already merged: one handle call."""
        return await self.coalescer.submit(rounds)

    async def probabilities(self, kind: str, mels: np.ndarray) -> np.ndarray:
        return await self.classifier.probabilities(kind, mels)

    async def reference_features(self, kind: str, sha256: str, wave: np.ndarray) -> np.ndarray:
        return await self.classifier.reference_features(kind, sha256, wave)

    async def score(self, kind: str, mels: np.ndarray, references: np.ndarray, target: np.ndarray) -> np.ndarray:
        return await self.classifier.score(kind, mels, references, target)

    def describe_denoiser(self) -> dict:
        return self.denoiser.describe()

    def describe_guides(self) -> dict:
        return self.classifier.describe()

    async def check_health(self) -> None:
        await self.denoiser.check_health()
        await self.classifier.check_health()


@serve.deployment(name="Fused", **_MODEL_DEPLOYMENT)
class Fused(_Batcher):
    """The single-backbone generator (ScoreSubnet on its frozen noise-conditioned classifier) as ONE
    deployment: each call gets back the guided x0_hat, D + guidance delta, from one backbone pass.

    The split app needs a denoiser call and a classifier call per step (two hops, two forwards of two
    networks); here the classifier *is* the denoiser's backbone, so the score and the guide gradient
    share its forward and the ingress makes one call per step. Batched like the Denoiser: concurrent
    requests' calls at different sigmas, guided and unguided, merge into one forward.
    """

    batched_methods = ("step",)

    def __init__(
        self, models_dir: str, subnet_file: Optional[str] = None, device: Optional[str] = None, tuning: Optional[dict] = None
    ) -> None:
        from guidance.pipeline import ModelSet

        self.device = pick_device(device)
        paths = ModelPaths(root=Path(models_dir))
        self.path = paths.root / subnet_file if subnet_file else paths.path("score_subnet")
        models = ModelSet.from_score_subnet(self.path, self.device)  # checks the backbone's sha256
        self.model_file: ModelFile = models.denoiser
        self.model = self.model_file.model.eval().requires_grad_(False)
        self.guide: ClassifierGuide = models.guides["noisy"]
        self.version = file_version(self.path)
        self.backbone_version = file_version(resolve_backbone(self.model.backbone_ref, self.path))
        self._init_batching(self._run_fused, lambda item: len(item.x), tuning)

    def _run_fused(self, calls: list) -> list:
        from serve.fused import fused_batch

        return fused_batch(self.model, self.guide, calls, self.device)

    @serve.batch(
        max_batch_size=_TUNING.max_batch_size,
        batch_wait_timeout_s=_TUNING.batch_wait_timeout_s,
        max_concurrent_batches=_CONCURRENT_BATCHES,
    )
    async def step(self, calls: list) -> list:
        """Guided D for each `serve.fused.FusedCall`; concurrent requests' calls share one backbone pass."""
        return await self.coalescer.submit(calls)

    async def step_many(self, calls: list) -> list:
        """`step` for calls an ingress already merged: one handle call, one backbone pass."""
        return await self.coalescer.submit(calls)

    async def probabilities(self, kind: str, mels: np.ndarray) -> np.ndarray:
        """Class probabilities of finished samples from the backbone's head (the response's scores)."""
        if kind != "noisy":
            raise ValueError(f"the fused generator has only its backbone's guide (noisy), not {kind!r}")

        def run() -> np.ndarray:
            return to_wire(self.guide.probabilities(from_wire(mels).to(self.device)).float().cpu())

        return await asyncio.to_thread(run)

    def describe(self) -> dict:
        """The denoiser (subnet + backbone) and its one guide, in the shapes the split deployments use."""
        ref = self.model.backbone_ref
        return {
            "denoiser": {
                "name": self.model_file.name,
                "kind": self.model_file.kind,
                "version": self.version,
                "alias": None,
                "card": self.model_file.card,
                "feature_spec": self.model_file.spec.to_dict(),
                "device": str(self.device),
                "generator": "score-subnet",
                "fused": True,
                "backbone": {"file": ref.get("file"), "version": self.backbone_version},
            },
            "guides": {
                "noisy": {
                    "name": f"noisy-{self.guide.name}-classifier",
                    "file": Path(str(ref.get("file"))).stem,
                    "guide": self.guide.name,
                    "version": self.backbone_version,
                    "alias": None,
                    "labels": self.guide.labels,
                    "noise_conditioned": self.guide.needs_sigma,
                    "backbone_of": self.model_file.name,
                }
            },
        }

    async def check_health(self) -> None:
        """Unhealthy when a guided fused step stops giving finite output."""
        from serve.fused import FusedCall, fused_batch

        spec = self.model_file.spec
        call = FusedCall(
            to_wire(torch.zeros(1, 1, spec.n_mels, spec.frames)), np.ones(1, dtype=np.float32),
            np.zeros(1, dtype=np.int64), '{"scale": 1.0}',
        )
        out = await asyncio.to_thread(fused_batch, self.model, self.guide, [call], self.device)
        if not np.isfinite(out[0].denoised).all():
            raise RuntimeError("fused generator produced non-finite output on its health probe")
