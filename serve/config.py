"""Typed app arguments, per-deployment tuning (`user_config`) and Serve config file checks.

Ray's own `ServeDeploySchema` validates a config file's structure but ignores keys it does not
know, so a misspelled `max_queued_request` would silently leave the queue unbounded. The checks
here refuse every unknown key, in Ray's part of the file (walking Ray's own pydantic models, so
they follow the installed Ray version) and in ours (`args`, `user_config`).
"""

from __future__ import annotations

import copy
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from guidance.guides.kinds import CLASSIFIER_GUIDE_KINDS
from guidance.strict import StrictModel
from serve.auth import TOKEN_ENV, check_exposure, resolve_token

DEFAULT_CONFIG_PATH = Path(__file__).with_name("config.yaml")
FUSED_CONFIG_PATH = Path(__file__).with_name("config-fused.yaml")  # args.generator: score-subnet
COLOCATED_CONFIG_PATH = Path(__file__).with_name("config-colocated.yaml")  # args.colocate: the split app's models in one deployment
INGRESS_HOSTED_CONFIG_PATH = Path(__file__).with_name("config-ingress.yaml")  # args.colocate: ingress: no model deployments
APP_BUILDER = "serve.app:build_app"
TUNED_DEPLOYMENTS = ("Denoiser", "Classifier", "Fused", "ModelHost")
# The model deployments each generator's app consists of (besides the ingress).
GENERATOR_DEPLOYMENTS = {"unet": ("Denoiser", "Classifier"), "score-subnet": ("Fused",)}
COLOCATED_DEPLOYMENTS = ("ModelHost",)  # args.colocate: the unet generator's models in one deployment
# A registered model reference as requests and configs name it: NAME@ALIAS or NAME/VERSION.
REF_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}(@[A-Za-z][A-Za-z0-9_-]{0,63}|/[0-9]{1,9})")


class _Strict(StrictModel):
    """The Serve arguments' strict base (`guidance.strict`)."""


class DeploymentTuning(_Strict):
    """`user_config` of the model deployments (Denoiser, Classifier, Fused); changed live via `reconfigure`."""

    max_batch_size: int = Field(16, ge=1, le=256, description="requests merged into one forward")
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1, description="how long a batch waits to fill")
    torch_threads: Optional[int] = Field(None, ge=1, le=256, description="intra-op threads (default: torch's)")


class RegistryArgs(_Strict):
    """Where the app reads guidance profiles and guide models from the MLflow registry (`args.registry`).

    The ingress loads `profile_name@alias` for every alias in `profile_aliases` at start-up and polls
    the registry every `poll_seconds`; when an alias moves, the new version's profile replaces the old
    one for new requests while requests in flight finish with the profile they started with. A request
    names one by alias (`"profile": "production"`); requests that name no profile use `production`.
    `guides` maps a guide kind to a registered classifier (`NAME@ALIAS` or `NAME/VERSION`): those
    requests, and any request naming `guide_model`, are guided by that model, loaded on demand by the
    classifier deployment through model multiplexing; `denoiser` does the same for the denoiser.
    """

    tracking_uri: Optional[str] = Field(None, description="default: mlops.tracking.default_tracking_uri() where the app is built")
    profile_name: str = Field(
        "speechguide-profile", min_length=1, max_length=200,
        description="registered profile; with {guide} one per guide kind (speechguide-profile-{guide}, as `speechguide tune` registers)",
    )
    profile_aliases: list[str] = Field(default_factory=lambda: ["production"], min_length=1, max_length=8)
    poll_seconds: float = Field(10.0, ge=0.2, le=3600, description="how often aliases are re-resolved")
    guides: dict[str, str] = Field(default_factory=dict, description="guide kind (one of guidance.guides.kinds.CLASSIFIER_GUIDE_KINDS) -> NAME@ALIAS of a registered classifier")
    denoiser: Optional[str] = Field(None, description="NAME@ALIAS of a registered U-Net denoiser (default: the models_dir one)")

    @model_validator(mode="after")
    def _check(self) -> "RegistryArgs":
        unknown = set(self.guides) - set(CLASSIFIER_GUIDE_KINDS)
        if unknown:
            raise ValueError(f"guides: unknown guide kind(s) {sorted(unknown)}; use {' or '.join(CLASSIFIER_GUIDE_KINDS)}")
        for alias in self.profile_aliases:
            if not alias or alias.isdigit() or alias == "latest" or not alias.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"profile_aliases: {alias!r} is not an alias name")
        name = self.profile_name.replace("{guide}", "noisy")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"profile_name: {self.profile_name!r} is not a registered model name (letters, digits, . _ - and {{guide}})")
        for kind, ref in self.guides.items():
            if not REF_PATTERN.fullmatch(ref):
                raise ValueError(f"guides.{kind}: {ref!r} is not NAME@ALIAS or NAME/VERSION")
        if self.denoiser is not None and not REF_PATTERN.fullmatch(self.denoiser):
            raise ValueError(f"denoiser: {self.denoiser!r} is not NAME@ALIAS or NAME/VERSION")
        return self


