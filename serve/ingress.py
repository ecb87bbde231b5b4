"""The HTTP ingress: validates requests, owns each request's sampler state, drives it step by step.

Every denoiser call of every step goes to the Denoiser deployment and every guide evaluation to
the Classifier deployment, through handles; the deployments merge the calls of concurrent
requests into one forward (`@serve.batch`). Step calls are pure functions of their inputs, so a
call that fails because a replica died is simply sent again (to the replacement replica) for as
long as `retry_s` allows; the request's state never leaves this replica.

Nothing a client sends reaches a model before it has been validated here: the body's size and
type, its JSON, every field (strict pydantic), the guide, label and profile names. Profiles are
looked up by name in a table built at start-up; a request never names a file.

With `args.registry`, profiles also come from the MLflow registry by alias (`RegistryWatch`, polled
in the background and swapped whole, so a request keeps the profile it started with), and registered
classifiers and denoisers are called through their deployment's handle with the resolved version as
the multiplexed model id: a request never names a file there either, only `NAME@ALIAS`/`NAME/VERSION`.

With a bearer token set (`serve.auth`, `args.auth`; required when the HTTP proxy binds anything but
loopback), /v1/generate and /v1/models answer 401 without it; /healthz stays open.

Admission is by work, not by request count (`serve.admission`, `args.admission`): right before
sampling, a request whose samples x denoiser evaluations could not be done by `request_timeout_s`
given the work already sampling on this replica (at its measured throughput) is answered 503 with
Retry-After at once, so the requests that are admitted finish. Each ingress replica admits on its own.

With `args.generator: score-subnet` the ingress holds a handle to the `Fused` deployment instead:
one call per denoiser evaluation returns the guided x0_hat (score and guide gradient from one pass of
the ScoreSubnet's frozen classifier backbone), so there is no classifier hop per step. Such an app
guides with that backbone only (`guide_kind: noisy`); the generator is the app's, not the request's.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures (Request) at runtime.
import asyncio
import base64
import hashlib
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from guidance.features import FeatureSpec, Vocoder
from guidance.finite import NonFiniteError
from guidance.data import wav_bytes  # noqa: F401  (re-exported: the bytes of every WAV the app answers)
from guidance.guides.kinds import default_digit_kind
from guidance.vocoders import describe_vocoder, load_vocoder, request_vocoder, rows_independent
from guidance.guide_host import RemoteGuide, RemoteReferenceGuide, hf_key, remote_guide, voice_key
from guidance.guides import DEFAULT_PROFILES, GuidanceProfile, read_reference
from guidance.guides.kinds import CLASSIFIER_GUIDE_KINDS
from guidance.guides.voice_stats import reference_mels
from guidance.pipeline import ModelPaths
from guidance.plan import TARGET_GUIDES, Target, base_profile, load_word_offsets, pitch_references, plan_request, retargets, with_overrides
from serve.admission import AdmissionController, Job, sampler_evaluations
from serve.auth import check_bearer, check_exposure, resolve_token
from serve.config import AppArgs, Auth
from serve.schemas import MAX_STEPS, GenerateRequest, describe_validation_error
from serve.fused import FusedCall, FusedResult, fused_answerer
from serve.local_host import LocalHandle
from serve.merge import CallMerger, WindowMerger
from serve.metrics import ingress_metrics, observe_requests
from serve.playground import add_routes as add_playground_routes
from serve.steps import GuideCall, GuideResult, HostAnswer, HostRound, drive_sampler, from_wire, host_answerer, to_wire

log = logging.getLogger("ray.serve")
WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave")
RETRYABLE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)
REFUSED_RETRY_S = 30.0  # a registered denoiser version that failed to load is tried again after this
MAX_SIGMA = 1000.0  # EDM's default is 80; far larger only overflows

api = FastAPI(title="speechguide", version="1", docs_url=None, redoc_url=None)
add_playground_routes(api)  # GET / (the playground page) and /docs, from files the app serves
observe_requests(api)  # requests by outcome and guide kind, end-to-end latency (serve.metrics)


class ApiError(Exception):
    """A request that cannot be served, with the status and the one-line detail the client sees."""

    def __init__(
        self, status: int, detail: str, retry_after: Optional[int] = None, extra: Optional[dict] = None, headers: Optional[dict] = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after
        self.extra = extra or {}
        self.headers = headers or {}


def _error_response(
    status: int, detail: str, retry_after: Optional[int] = None, extra: Optional[dict] = None, headers: Optional[dict] = None
) -> JSONResponse:
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"detail": detail, **(extra or {})}, status_code=status, headers=headers or None)


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return _error_response(exc.status, exc.detail, exc.retry_after, exc.extra, exc.headers)


@api.exception_handler(NonFiniteError)
async def _nonfinite(_: Request, exc: NonFiniteError) -> JSONResponse:
    """Sampling went NaN/inf (the sampler names the step and sigma): a JSON 500 saying so, not a
    generic one inviting a retry, since the same request would fail the same way; the replica lives on."""
    log.warning("request went non-finite: %s", exc)
    body: dict = {"detail": f"generation failed: {exc}"}
    if exc.step is not None:
        body.update(step=exc.step, sigma=exc.sigma)
    return JSONResponse(body, status_code=500)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error_response(exc.status_code, str(exc.detail))


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errs[:3]) or "invalid request"
    return _error_response(422, detail)


@api.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    """A bug or a failed deployment call: logged here, a JSON 500 for the client, the replica lives on."""
    log.error("request failed: %s: %s", type(exc).__name__, exc)
    return _error_response(500, f"internal error ({type(exc).__name__}); the request can be retried")


@dataclass(frozen=True)
class Catalog:
    """What the model deployments hold, asked once from the deployments themselves."""

    spec: FeatureSpec
    denoiser: dict
    guides: dict  # kind -> description (labels, version, noise_conditioned)


def load_profiles(profiles_dir: Optional[str]) -> dict[str, GuidanceProfile]:
    """Every profile a request may name: the built-in ones (by key and by name) and NAME.json files."""
    table: dict[str, GuidanceProfile] = {}
    for key, prof in DEFAULT_PROFILES.items():
        table[key] = prof
        table.setdefault(prof.name, prof)
    if profiles_dir:
        for path in sorted(Path(profiles_dir).glob("*.json")):
            table[path.stem] = GuidanceProfile.load(path)  # a bad file fails the deployment, loudly
    return table


def proxy_host() -> Optional[str]:
    """The address Serve's HTTP proxies bind, as the controller knows it (None if it cannot be asked)."""
    import ray

    if not ray.is_initialized():  # not in a replica: asking would start a cluster
        return None
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        return client.http_config.host if client is not None else None
    except Exception as exc:  # outside a Serve cluster, or a Ray that moved this: treated as not loopback
        log.warning("could not ask the Serve controller for the HTTP host: %s: %s", type(exc).__name__, exc)
        return None


