"""The MLflow model registry: model files and guidance profiles as registered models with aliases.

Every model file (`models/*.safetensors`) is registered through a pyfunc wrapper whose artifact is
the safetensors file itself, with its feature config and a tensor signature: MLflow 3's
`mlflow.pytorch.log_model` defaults to a `torch.export` format that does not suit sampler control
flow, and the project never unpickles weights anyway. A guidance profile is registered the same way
with its JSON as the artifact (`speechguide-profile` by default). Versions are addressed by alias
(`models:/name@alias`; stages are deprecated): registration sets `candidate`, `promote` moves
`production`, and consumers (the Serve app) follow the alias.

Every public function takes the tracking URI as the keyword argument `tracking_uri`; left out, it is
`mlops.tracking.default_tracking_uri()` (a SQLite store in the working directory unless
`MLFLOW_TRACKING_URI` says otherwise). The registry URI equals it. All calls go through an explicit
`MlflowClient`, never MLflow's process-global state, so they are safe inside a process that also
tracks runs elsewhere. Never imports Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import mlflow.pyfunc
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from guidance.files import file_sha256
from guidance.guides.profile import GuidanceProfile
from mlops import tracking
from mlops.tracking import resolve_tracking_uri

PROFILE_MODEL_NAME = "speechguide-profile"
REGISTRY_EXPERIMENT = "speechguide-registry"
CANDIDATE, PRODUCTION = "candidate", "production"
MODEL_ARTIFACT_PATH = "model"
PROFILE_FILE = "profile.json"
# The pyfunc wrapper needs this project installed wherever it is loaded; listing the requirements
# explicitly also spares MLflow from importing the model in a subprocess to infer them.
PIP_REQUIREMENTS = ["torch", "safetensors", "numpy", "pydantic>=2", "speechguide"]


class RegistryError(Exception):
    """An unknown model, version or alias, or an unreachable registry: one line for the user."""


class RegistryUnavailable(RegistryError):
    """The registry did not answer (server down, network): not the user's input, worth trying again later."""