class StepMerging(_Strict):
    """How the ingress sends its concurrent requests' step calls (`serve.merge.CallMerger`)."""

    enabled: bool = Field(True, description="one handle call per deployment for all the calls waiting together")
    max_items: int = Field(64, ge=1, le=1024, description="request calls carried by one merged call")
    max_in_flight: int = Field(2, ge=1, le=64, description="merged calls in flight per deployment and ingress replica")
    wait_s: float = Field(0.02, ge=0, le=1, description="how long a merged call waits for the rest of the requests sampling here")
    cohorts: int = Field(
        1, ge=1, le=64,
        description="equal groups the requests sampling here are split into, one merged call each (at most max_in_flight at once): "
        "1 gives the largest forwards; one per model replica keeps several replicas busy at once",
    )

    finish_wait_s: float = Field(
        0.005, ge=0, le=1,
        description="how long a request whose sampling ended waits for the others ending with it, so that their scores "
        "travel as one classifier call and their audio is written in one vocoder pass (neural vocoder only)",
    )

    @model_validator(mode="after")
    def _cohorts_fit(self) -> "StepMerging":
        if self.cohorts > self.max_in_flight:
            raise ValueError(f"step_merging.cohorts ({self.cohorts}) cannot exceed max_in_flight ({self.max_in_flight}): the cohorts travel at once")
        return self


class Admission(_Strict):
    """Admission by work on each ingress replica (`serve.admission`): a request that could not end
    sampling by `request_timeout_s`, given the work ahead of it, is answered 503 with Retry-After at once.

    Work is counted in units of one sample through one denoiser evaluation (Heun: 2 per step but the
    last). Each ingress replica admits on its own: with N replicas behind the proxy, each one measures
    and fills its own share of the model deployments' throughput.
    """

    enabled: bool = Field(True, description="false: every request samples (until request_timeout_s), as before admission")
    prior_units_per_s: float = Field(
        20.0, gt=0, le=1e7,
        description="throughput assumed until measured (sample-evaluations per second); keep it low: too high admits work that cannot finish",
    )
    safety_margin: float = Field(
        0.25, ge=0, lt=1, description="share of request_timeout_s kept in reserve for estimate error, scoring and vocoding"
    )
    ewma_alpha: float = Field(0.3, gt=0, le=1, description="weight of each new throughput window in the estimate")
    window_s: float = Field(2.0, gt=0, le=600, description="busy seconds of completed work per throughput measurement")
    max_retry_after_s: int = Field(300, ge=1, le=3600, description="cap on the Retry-After of a refusal")


class Auth(_Strict):
    """Bearer token of the HTTP API (`serve.auth`). With a token, POST /v1/generate and GET /v1/models want
    `Authorization: Bearer <token>` (401 otherwise); GET /healthz stays open. Without one the API is open,
    which the app allows only while the HTTP proxy binds loopback: on any other host it refuses to start."""

    token_env: str = Field(
        TOKEN_ENV, pattern=r"^[A-Z_][A-Z0-9_]{0,127}$",
        description="environment variable the ingress replicas read the token from (set it where they run, e.g. from a Kubernetes Secret)",
    )
    token: Optional[str] = Field(
        None, repr=False,
        description="the token itself, used when the variable is unset; discouraged: anyone who reads the config (or `serve config`) reads it",
    )


class HFGuideArgs(_Strict):
    """A Hugging Face audio classifier the app hosts as a digit guide (`args.hf_guides.NAME`)."""

    source: str = Field(min_length=1, max_length=500, description="a local directory (read offline) or a hub id")
    label_map: Optional[str] = Field(None, max_length=2000, description="model label names to targets: seven=7,... or a JSON file")