def api_token(auth: Auth) -> Optional[str]:
    """The replica's API token (None: open API), or AuthConfigError when the app must not start:
    no token while the proxies bind a non-loopback address, or a token unfit for a header."""
    token = resolve_token(auth.token, auth.token_env)
    host = proxy_host()
    check_exposure(host, token, auth.token_env)
    log.info("HTTP API: %s (proxy host %s)", "bearer token required" if token else "open, no token set", host)
    return token


@serve.deployment(
    name="SpeechIngress",
    max_ongoing_requests=32,
    max_queued_requests=64,
    backpressure_config={"status_code": 503, "retry_after_s": 2},
    ray_actor_options={"num_cpus": 0.25, "num_gpus": 0},
)
@serve.ingress(api)
class SpeechIngress:
    """POST /v1/generate, GET /v1/models, GET /healthz (see docs/interfaces.md)."""

    def __init__(
        self,
        denoiser: Optional[DeploymentHandle],
        classifier: Optional[DeploymentHandle],
        args: Optional[dict] = None,
        fused: Optional[DeploymentHandle] = None,
    ) -> None:
        self.args = AppArgs.model_validate(args or {})
        self.api_token = api_token(self.args.auth)  # never logged
        self.denoiser = denoiser
        self.classifier = classifier
        self.fused = fused  # set for generator score-subnet (then denoiser and classifier are None)
        if self.args.colocate == "ingress":  # this replica computes the steps itself (serve/local_host.py)
            self._host_models_here()
        if (self.fused is None) != (self.args.generator == "unet"):
            raise ValueError(f"generator {self.args.generator!r} was bound with the wrong deployments")
        self.profiles = load_profiles(self.args.profiles_dir)
        self.registry = None
        if self.args.registry is not None:
            from serve.registry_watch import RegistryWatch  # MLflow is imported only by apps that use it

            self.registry = RegistryWatch(self.args.registry)
            # At start-up, before the replica takes traffic: a reachable registry's profiles are
            # served from the first request on; an unreachable one is retried by the poller.
            for change in (changes := self.registry.refresh()):
                log.info("registry: %s", change)
            ingress_metrics().registry_reloaded(len(changes))
            for key, err in self.registry.errors.items():
                log.warning("registry: %s: %s", key, err)
        self._poller: Optional[asyncio.Task] = None
        self._mergers: dict[str, CallMerger] = {}
        self._finishers: dict[tuple, WindowMerger] = {}  # scores and vocoding of requests that end together
        self._sampling = 0  # requests of this replica between their first and last step call
        # Work in flight and measured throughput of this replica (each ingress replica admits on its own).
        self.admission = AdmissionController(deadline_s=self.args.request_timeout_s, **self.args.admission.model_dump())
        ingress_metrics().follow(self.admission, self.registry)  # work in flight, throughput, registry errors as gauges
        self._guide_handles: dict[str, DeploymentHandle] = {}
        self._guide_descriptions: dict[str, dict] = {}
        # The registered denoiser that last loaded, served on while the alias points at a version that
        # does not (wrong kind or features); such versions by model id, with when and why they failed.
        self._denoiser_good: Optional[tuple[DeploymentHandle, dict]] = None
        self._denoiser_refused: dict[str, tuple[float, str]] = {}
        self._denoiser_loading: dict[str, asyncio.Future] = {}
        self._catalog: Optional[Catalog] = None
        self._word_offsets: Optional[torch.Tensor] = None
        self._vocoder: Optional[Vocoder] = None
        # Griffin-Lim seeds torch's global RNG for its phase; one vocoding at a time keeps audio reproducible.
        self._vocoder_lock = threading.Lock()

    def _host_models_here(self) -> None:
        """args.colocate: ingress: this replica's own model host, called as the deployment would be."""
        from serve.deployments import Fused, ModelHost

        tuning = self.args.tuning.model_dump() if self.args.tuning else None
        if self.args.generator == "score-subnet":
            self.fused = LocalHandle(Fused.func_or_class(self.args.models_dir, self.args.score_subnet, self.args.device, tuning))
            return
        hf_guides = {k: v.model_dump() for k, v in self.args.hf_guides.items()}
        host = LocalHandle(ModelHost.func_or_class(self.args.models_dir, self.args.device, tuning, hf_guides, self.args.vocoder))
        self.denoiser = self.classifier = host

    # ---- calls to the model deployments -------------------------------------------------------

    async def _remote(self, what: str, method: Any, *args: Any) -> Any:
        """Call a deployment method; resend while its replica is being replaced, up to `retry_s`."""
        deadline = time.monotonic() + self.args.retry_s
        delay = 0.2
        while True:
            try:
                return await method.remote(*args)
            except BackPressureError:
                raise ApiError(503, f"the {what} deployment is at capacity; retry later", retry_after=2) from None
            except RETRYABLE as exc:
                if time.monotonic() + delay > deadline:
                    raise ApiError(503, f"the {what} deployment is unavailable; retry later", retry_after=5) from exc
                log.warning("%s call failed (%s); retrying in %.1fs", what, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)

    def _merger(self, what: str, method: Any) -> Optional[CallMerger]:
        """The step-call merger for a deployment method (None when step merging is off)."""
        merging = self.args.step_merging
        if not merging.enabled:
            return None
        merger = self._mergers.get(what)
        if merger is None:

            async def send(items: list) -> list:
                return await self._remote(what, method, items)

            merger = self._mergers[what] = CallMerger(
                send, merging.max_items, merging.max_in_flight, merging.wait_s, expected=lambda: self._sampling, cohorts=merging.cohorts
            )
        return merger

    async def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, handle: Optional[DeploymentHandle] = None) -> torch.Tensor:
        item = (to_wire(x), to_wire(sigma))
        merger = self._merger("denoiser", self.denoiser.denoise_many) if handle is None else None  # registry models: per call
        out = await (merger.submit(item) if merger else self._remote("denoiser", (handle or self.denoiser).denoise, item))
        return from_wire(out).to(x.dtype)

    async def _registry_denoiser(self) -> Optional[tuple[DeploymentHandle, dict]]:
        """(handle, description) of the registered denoiser the config names, or None for the built-in one."""
        ref = self.registry.args.denoiser if self.registry is not None else None
        if ref is None:
            return None
        from mlops.registry import RegistryError

        try:
            info = await asyncio.to_thread(self.registry.resolve_ref, ref)
        except RegistryError as exc:
            raise ApiError(503, f"the configured denoiser {ref} is not available from the model registry: {exc}", retry_after=5) from None
        if info.tags.get("kind") != "denoiser-unet":
            raise ApiError(503, f"the configured denoiser {ref} is a {info.tags.get('kind')!r} model, not a U-Net denoiser", retry_after=30)
        model_id = f"{info.name}/{info.version}"
        desc = {"name": info.name, "version": info.version, "alias": ref.partition("@")[2] or None}
        good = self._denoiser_good
        refused = self._denoiser_refused.get(model_id)
        if refused is not None and good is not None and time.monotonic() - refused[0] < REFUSED_RETRY_S:
            return good  # a version that would not load is tried again only every REFUSED_RETRY_S
        handle = self._guide_handles.get(f"denoiser:{model_id}")
        if handle is None:  # concurrent requests wait for one load; none is sent to a version before it loaded
            loading = self._denoiser_loading.get(model_id)
            if loading is None:
                loading = self._denoiser_loading[model_id] = asyncio.ensure_future(self._load_registry_denoiser(model_id))
                loading.add_done_callback(lambda _: self._denoiser_loading.pop(model_id, None))
            try:
                handle = await asyncio.shield(loading)
            except ApiError:
                raise
            except Exception as exc:
                cause = getattr(exc, "cause", exc)
                why = " ".join(str(cause).split())[:300]
                self._denoiser_refused[model_id] = (time.monotonic(), why)
                if good is not None:  # e.g. a version whose features do not match this app: keep serving the last good one
                    log.warning("registry: %s resolved to %s, which does not load (%s); still serving %s/%s",
                                ref, model_id, why, good[1]["name"], good[1]["version"])
                    return good
                raise ApiError(503, f"could not load the configured denoiser {ref}: {why}", retry_after=30) from None
        self._denoiser_refused.pop(model_id, None)
        self._denoiser_good = (handle, desc)
        return handle, desc

    async def _load_registry_denoiser(self, model_id: str) -> DeploymentHandle:
        """Load registered denoiser `model_id` on the Denoiser deployment; its handle once it has loaded."""
        handle = self.denoiser.options(multiplexed_model_id=model_id)
        await self._remote("denoiser", handle.describe_model, model_id)
        self._guide_handles[f"denoiser:{model_id}"] = handle
        return handle

    async def _fused_step(self, call: FusedCall) -> FusedResult:
        assert self.fused is not None
        merger = self._merger("fused generator", self.fused.step_many)
        return await (merger.submit(call) if merger else self._remote("fused generator", self.fused.step, call))

    async def _host_round(self, call: HostRound) -> HostAnswer:
        merger = self._merger("model host", self.denoiser.answer_many)
        return await (merger.submit(call) if merger else self._remote("model host", self.denoiser.answer, call))

    def _hosted(self, kind: str) -> bool:
        """Whether a guide key names a guide the Classifier deployment hosts (else: a registry model id)."""
        return kind in (self._catalog.guides if self._catalog is not None else CLASSIFIER_GUIDE_KINDS)

    async def _guide(self, call: GuideCall) -> GuideResult:
        merger = self._merger("classifier", self.classifier.guide_many) if self._hosted(call.kind) else None
        return await (merger.submit(call) if merger else self._remote("classifier", self._classifier_for(call.kind).guide, call))

    def _classifier_for(self, kind: str) -> DeploymentHandle:
        """The classifier handle for a guide: built-in kinds plainly, registry models multiplexed by id."""
        if self._hosted(kind):  # the Classifier deployment's own; registry guides go multiplexed
            return self.classifier
        handle = self._guide_handles.get(kind)
        if handle is None:
            handle = self.classifier.options(multiplexed_model_id=kind)
            if len(self._guide_handles) < 64:
                self._guide_handles[kind] = handle
        return handle

    # ---- the model registry -------------------------------------------------------------------

    def _ensure_poller(self) -> None:
        """Start the registry poll on this replica's event loop (once; again if it ever died)."""
        if self.registry is not None and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll_registry())

    async def _poll_registry(self) -> None:
        assert self.registry is not None
        while True:
            await asyncio.sleep(self.registry.args.poll_seconds)
            try:
                changes = await asyncio.to_thread(self.registry.refresh)
            except Exception as exc:  # refresh catches per item; this is a bug guard that keeps polling
                log.error("registry poll failed: %s: %s", type(exc).__name__, exc)
                continue
            for change in changes:
                log.info("registry: %s", change)
            ingress_metrics().registry_reloaded(len(changes))

    async def check_health(self) -> None:
        """Serve calls this every few seconds: it also starts the registry poll without waiting for traffic."""
        self._ensure_poller()

    async def _registry_guide(self, req: GenerateRequest) -> Optional[tuple[str, dict]]:
        """(model id, description) of the registered classifier guiding `req`, or None for a built-in guide."""
        field = "guide_model" if req.guide_model else "guide_kind"
        ref = req.guide_model or (self.registry.args.guides.get(req.guide_kind) if self.registry else None)
        if ref is None:
            return None
        if self.registry is None:
            raise ApiError(404, "guide_model: this app has no model registry configured; use guide_kind noisy or clean")
        from mlops.registry import RegistryError

        try:
            info = await asyncio.to_thread(self.registry.resolve_ref, ref)
        except RegistryError as exc:
            raise ApiError(404, f"{field}: unknown guide model {ref!r}: {exc}") from None
        if info.tags.get("kind") != "classifier":
            raise ApiError(422, f"{field}: {ref} is a {info.tags.get('kind') or 'non-speechguide'} model, not a classifier guide")
        model_id = f"{info.name}/{info.version}"
        desc = self._guide_descriptions.get(model_id)
        if desc is None:
            try:
                desc = await self._remote("classifier", self._classifier_for(model_id).describe_model, model_id)
            except ApiError:
                raise
            except Exception as exc:  # the replica could not load it: a model that does not fit this app
                cause = getattr(exc, "cause", exc)
                detail = " ".join(str(cause).split())[:300]
                if isinstance(cause, ValueError):
                    raise ApiError(422, f"{field}: {ref} cannot guide this app: {detail}") from None
                raise ApiError(503, f"{field}: could not load {ref} ({type(cause).__name__}); retry later", retry_after=5) from None
            if len(self._guide_descriptions) < 256:
                self._guide_descriptions[model_id] = desc
        alias = ref.partition("@")[2] or None
        return model_id, {**desc, "name": info.name, "version": info.version, "alias": alias}

    async def catalog(self) -> Catalog:
        if self._catalog is None and self.fused is not None:
            desc = await self._remote("fused generator", self.fused.describe)
            self._catalog = Catalog(FeatureSpec.from_dict(desc["denoiser"]["feature_spec"]), desc["denoiser"], desc["guides"])
            self._vocoder = self._load_vocoder(self._catalog.spec)
        if self._catalog is None:
            den, guides = await asyncio.gather(
                self._remote("denoiser", self.denoiser.describe_denoiser), self._remote("classifier", self.classifier.describe_guides)
            )
            self._catalog = Catalog(FeatureSpec.from_dict(den["feature_spec"]), den, guides)
            self._vocoder = self._load_vocoder(self._catalog.spec)
            # what each digit adds to the spectral statistics (retargets composites' references), when the models have it
            self._word_offsets = load_word_offsets(ModelPaths(root=Path(self.args.models_dir)).path("word_spectra"), self._catalog.spec) if self.args.models_dir else None
        return self._catalog

    def _load_vocoder(self, spec: FeatureSpec) -> Vocoder:
        """The app's vocoder on the ingress's CPU, checked against the deployments' feature spec."""
        return load_vocoder(self.args.vocoder, spec, Path(self.args.models_dir) if self.args.models_dir else None)

    # ---- request checks -----------------------------------------------------------------------

    async def _read_request(self, request: Request) -> GenerateRequest:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, f"content-type must be application/json, got {ctype or 'none'!r}")
        limit = self.args.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ApiError(413, f"request body is larger than {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"request body is larger than {limit} bytes")
        try:
            data = json.loads(bytes(body))
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"body is not valid JSON: {str(exc)[:200]}") from None
        if not isinstance(data, dict):
            raise ApiError(422, "body must be a JSON object with a 'targets' field")
        try:
            return GenerateRequest.model_validate(data)
        except ValidationError as exc:
            raise ApiError(422, describe_validation_error(exc)) from None

    def _registry_profile(self, req: GenerateRequest) -> Optional[Any]:
        """The registry's profile for `req`: an alias it names, or production when it names none."""
        if self.registry is None or isinstance(req.profile, GuidanceProfile):
            return None
        aliases = self.registry.args.profile_aliases
        if req.profile is None:  # production when loaded, else the guide kind's built-in default
            return self.registry.profile("production", req.guide_kind) if "production" in aliases else None
        if req.profile not in aliases:
            return None
        loaded = self.registry.profile(req.profile, req.guide_kind)
        if loaded is None:
            err = self.registry.error_for(req.profile, req.guide_kind)
            raise ApiError(503, f"profile: {req.profile!r} is not available from the model registry ({err})", retry_after=5)
        return loaded

    def _profile(self, req: GenerateRequest, registered: Optional[Any] = None) -> GuidanceProfile:
        if registered is not None:
            prof = registered.profile
        elif isinstance(req.profile, GuidanceProfile):
            prof = req.profile
        elif req.profile in (None, "default") or (req.profile == "production" and "production" not in self.profiles):
            prof = base_profile(req.guide_kind)  # until the registry serves an alias, production = the kind's default
        elif req.profile in self.profiles:
            prof = self.profiles[req.profile]
        else:
            raise ApiError(404, f"profile: unknown profile {req.profile!r}; known: {', '.join(self.profile_names())}")
        prof = with_overrides(prof, req.guidance_scale, req.steps, req.sampler)
        if prof.sampler.sigma_max > MAX_SIGMA:
            raise ApiError(422, f"profile.sampler.sigma_max: at most {MAX_SIGMA:g}, got {prof.sampler.sigma_max:g}")
        if prof.sampler.steps > MAX_STEPS:
            raise ApiError(422, f"profile.sampler.steps: at most {MAX_STEPS} steps per request, got {prof.sampler.steps}")
        return prof

    def profile_names(self) -> list[str]:
        """Names a request may use: "default" and "production" (the guide kind's profile), the table's and
        the registry's aliases."""
        aliases = self.registry.args.profile_aliases if self.registry is not None else []
        return sorted({"default", "production", *self.profiles, *aliases})

    # ---- routes -------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        """401 with WWW-Authenticate unless the request carries the API token (no-op when none is set)."""
        if self.api_token is None:
            return
        refused = check_bearer(request.headers.get("authorization"), self.api_token)
        if refused is not None:
            raise ApiError(401, refused[0], headers={"WWW-Authenticate": refused[1]})

    @api.post("/v1/generate")
    async def generate(self, request: Request) -> Response:
        t_start = time.perf_counter()
        self._authorize(request)
        self._ensure_poller()
        req = await self._read_request(request)
        if req.guide_kind is None:  # the default kind, decided in one place for every door
            speaker = any(t.guide == "speaker" for t in req.targets)
            req = req.model_copy(update={"guide_kind": "hf" if req.hf_guide else default_digit_kind(speaker, self.args.generator)})
        request.state.guide_kind = req.guide_kind  # the metrics' guide_kind tag
        cat = await self.catalog()
        if req.generator is not None and req.generator != self.args.generator:
            raise ApiError(422, f"generator: this app's generator is {self.args.generator}, not {req.generator}")
        if self.args.colocate and req.guide_model is not None:  # the model host holds the models_dir's guides only
            raise ApiError(422, "guide_model: this app co-locates its models (args.colocate) and guides with the hosted ones; registered guides need the split deployments")
        if self.fused is not None:  # the single-backbone generator guides with its own backbone only
            if req.guide_model is not None:
                raise ApiError(422, "guide_model: this app's generator is score-subnet; it guides with its own backbone (no registry guides)")
            if req.guide_kind != "noisy":
                raise ApiError(422, f"guide_kind: this app's generator is score-subnet; it guides with its noise-conditioned backbone (noisy), not {req.guide_kind!r}")
        registered_guide = await self._registry_guide(req)
        guide_key, guide = registered_guide if registered_guide else self._hosted_digit_guide(req, cat)
        targets, clips = self._targets(req, guide, cat)
        registered = self._registry_profile(req)  # taken once: an alias move mid-request does not touch this request
        registered_denoiser = await self._registry_denoiser()  # likewise: one denoiser version per request
        denoiser_desc = registered_denoiser[1] if registered_denoiser else {k: cat.denoiser[k] for k in ("name", "version", "alias")}
        den_handle = registered_denoiser[0] if registered_denoiser else None

        prof = self._profile(req, registered)
        digit = RemoteGuide(guide_key, guide["labels"], guide["noise_conditioned"])
        voice = await self._voice_guide(req, cat, clips) if clips else None
        pitch, reference_hz = await self._pitch_guide(targets, cat, clips)
        said = None
        if voice is not None and retargets(targets, voice.kind, self._word_offsets):
            mels = reference_mels([clips[label][1] for label in voice.labels], cat.spec)
            probs = from_wire(await self._remote("classifier", self._classifier_for(guide_key).probabilities, guide_key, to_wire(mels)))
            said = probs.argmax(1)
        try:
            plan = plan_request(
                targets, req.num_samples, req.seed, prof, digit, voice, req.guide_kind, req.weights,
                scale_set=req.guidance_scale is not None or req.profile is not None or registered is not None,
                said=said, offsets=self._word_offsets if said is not None else None, pitch_guide=pitch, reference_hz=reference_hz,
            )
        except (KeyError, ValueError) as exc:
            raise ApiError(422, str(exc.args[0] if exc.args else exc)) from None
        terms = plan.terms({"digit": digit, **({"speaker": voice} if voice is not None else {}), **({"pitch": pitch} if pitch is not None else {})})
        for t in terms:
            if t.settings.through_denoiser and not t.guide.reads_x_t(t.settings):
                raise ApiError(422, "profile: through_denoiser (gradients through D) is not available in the split deployment")
        # Admission by work: decided and registered in one synchronous call, right before sampling.
        job, decision = self.admission.admit(len(plan), sampler_evaluations(plan.profile.sampler.steps, plan.profile.sampler.kind))
        ingress_metrics().admission_decision(job is not None)
        if job is None:
            request.state.refused = True
            extra = {"admission": decision.as_dict(), "timings_ms": {"validate": round((time.perf_counter() - t_start) * 1e3, 2)}}
            raise ApiError(503, decision.message(self.args.request_timeout_s), retry_after=decision.retry_after_s, extra=extra)
        try:
            noise = plan.noise(cat.spec)
            if self.fused is not None:  # one Fused call per evaluation answers its denoiser and guide calls
                answer = fused_answerer(self._counted(job, self._fused_step))
                sampling = drive_sampler(noise, plan.sampler, req.seed, terms, None, None, answer)
            elif self.args.colocate:  # one ModelHost call per round answers its denoiser and guide calls
                answer = host_answerer(self._counted(job, self._host_round, evaluates=lambda call: call.denoise is not None))
                sampling = drive_sampler(noise, plan.sampler, req.seed, terms, None, None, answer)
            else:
                denoise = self._counted(job, lambda x, sigma: self._denoise(x, sigma, den_handle))
                sampling = drive_sampler(noise, plan.sampler, req.seed, terms, denoise, self._guide)
            t_valid = time.perf_counter()
            self._sampling += 1
            try:
                mels, stats = await asyncio.wait_for(sampling, timeout=self.args.request_timeout_s)
            except asyncio.TimeoutError:
                raise ApiError(503, f"sampling took longer than {self.args.request_timeout_s:g} s; retry later", retry_after=5) from None
            finally:
                self._sampling -= 1
        finally:
            self.admission.finish(job)
        t_sampled = time.perf_counter()
        probs = speaker_score = None
        if "digit" in plan.named:
            scorer = ("fused generator", self.fused) if self.fused is not None else ("classifier", self._classifier_for(guide_key))
            probs = await self._probabilities(scorer[0], scorer[1], guide_key, mels)
        if voice is not None:
            speaker_score = from_wire(await self._remote(
                "classifier", self.classifier.score, voice.name, to_wire(mels), to_wire(voice.references.float()), to_wire(plan.named["speaker"])
            ))
        pitch_error = None
        if pitch is not None:  # the pitch guide's own reading of the samples (CREPE's error in semitones)
            pitch_error = from_wire(await self._remote(
                "classifier", self.classifier.score, pitch.name, to_wire(mels), to_wire(pitch.request_table().float()), to_wire(plan.named["pitch"])
            ))
        t_scored = time.perf_counter()
        writer = request_vocoder(self._vocoder, plan.named)  # auto: the harmonic vocoder for a pitch target
        waves = await self._write(mels, writer)
        t_vocoded = time.perf_counter()

        rate = cat.spec.sample_rate
        samples = []
        for i, (wave, scores) in enumerate(zip(waves, plan.scores(probs, speaker_score, pitch_error=pitch_error))):
            if stats.last_guide_prob is not None and "digit" in plan.guided() and terms and terms[0].guide is digit:
                scores["guide_last_step_probability"] = round(float(stats.last_guide_prob[i]), 4)
            wanted = plan.targets_of(i)
            samples.append({"wav": wav_bytes(wave, rate), "scores": scores, "target": wanted[0], "targets": wanted})
        timings = {
            "validate": (t_valid - t_start) * 1e3,
            "sampling": (t_sampled - t_valid) * 1e3,
            "per_step": (t_sampled - t_valid) * 1e3 / max(stats.steps, 1),
            "waiting_on_deployments": stats.wait_ms,
            "scores": (t_scored - t_sampled) * 1e3,
            "vocode": (t_vocoded - t_scored) * 1e3,
            "total": (time.perf_counter() - t_start) * 1e3,
        }
        timings = {k: round(v, 2) for k, v in timings.items()}
        ingress_metrics().answered(req.guide_kind, timings, stats.steps, describe_vocoder(writer)["kind"])
        accept = request.headers.get("accept", "").lower()
        if len(samples) == 1 and any(t in accept for t in WAV_TYPES):
            headers = {"X-Speechguide-Scores": json.dumps(samples[0]["scores"]), "X-Speechguide-Timings-Ms": json.dumps(timings)}
            if registered is not None:
                headers["X-Speechguide-Profile"] = json.dumps(registered.source())
            return Response(samples[0]["wav"], media_type="audio/wav", headers=headers)
        models = {
            "generator": self.args.generator,
            "denoiser": denoiser_desc,
            "guide": {k: guide.get(k) for k in ("name", "version", "alias", "noise_conditioned")} if "digit" in plan.named else None,
            "vocoder": describe_vocoder(writer),
            **({"profile": registered.source()} if registered is not None else {}),
        }
        if guide.get("source") and models["guide"] is not None:
            models["guide"].update(source=guide["source"])
        if voice is not None:
            desc = cat.guides[voice.name]
            models["speaker_guide"] = {**{k: desc[k] for k in ("name", "kind", "version", "alias")}, **({"word_spectra": True} if plan.retargeted else {})}
        if pitch is not None:
            models["pitch_guide"] = {k: cat.guides[pitch.name][k] for k in ("name", "kind", "version", "alias")}
        return JSONResponse(
            {
                "samples": [
                    {"wav_base64": base64.b64encode(s["wav"]).decode("ascii"), "sample_rate": rate, "scores": s["scores"],
                     "target": s["target"], "targets": s["targets"]}
                    for s in samples
                ],
                "models": models,
                "profile": json.loads(plan.profile.model_dump_json()),
                "timings_ms": timings,
                "stats": {"steps": stats.steps, "denoiser_calls": stats.denoiser_calls, "guide_calls": stats.guide_calls},
            }
        )

    def _hosted_digit_guide(self, req: GenerateRequest, cat: Catalog) -> tuple[str, dict]:
        """(host key, description) of the hosted guide that steers the request's digit targets."""
        if req.guide_kind != "hf":
            if req.hf_guide is not None:
                raise ApiError(422, "hf_guide: applies to guide_kind hf only")
            return req.guide_kind, cat.guides[req.guide_kind]
        names = sorted(k.removeprefix("hf:") for k in cat.guides if k.startswith("hf:"))
        if not names:
            raise ApiError(404, "guide_kind: this app hosts no Hugging Face guide (args.hf_guides)")
        name = req.hf_guide if req.hf_guide is not None else names[0] if len(names) == 1 else None
        if name not in names:
            raise ApiError(404, f"hf_guide: {'name one of' if req.hf_guide is None else f'unknown Hugging Face guide {req.hf_guide!r}; known:'} {', '.join(names)}")
        return hf_key(name), cat.guides[hf_key(name)]

    def _targets(self, req: GenerateRequest, guide: dict, cat: Catalog) -> tuple[list[Target], dict[str, tuple[str, torch.Tensor]]]:
        """The request's targets for the plan, and each distinct reference clip by label: (sha256, wave).
        A reference is named by its content hash, so the same clip twice is read and described once."""
        targets: list[Target] = []
        clips: dict[str, tuple[str, torch.Tensor]] = {}
        served = self._target_guides(cat)
        for i, t in enumerate(req.targets):
            if t.guide not in TARGET_GUIDES:
                raise ApiError(404, f"targets.{i}.guide: unknown guide {t.guide!r}; this app guides with: {', '.join(served)}")
            if t.guide not in served:  # planned by guidance.plan, but not hosted by this app
                raise ApiError(404, f"targets.{i}.guide: this app hosts no {t.guide!r} guide; it guides with: {', '.join(served)}")
            if t.guide not in ("digit", "speaker"):  # a hosted target guide of its own (pitch): the plan resolves its label
                targets.append(Target(t.guide, t.label))
                continue
            if t.guide == "speaker":
                if self.fused is not None:
                    raise ApiError(422, f"targets.{i}.guide: this app's generator is score-subnet; it guides with its backbone's digit head only, not speaker")
                raw = base64.b64decode(t.reference_wav_base64)
                sha = hashlib.sha256(raw).hexdigest()
                label = f"sha256:{sha[:16]}"
                if label not in clips:
                    try:
                        clips[label] = (sha, read_reference(raw, self._catalog.spec.sample_rate, name=f"targets.{i}.reference_wav_base64"))
                    except ValueError as exc:
                        raise ApiError(422, str(exc)) from None
                targets.append(Target("speaker", label))
                continue
            if t.label not in guide["labels"]:
                raise ApiError(
                    404, f"targets.{i}.label: guide {t.guide!r} has no label {t.label!r}; known: {', '.join(guide['labels'])}"
                )
            targets.append(Target(t.guide, t.label))
        return targets, clips

    @staticmethod
    def _target_guides(cat: Catalog) -> list[str]:
        """The target guides this app steers with: digit, speaker (the fused generator refuses it with its own
        reason) and every other target guide it hosts (pitch, when the Classifier deployment hosts CREPE)."""
        hosted = {g.get("guide") for g in cat.guides.values()} & set(TARGET_GUIDES)
        return ["digit", "speaker", *sorted(hosted - {"digit", "speaker"})]

    async def _pitch_guide(self, targets: list[Target], cat: Catalog, clips: dict) -> tuple[Optional[Any], Optional[dict[str, float]]]:
        """The request's pitch guide as its plan sees it (the plan resolves its targets into the guide's table,
        which travels with every gradient call) and the median F0 of each speaker reference a relative or
        contour target is resolved against, read by the hosted guide (cached there by content hash)."""
        if not any(t.guide == "pitch" for t in targets):
            return None, None
        key = next(k for k, g in cat.guides.items() if g.get("guide") == "pitch")
        labels = pitch_references(targets)
        rows = await asyncio.gather(*(
            self._remote("classifier", self.classifier.reference_features, key, clips[label][0], to_wire(clips[label][1])) for label in labels
        ))
        reference_hz = {}
        for label, row in zip(labels, rows):
            hz = float(from_wire(row).reshape(-1)[0])
            if not math.isfinite(hz):
                raise ApiError(422, f"targets: the speaker reference {label} has no voiced frame to read a pitch from (the pitch target is relative to it)")
            reference_hz[label] = hz
        return remote_guide(key, cat.guides[key]), reference_hz

    async def _voice_guide(self, req: GenerateRequest, cat: Catalog, clips: dict) -> RemoteReferenceGuide:
        """The request's voice guide with its references' features, computed by the guide deployment (cached there by content hash)."""
        key = voice_key(req.voice_guide)
        desc = cat.guides.get(key)
        if desc is None:
            raise ApiError(404, f"voice_guide: this app hosts no {req.voice_guide!r} voice guide")
        voice = remote_guide(key, desc)  # a RemoteReferenceGuide: the plan adds the request's references
        rows = await asyncio.gather(*(
            self._remote("classifier", self.classifier.reference_features, key, sha, to_wire(wave)) for sha, wave in clips.values()
        ))
        for label, row in zip(clips, rows):
            voice.add_row(label, from_wire(row))
        return voice

    def _counted(self, job: Job, denoise: Any, evaluates: Optional[Any] = None) -> Any:
        """`denoise` (or the fused step, or a model host's round) that reports each completed evaluation of `job`
        to the admission accounting; `evaluates(*args)` says whether a call is one (a host round without a
        denoiser call is not)."""

        async def counted(*args: Any) -> Any:
            out = await denoise(*args)
            if evaluates is None or evaluates(*args):
                self.admission.progress(job)
            return out

        return counted

    def _vocode(self, mels: torch.Tensor, vocoder: Vocoder) -> np.ndarray:
        with self._vocoder_lock:
            return vocoder(mels).cpu().numpy()

    def _finisher(self, key: tuple, send: Any) -> Optional[WindowMerger]:
        """The merger of one kind of end-of-sampling call (None when the ingress merges nothing)."""
        merging = self.args.step_merging
        if not merging.enabled or merging.finish_wait_s <= 0:
            return None
        merger = self._finishers.get(key)
        if merger is None:
            merger = self._finishers[key] = WindowMerger(send, merging.finish_wait_s, merging.max_items)
        return merger

    async def _probabilities(self, what: str, handle: DeploymentHandle, kind: str, mels: torch.Tensor) -> torch.Tensor:
        """The scorer's class probabilities of a request's samples; requests ending together share one call."""

        async def send(batch: list[torch.Tensor]) -> list[torch.Tensor]:
            probs = from_wire(await self._remote(what, handle.probabilities, kind, to_wire(torch.cat(batch))))
            return list(torch.split(probs, [len(m) for m in batch]))

        hosted = self.fused is not None or self._hosted(kind)  # registry models go call by call, as their steps do
        merger = self._finisher(("probabilities", what, kind, *mels.shape[1:]), send) if hosted else None
        return await merger.submit(mels) if merger else (await send([mels]))[0]

    async def _write(self, mels: torch.Tensor, writer: Vocoder) -> np.ndarray:
        """A request's waveforms; with a writer whose rows do not depend on their batch, the requests ending
        together are written in one pass."""

        async def send(batch: list[torch.Tensor]) -> list[np.ndarray]:
            waves = await asyncio.to_thread(self._vocode, torch.cat(batch), writer)
            return list(np.split(waves, np.cumsum([len(m) for m in batch])[:-1]))

        merger = self._finisher(("vocode", id(writer), *mels.shape[1:]), send) if rows_independent(writer) else None
        return await merger.submit(mels) if merger else (await send([mels]))[0]

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        self._ensure_poller()
        cat = await self.catalog()
        extra = ("generator", "fused", "backbone") if self.fused is not None else ()
        body = {
            "generator": self.args.generator,
            "denoisers": [{k: cat.denoiser[k] for k in ("name", "kind", "version", "alias", "card", *extra)}],
            "guides": [
                {"guide": g["guide"], "guide_kind": kind, **{k: g[k] for k in ("name", "version", "alias", "labels", "noise_conditioned")},
                 **{k: g[k] for k in ("kind", "source", "reference") if k in g}}
                for kind, g in cat.guides.items()
            ],
            "profiles": self.profile_names(),
            "vocoder": describe_vocoder(self._vocoder),
            "sample_rate": cat.spec.sample_rate,
            "unsupported_guides": [],
            "voice_guides": sorted(g["kind"] for g in cat.guides.values() if g.get("reference")),
            "features": {k: getattr(cat.spec, k) for k in ("n_fft", "hop_length", "n_mels", "f_min", "f_max")},  # the playground's spectrogram
        }
        if self.registry is not None:
            reg = self.registry.describe()
            body["registry"] = reg
            body["profile_versions"] = [
                {"name": p.name, "version": p.version, "alias": alias, "profile_name": p.profile.name, **({"guide_kind": kind} if kind else {})}
                for (kind, alias), p in sorted(self.registry.profiles.items())
            ]
            den = reg.get("denoiser") or {}
            if "version" in den:
                body["denoisers"][0].update(name=den["name"], version=den["version"], alias=den["ref"].partition("@")[2] or None, card=None)
            for g in body["guides"]:  # guide kinds served from the registry report its model and version
                served = reg["guides"].get(g["guide_kind"])
                if served and "version" in served:
                    g.update(name=served["name"], version=served["version"], alias=served["ref"].partition("@")[2] or None)
        return body

    def admission_stats(self) -> dict:
        """This replica's admission state: work in flight, measured throughput, admitted and refused counts."""
        return self.admission.describe()

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 when every model deployment answers within 5 s, else 503. Open without a token (liveness)."""
        if self.fused is not None:
            names, calls = ("Fused",), [self.fused.describe.remote()]
        elif self.args.colocate:
            names, calls = ("ModelHost",), [self.denoiser.describe_denoiser.remote()]
        else:
            names = ("Denoiser", "Classifier")
            calls = [self.denoiser.describe_denoiser.remote(), self.classifier.describe_guides.remote()]
        results = await asyncio.gather(*(asyncio.wait_for(c, 5.0) for c in calls), return_exceptions=True)
        status = {n: "ok" if not isinstance(r, BaseException) else f"unavailable ({type(r).__name__})" for n, r in zip(names, results)}
        if all(v == "ok" for v in status.values()):
            return JSONResponse({"status": "ok", "deployments": status})
        return JSONResponse({"detail": "not every deployment is ready", "deployments": status}, status_code=503, headers={"Retry-After": "5"})