# ---- connection ---------------------------------------------------------------------------------


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (RegistryError) when a tracking server does not answer, instead of MLflow's long retries."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as r:
            if r.status == 200:
                return
            raise RegistryUnavailable(f"MLflow server at {uri} answered /health with HTTP {r.status}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryUnavailable(f"MLflow server at {uri} is not reachable ({reason})") from None


def client(*, tracking_uri: Optional[str] = None) -> MlflowClient:
    """`mlops.tracking.client`, after checking that a tracking server answers (RegistryError if not)."""
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    return tracking.client(tracking_uri=uri)


def _not_found(exc: MlflowException) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(exc).lower()


# ---- what the registry holds ----------------------------------------------------------------------


@dataclass(frozen=True)
class VersionInfo:
    """One registered model version: what `models list` shows and what consumers resolve."""

    name: str
    version: int
    aliases: tuple[str, ...]
    tags: dict[str, str]
    source: str
    run_id: Optional[str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class RegisteredInfo:
    name: str
    aliases: dict[str, int]
    tags: dict[str, str]
    versions: list[VersionInfo] = field(default_factory=list)


def _version_info(mv: Any) -> VersionInfo:
    return VersionInfo(
        name=mv.name,
        version=int(mv.version),
        aliases=tuple(sorted(getattr(mv, "aliases", []) or [])),
        tags=dict(mv.tags or {}),
        source=mv.source,
        run_id=mv.run_id,
    )


def parse_ref(ref: str, default_alias: str = PRODUCTION) -> tuple[str, str]:
    """`name@alias`, `name/version` or a bare `name` (meaning `name@default_alias`) -> (name, alias or version)."""
    ref = ref.strip().removeprefix("models:/")
    if "@" in ref:
        name, _, alias = ref.partition("@")
    elif "/" in ref:
        name, _, alias = ref.partition("/")
    else:
        name, alias = ref, default_alias
    if not name or not alias:
        raise RegistryError(f"bad model reference {ref!r}; use NAME@ALIAS or NAME/VERSION")
    return name, alias


def resolve(name: str, alias: Union[str, int] = PRODUCTION, *, tracking_uri: Optional[str] = None) -> VersionInfo:
    """The version `alias` points at (an integer or digit string is a version number itself)."""
    c = client(tracking_uri=tracking_uri)
    try:
        if isinstance(alias, int) or str(alias).isdigit():
            mv = c.get_model_version(name, str(alias))
        elif alias == "latest":
            versions = c.search_model_versions(f"name = '{name}'")
            if not versions:
                raise RegistryError(f"registered model {name!r} has no versions")
            mv = max(versions, key=lambda v: int(v.version))
        else:
            mv = c.get_model_version_by_alias(name, str(alias))
    except MlflowException as exc:
        if _not_found(exc):
            known = _known_aliases(c, name)
            if known is None:
                raise RegistryError(f"no registered model {name!r} in {resolve_tracking_uri(tracking_uri)}") from None
            raise RegistryError(
                f"registered model {name!r} has no {'version' if str(alias).isdigit() else 'alias'} {str(alias)!r}"
                f"; aliases: {', '.join(sorted(known)) or 'none'}"
            ) from None
        check_reachable(resolve_tracking_uri(tracking_uri))  # the server went away mid-call: RegistryUnavailable
        raise
    info = _version_info(mv)
    if not info.aliases:  # some stores leave a version's aliases out: read them off the registered model
        known = _known_aliases(c, name) or {}
        info = dataclasses.replace(info, aliases=tuple(sorted(a for a, v in known.items() if int(v) == info.version)))
    return info


def _known_aliases(c: MlflowClient, name: str) -> Optional[dict[str, str]]:
    try:
        return dict(c.get_registered_model(name).aliases or {})
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def list_registered(*, tracking_uri: Optional[str] = None) -> list[RegisteredInfo]:
    """Every registered model with its versions, aliases and tags (sorted by name, versions ascending)."""
    c = client(tracking_uri=tracking_uri)
    out = []
    for rm in c.search_registered_models(max_results=1000):
        by_version: dict[int, list[str]] = {}
        for a, v in (rm.aliases or {}).items():  # version searches do not carry aliases in every store
            by_version.setdefault(int(v), []).append(a)
        versions = sorted(
            (
                dataclasses.replace(info, aliases=tuple(sorted(set(info.aliases) | set(by_version.get(info.version, [])))))
                for info in map(_version_info, c.search_model_versions(f"name = '{rm.name}'"))
            ),
            key=lambda v: v.version,
        )
        out.append(
            RegisteredInfo(
                name=rm.name,
                aliases={a: int(v) for a, v in (rm.aliases or {}).items()},
                tags=dict(rm.tags or {}),
                versions=versions,
            )
        )
    return sorted(out, key=lambda r: r.name)


def promote(
    name: str, version_or_alias_from: Union[str, int] = CANDIDATE, to: str = PRODUCTION, *, tracking_uri: Optional[str] = None
) -> int:
    """Point alias `to` at the version `version_or_alias_from` names (a version or an alias); returns it."""
    if not to or to.isdigit() or to == "latest":
        raise RegistryError(f"cannot use {to!r} as an alias")
    info = resolve(name, version_or_alias_from, tracking_uri=tracking_uri)
    uri = resolve_tracking_uri(tracking_uri)
    try:  # one write on the server: the alias moved or it did not, never half
        client(tracking_uri=uri).set_registered_model_alias(name, to, str(info.version))
    except MlflowException as exc:
        try:
            check_reachable(uri)
        except RegistryUnavailable as down:
            raise RegistryUnavailable(
                f"{down}; the promotion of {name} version {info.version} to {to!r} was not confirmed: run it again when the "
                "server is back (promoting the same version twice changes nothing)"
            ) from None
        raise RegistryError(f"could not move {name}@{to} to version {info.version}: {' '.join(str(exc).split())[:300]}") from None
    return info.version


# ---- pyfunc wrappers ------------------------------------------------------------------------------


class SafetensorsModel(mlflow.pyfunc.PythonModel):
    """A speechguide model file as an MLflow pyfunc: loads weights with safetensors, no pickles.

    `predict` takes `{"x": (B,1,M,T), "sigma": (B,)}` (denoisers, classifiers; a clean classifier
    ignores sigma) or `{"mel": (B,1,M,T)}` (judges) as float32 arrays and returns the model's
    output: x0_hat for denoisers, logits for classifiers and judges.
    """

    _skip_type_hint_validation = True  # the tensor signature validates inputs, not type hints

    def load_context(self, context: Any) -> None:
        from guidance.models import load_model

        self.file = load_model(Path(context.artifacts["weights"]))

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        def arr(key: str) -> torch.Tensor:
            value = model_input[key] if isinstance(model_input, dict) else model_input
            return torch.as_tensor(np.asarray(value, dtype=np.float32))

        with torch.no_grad():
            if self.file.kind == "judge":
                out = self.file.model(arr("mel"))
            elif self.file.kind == "classifier" and not self.file.config.get("noise_conditioned"):
                out = self.file.model(arr("x"))
            else:
                out = self.file.model(arr("x"), arr("sigma"))
        return out.float().numpy()


class ProfileModel(mlflow.pyfunc.PythonModel):
    """A guidance profile as an MLflow pyfunc: `predict` returns the profile's JSON."""

    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        self.profile = GuidanceProfile.load(context.artifacts["profile"])

    def predict(self, context, model_input, params=None):
        return [self.profile.to_json()]


def _model_code(directory: Path, cls: str) -> str:
    """A models-from-code file naming the wrapper class: the logged model holds no pickle at all."""
    code = directory / "speechguide_pyfunc.py"
    code.write_text(f"import mlflow.models\nfrom mlops.registry import {cls}\n\nmlflow.models.set_model({cls}())\n")
    return str(code)


def _signature(meta: dict) -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec
    import numpy as np

    spec = meta["feature_spec"]
    mel = (-1, 1, int(spec["n_mels"]), int(spec["frames"]))
    f32 = np.dtype("float32")
    kind = meta["kind"]
    if kind == "judge":
        inputs = Schema([TensorSpec(f32, mel, "mel")])
    else:
        inputs = Schema([TensorSpec(f32, mel, "x"), TensorSpec(f32, (-1,), "sigma")])
    if kind in ("classifier", "judge"):
        outputs = Schema([TensorSpec(f32, (-1, max(len(meta.get("labels") or []), 1)), "logits")])
    else:
        outputs = Schema([TensorSpec(f32, mel, "x0_hat")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _profile_signature() -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", "guide", required=False)]), outputs=Schema([ColSpec("string", "profile_json")]))


# ---- registering ----------------------------------------------------------------------------------


def _existing_version(c: MlflowClient, name: str, sha256: str) -> Optional[VersionInfo]:
    try:
        c.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise
    for mv in c.search_model_versions(f"name = '{name}'"):
        if (mv.tags or {}).get("sha256") == sha256:
            return _version_info(mv)
    return None


def _register_saved(
    c: MlflowClient,
    uri: str,
    name: str,
    model_dir: Path,
    tags: dict[str, str],
    description: str,
    metrics: Optional[dict] = None,
    run_id: Optional[str] = None,
) -> int:
    """Upload a saved pyfunc directory to a run and create a model version from it."""
    own_run = run_id is None
    if own_run:
        exp_id = tracking.experiment_id(REGISTRY_EXPERIMENT, tracking_uri=uri)
        run = c.create_run(exp_id, run_name=f"register {name}", tags={"speechguide.registered_model": name})
        run_id = run.info.run_id
    artifact_path = MODEL_ARTIFACT_PATH if own_run else f"registered/{name}"
    try:
        c.log_artifacts(run_id, str(model_dir), artifact_path)
        if own_run and metrics:
            c.log_batch(run_id, metrics=[_metric(k, v) for k, v in metrics.items()])
        run_artifacts = c.get_run(run_id).info.artifact_uri
    finally:
        if own_run:
            c.set_terminated(run_id)
    try:
        c.create_registered_model(name, description=description)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = c.create_model_version(name, source=f"{run_artifacts}/{artifact_path}", run_id=run_id, tags=tags, description=description)
    return int(mv.version)


def _metric(key: str, value: Any) -> Any:
    import time

    from mlflow.entities import Metric

    return Metric(key=key, value=float(value), timestamp=int(time.time() * 1000), step=0)


def register_model_file(
    path: Union[str, Path],
    name: Optional[str] = None,
    aliases: tuple[str, ...] = (CANDIDATE,),
    production_if_missing: bool = False,
    *,
    tracking_uri: Optional[str] = None,
) -> VersionInfo:
    """Register one model file (name: the file's stem) and set `aliases` on its version.

    A file whose content hash is already registered under `name` is not registered twice: its
    existing version takes the aliases. With `production_if_missing`, the version also becomes
    `production` when the model has no production version yet (a fresh registry serves at once).
    """
    from guidance.models import read_metadata

    path = Path(path)
    try:
        meta = read_metadata(path)
    except (ValueError, FileNotFoundError) as exc:
        raise RegistryError(str(exc)) from None
    name = name or path.stem
    u = resolve_tracking_uri(tracking_uri)
    c = client(tracking_uri=u)
    sha = file_sha256(path)
    existing = _existing_version(c, name, sha)
    if existing is None:
        tags = {
            "sha256": sha,
            "kind": meta["kind"],
            "task": meta.get("task", ""),
            "file": path.name,
            "labels": ",".join(meta.get("labels") or [])[:4000],
            "feature_spec": json.dumps(meta["feature_spec"], sort_keys=True)[:4000],
        }
        tags.update({f"card.{k}": str(v)[:500] for k, v in (meta.get("card") or {}).items() if not isinstance(v, (dict, list))})
        with tempfile.TemporaryDirectory(prefix="speechguide-register-") as tmp:
            weights = Path(tmp) / "weights"
            weights.mkdir()
            shutil.copy2(path, weights / path.name)
            if meta["kind"] == "score-subnet":  # the subnet references its frozen backbone: ship it beside
                from guidance.models.score_subnet import resolve_backbone

                backbone = resolve_backbone(meta["config"]["backbone"], path)
                shutil.copy2(backbone, weights / backbone.name)
            model_dir = _save_pyfunc(
                Path(tmp),
                "SafetensorsModel",
                artifacts={"weights": str(weights / path.name), **_extra_artifacts(weights, path.name)},
                signature=_signature(meta),
                metadata={"kind": meta["kind"], "feature_spec": meta["feature_spec"], "labels": meta.get("labels", [])},
            )
            description = f"speechguide {meta['kind']} model ({path.name})"
            version = _register_saved(c, u, name, model_dir, tags, description)
    else:
        version = existing.version
    for alias in aliases:
        c.set_registered_model_alias(name, alias, str(version))
    if production_if_missing and PRODUCTION not in (_known_aliases(c, name) or {}):
        c.set_registered_model_alias(name, PRODUCTION, str(version))
    return resolve(name, version, tracking_uri=u)


def _save_pyfunc(tmp: Path, class_name: str, artifacts: dict[str, str], signature: Any, metadata: dict) -> Path:
    """Save a pyfunc (its code from `_model_code`, no pickle) under `tmp/model` and return that directory."""
    model_dir = tmp / "model"
    with warnings.catch_warnings():  # no input example, untyped predict: both deliberate
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(
            str(model_dir),
            python_model=_model_code(tmp, class_name),
            artifacts=artifacts,
            signature=signature,
            pip_requirements=PIP_REQUIREMENTS,
            metadata={"speechguide": metadata},
        )
    return model_dir


def _extra_artifacts(weights: Path, main: str) -> dict[str, str]:
    return {f"file{i}": str(p) for i, p in enumerate(sorted(weights.iterdir())) if p.name != main}


def register_models_dir(
    models_dir: Union[str, Path],
    aliases: tuple[str, ...] = (CANDIDATE,),
    production_if_missing: bool = True,
    *,
    tracking_uri: Optional[str] = None,
) -> list[VersionInfo]:
    """Register every `*.safetensors` model file of a directory (see `register_model_file`)."""
    files = sorted(Path(models_dir).glob("*.safetensors"))
    if not files:
        raise RegistryError(f"no *.safetensors model files in {models_dir}")
    return [register_model_file(p, aliases=aliases, production_if_missing=production_if_missing, tracking_uri=tracking_uri) for p in files]


def register_profile(
    profile: GuidanceProfile,
    name: str,
    metrics: dict,
    alias: str = CANDIDATE,
    run_id: Optional[str] = None,
    *,
    tracking_uri: Optional[str] = None,
) -> int:
    """Register a guidance profile as a version of registered model `name`, aliased `alias`; returns the version.

    `metrics` (e.g. the sweep's validation objective) are stored as the version's `metric.*` tags and,
    without `run_id`, logged to the registering run. With `run_id` (e.g. the sweep's parent run) the
    profile's artifacts are logged to that run and the version links to it. The same profile JSON is
    registered once: registering it again moves `alias` to its existing version.
    """
    u = resolve_tracking_uri(tracking_uri)
    c = client(tracking_uri=u)
    text = profile.to_json()
    sha = hashlib.sha256(text.encode()).hexdigest()
    existing = _existing_version(c, name, sha)
    if existing is not None:
        version = existing.version
    else:
        tags = {"sha256": sha, "kind": "guidance-profile", "profile_name": profile.name}
        tags.update({f"metric.{k}": f"{float(v):.6g}" for k, v in metrics.items()})
        with tempfile.TemporaryDirectory(prefix="speechguide-profile-") as tmp:
            pfile = Path(tmp) / PROFILE_FILE
            pfile.write_text(text)
            model_dir = _save_pyfunc(
                Path(tmp),
                "ProfileModel",
                artifacts={"profile": str(pfile)},
                signature=_profile_signature(),
                metadata={"kind": "guidance-profile", "profile": json.loads(text)},
            )
            version = _register_saved(c, u, name, model_dir, tags, f"speechguide guidance profile {profile.name!r}", metrics, run_id)
    c.set_registered_model_alias(name, alias, str(version))
    return version


# ---- loading --------------------------------------------------------------------------------------


def _cache_root() -> Path:
    """Downloaded versions: $SPEECHGUIDE_REGISTRY_CACHE, else registry/ in the project cache."""
    if os.environ.get("SPEECHGUIDE_REGISTRY_CACHE"):
        return Path(os.environ["SPEECHGUIDE_REGISTRY_CACHE"])
    base = os.environ.get("SPEECHGUIDE_CACHE") or Path.home() / ".cache" / "speechguide"
    return Path(base) / "registry"


def download_version(info: VersionInfo, *, tracking_uri: Optional[str] = None) -> Path:
    """The version's pyfunc directory on local disk (downloaded once; versions never change)."""
    import mlflow.artifacts

    key = hashlib.sha256(f"{info.source}|{info.run_id}".encode()).hexdigest()[:16]
    dest = _cache_root() / info.name / f"{info.version}-{key}"
    if (dest / "MLmodel").is_file():
        return dest
    u = resolve_tracking_uri(tracking_uri)
    c = client(tracking_uri=u)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{info.version}-", dir=dest.parent))
    try:
        src = c.get_model_version_download_uri(info.name, str(info.version))
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=src, dst_path=str(tmp), tracking_uri=u))
        if not (got / "MLmodel").is_file():
            raise RegistryError(f"{info.uri} holds no MLflow model (no MLmodel file at {src})")
        try:
            got.replace(dest)
        except OSError:  # another process finished first
            if not (dest / "MLmodel").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model_file(name: str, alias: Union[str, int] = PRODUCTION, *, tracking_uri: Optional[str] = None) -> Path:
    """Local path of the safetensors file behind `models:/name@alias` (downloaded, hash-checked)."""
    info = resolve(name, alias, tracking_uri=tracking_uri)
    if info.tags.get("kind") == "guidance-profile":
        raise RegistryError(f"{name}@{alias} is a guidance profile, not a model file")
    path = download_version(info, tracking_uri=tracking_uri) / "artifacts" / info.tags.get("file", "")
    if not path.is_file():
        found = sorted((download_version(info, tracking_uri=tracking_uri) / "artifacts").rglob("*.safetensors"))
        if not found:
            raise RegistryError(f"{info.uri} holds no safetensors file")
        path = found[0]
    if info.tags.get("sha256") and file_sha256(path) != info.tags["sha256"]:
        raise RegistryError(f"{info.uri}: downloaded file's sha256 differs from the registered one")
    return path


def load_profile_version(
    name: str = PROFILE_MODEL_NAME, alias: Union[str, int] = PRODUCTION, *, tracking_uri: Optional[str] = None
) -> tuple[GuidanceProfile, VersionInfo]:
    """The profile `models:/name@alias` points at, with the version it came from."""
    info = resolve(name, alias, tracking_uri=tracking_uri)
    path = download_version(info, tracking_uri=tracking_uri) / "artifacts" / PROFILE_FILE
    if not path.is_file():
        raise RegistryError(f"{name}@{alias} (version {info.version}) is not a guidance profile")
    return GuidanceProfile.load(path), info


def load_profile(
    name: str = PROFILE_MODEL_NAME, alias: Union[str, int] = PRODUCTION, *, tracking_uri: Optional[str] = None
) -> GuidanceProfile:
    """The guidance profile `models:/name@alias` points at."""
    return load_profile_version(name, alias, tracking_uri=tracking_uri)[0]