class AppArgs(_Strict):
    """Arguments of `build_app` (the `args:` of an application in the Serve config file)."""

    models_dir: Optional[str] = Field(None, description="default: guidance.pipeline.default_models_dir()")
    vocoder: Literal["auto", "neural", "harmonic", "griffin-lim"] = Field(
        "auto", description="auto: neural, and harmonic for requests with a pitch target; neural: models_dir's vocoder.safetensors; "
        "harmonic: it with models_dir's f0-head.safetensors (keeps low voices); griffin-lim: the fallback"
    )
    device: Optional[str] = Field(None, description="cpu | cuda; default: CUDA when the replica has a GPU")
    profiles_dir: Optional[str] = Field(None, description="extra guidance profiles, one NAME.json each")
    max_body_bytes: int = Field(2 * 2**20, ge=1024, le=64 * 2**20)
    request_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="deadline of a request's sampling: admission keeps to it; sampling longer is cut off with 503"
    )
    retry_s: float = Field(30.0, ge=0, le=600, description="how long a step call is retried while a replica restarts")
    admission: Admission = Field(default_factory=Admission, description="503 at once for work that cannot finish by request_timeout_s")
    auth: Auth = Field(default_factory=Auth, description="bearer token of the HTTP API (required off loopback)")
    tuning: Optional[DeploymentTuning] = Field(None, description="default user_config of both model deployments")
    step_merging: StepMerging = Field(default_factory=StepMerging, description="step batching on the ingress side")
    registry: Optional[RegistryArgs] = Field(None, description="MLflow registry: profiles by alias, guide models (multiplexed)")
    generator: Literal["unet", "score-subnet"] = Field(
        "unet",
        description="unet: Denoiser + Classifier deployments called per step; score-subnet: one Fused deployment "
        "(ScoreSubnet on its frozen classifier backbone) returning the guided x0_hat in one backbone pass",
    )
    score_subnet: Optional[str] = Field(
        None, min_length=1, max_length=200, description="ScoreSubnet file in models_dir (default: score-subnet-all.safetensors)"
    )
    colocate: Union[Literal["ingress"], bool] = Field(
        False,
        description="true (unet only): the denoiser and the guides in one ModelHost deployment (each replica computes whole steps "
        "of its cohort; with num_replicas = step_merging.cohorts); ingress: every ingress replica hosts the models itself (either "
        "generator), with no model deployments (the fewest processes: a small machine's layout). Registered models are not hosted either way",
    )
    hf_guides: dict[str, HFGuideArgs] = Field(
        default_factory=dict, max_length=8,
        description="Hugging Face classifiers hosted as digit guides by name; a request picks one with guide_kind: hf and hf_guide: NAME",
    )

    @model_validator(mode="after")
    def _generator(self) -> "AppArgs":
        if self.score_subnet is not None:
            if self.generator != "score-subnet":
                raise ValueError("score_subnet applies to generator: score-subnet only")
            if Path(self.score_subnet).name != self.score_subnet or not self.score_subnet.endswith(".safetensors"):
                raise ValueError(f"score_subnet: {self.score_subnet!r} must be a .safetensors file name inside models_dir")
        if self.colocate is True and self.generator != "unet":
            raise ValueError("colocate: true applies to generator: unet (the fused app is one deployment already; colocate: ingress hosts it in the ingress)")
        if self.colocate and self.registry is not None and (self.registry.guides or self.registry.denoiser):
            raise ValueError("colocate hosts the models_dir's models only: registry guides and denoiser need the split deployments")
        for name in self.hf_guides:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
                raise ValueError(f"hf_guides: {name!r} is not a guide name (letters, digits, . _ -)")
        if self.generator == "score-subnet" and self.hf_guides:
            raise ValueError("hf_guides do not apply to generator: score-subnet (it guides with its own backbone)")
        if self.generator == "score-subnet" and self.registry is not None and (self.registry.guides or self.registry.denoiser):
            raise ValueError("registry.guides and registry.denoiser do not apply to generator: score-subnet (it guides with its own backbone)")
        return self


def load_config_file(path: str | Path) -> dict:
    """Read a Serve config YAML as a plain mapping (refusing anything else)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Serve config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(exc).split())[:300]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping at the top level")
    return data


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every pydantic model class an annotation can hold (through Optional, Union, List...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _list_item(annotation: Any) -> Any:
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) in (list, typing.List) and typing.get_args(arg):
            return typing.get_args(arg)[0]
    return None


def unknown_keys(data: Any, model: type[BaseModel], where: str = "") -> list[str]:
    """Dotted paths of keys in `data` that `model` (recursively) does not define."""
    if not isinstance(data, dict):
        return []
    known: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        known[name] = f.annotation
        if f.alias:
            known[f.alias] = f.annotation
    found = []
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            found.append(path)
            continue
        annotation = known[key]
        if isinstance(value, list):
            item = _list_item(annotation)
            inner = _models_in(item) if item is not None else []
            if len(inner) == 1:
                for i, v in enumerate(value):
                    found += unknown_keys(v, inner[0], f"{path}[{i}]")
        else:
            models = _models_in(annotation)
            if len(models) == 1:
                found += unknown_keys(value, models[0], path)
    return found


def _deployment_label(app: dict, dep: dict) -> str:
    return f"applications[{app.get('name', '?')}].deployments[{dep.get('name', '?')}]"


def model_deployments(args: "AppArgs") -> tuple[str, ...]:
    """The model deployments an app of these args consists of (besides the ingress)."""
    if args.colocate == "ingress":
        return ()
    return COLOCATED_DEPLOYMENTS if args.colocate else GENERATOR_DEPLOYMENTS[args.generator]


def check_config(data: dict):
    """Validate a Serve config mapping: Ray's schema, no unknown keys anywhere, our args and user_configs.

    Returns Ray's `ServeDeploySchema`; raises `ValueError` naming the first problem found.
    """
    from ray.serve.schema import ServeDeploySchema

    unknown = unknown_keys(data, ServeDeploySchema)
    if unknown:
        raise ValueError(f"unknown keys in Serve config: {', '.join(unknown)}")
    try:
        schema = ServeDeploySchema.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid Serve config: {' '.join(str(exc).split())[:500]}") from None
    for app in data.get("applications") or []:
        if app.get("import_path") == APP_BUILDER:
            try:
                parsed = AppArgs.model_validate(app.get("args") or {})
            except ValidationError as exc:
                raise ValueError(f"applications[{app.get('name', '?')}].args: {_first_error(exc)}") from None
            # Serve refuses options for a deployment the app does not have only at deploy time; say it here.
            own = model_deployments(parsed)
            others = {d for deps in (*GENERATOR_DEPLOYMENTS.values(), COLOCATED_DEPLOYMENTS) for d in deps} - set(own)
            for dep in app.get("deployments") or []:
                if dep.get("name") in others:
                    layout = f"generator {parsed.generator!r}" + (f" with colocate: {str(parsed.colocate).lower()}" if parsed.colocate else "")
                    raise ValueError(
                        f"{_deployment_label(app, dep)}: {layout} has no {dep['name']} deployment "
                        f"(its model deployments: {', '.join(own) or 'none, the ingress hosts the models'})"
                    )
        for dep in app.get("deployments") or []:
            if dep.get("name") in TUNED_DEPLOYMENTS and dep.get("user_config") is not None:
                try:
                    DeploymentTuning.model_validate(dep["user_config"])
                except ValidationError as exc:
                    raise ValueError(f"{_deployment_label(app, dep)}.user_config: {_first_error(exc)}") from None
    return schema


def check_http_auth(schema, environ: Optional[dict] = None) -> None:
    """Refuse (`serve.auth.AuthConfigError`) a checked config whose proxy binds a non-loopback host while
    one of our apps has no API token, from `environ` (default: this process's) or its `args.auth.token`.

    What the ingress replicas check again at start-up, with their own environment; this check says it
    before anything starts where the replicas will run with this process's environment (a local cluster).
    """
    host = schema.http_options.host
    for app in schema.applications:
        if app.import_path == APP_BUILDER:
            auth = AppArgs.model_validate(app.args or {}).auth
            check_exposure(host, resolve_token(auth.token, auth.token_env, environ), auth.token_env)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]


def with_overrides(
    data: dict,
    models_dir: Optional[str | Path] = None,
    host: Optional[str] = None,
    port: Optional[int] = None,
    user_config: Optional[dict] = None,
    deployments: Optional[dict[str, dict]] = None,
    args: Optional[dict] = None,
) -> dict:
    """A copy of a config mapping with the caller's choices applied to every app of ours.

    `user_config` is merged into both model deployments' user_config; `deployments` maps a
    deployment name to options that replace the file's (e.g. smaller queues in a test); `args`
    entries replace the app's `args` entries (e.g. `registry`).
    """
    out = copy.deepcopy(data)
    if host is not None or port is not None:
        http = out.setdefault("http_options", {})
        if host is not None:
            http["host"] = host
        if port is not None:
            http["port"] = int(port)
    for app in out.get("applications") or []:
        if app.get("import_path") != APP_BUILDER:
            continue
        if models_dir is not None:
            app.setdefault("args", {})["models_dir"] = str(Path(models_dir).resolve())
        if args:
            app.setdefault("args", {}).update(copy.deepcopy(args))
        for dep in app.get("deployments") or []:
            if user_config is not None and dep.get("name") in TUNED_DEPLOYMENTS:
                dep["user_config"] = {**(dep.get("user_config") or {}), **user_config}
            dep.update(copy.deepcopy((deployments or {}).get(dep.get("name"), {})))
    return out
