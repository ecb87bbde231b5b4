"""Check cluster manifests offline, against the schemas the real systems apply.

- KubeRay RayService / RayJob / RayCluster: the CRD's OpenAPI schema (from KubeRay's published
  CRDs, read from a directory given by the caller, never copied here), made strict the way
  `kubectl apply --validate=strict` is: an unknown field is an error, not silently pruned.
- A RayService's `spec.serveConfigV2`: parsed as YAML and checked by `serve.config.check_config`
  (Ray's `ServeDeploySchema` plus refusal of unknown keys, which Ray's schema lets through).
- A Ray cluster launcher YAML: the `ray-schema.json` shipped inside the installed `ray` package,
  plus the cross-field rules the launcher applies (the head type exists, workers within limits).

Every check returns a list of problems (empty: valid), so a test can assert a broken manifest
fails for the reason it was broken.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, Iterable

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CRD_DIR = ROOT.parent / "shared" / "schemas" / "kuberay"
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}


def _strict(schema: Any) -> Any:
    """OpenAPI v3 (Kubernetes dialect) to JSON Schema, refusing unknown fields.

    `nullable: true` becomes a `null` type; an object with `properties` and no
    `additionalProperties` or `x-kubernetes-preserve-unknown-fields` gets
    `additionalProperties: false` (the API server's strict field validation).
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=8)
def _crd_schema(kind: str, crd_dir: str) -> dict:
    path = Path(crd_dir) / CRD_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(f"KubeRay CRD for {kind} not found: {path}")
    crd = yaml.safe_load(path.read_text())
    versions = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    if not versions:
        raise ValueError(f"{path} has no v1 version")
    schema = _strict(versions[0]["schema"]["openAPIV3Schema"])
    # The API server checks these itself (any metadata is an ObjectMeta); pin them for a manifest.
    schema = copy.deepcopy(schema)
    schema["properties"]["apiVersion"] = {"const": "ray.io/v1"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    schema["properties"]["metadata"] = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    return schema


def _errors(instance: Any, schema: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        out.append(f"{where}: {err.message[:300]}")
    return out


def check_kuberay(manifest: Any, crd_dir: Path | str = DEFAULT_CRD_DIR) -> list[str]:
    """Problems with a KubeRay manifest: CRD schema (strict), then the embedded Serve config."""
    if not isinstance(manifest, dict):
        return ["manifest is not a mapping"]
    kind = manifest.get("kind")
    if kind not in CRD_FILES:
        return [f"kind: {kind!r} is not one of {', '.join(CRD_FILES)}"]
    problems = _errors(manifest, _crd_schema(kind, str(Path(crd_dir).resolve())))
    spec = manifest.get("spec") if isinstance(manifest.get("spec"), dict) else {}
    if kind == "RayService" and isinstance(spec.get("serveConfigV2"), str):
        problems += [f"spec.serveConfigV2: {p}" for p in check_serve_config_text(spec["serveConfigV2"])]
    if kind == "RayJob" and isinstance(spec.get("runtimeEnvYAML"), str):
        try:
            if not isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict):
                problems.append("spec.runtimeEnvYAML: must hold a mapping")
        except yaml.YAMLError as exc:
            problems.append(f"spec.runtimeEnvYAML: not YAML: {' '.join(str(exc).split())[:200]}")
    return problems


def check_serve_config_text(text: str) -> list[str]:
    """Problems with a Serve config given as YAML text (what serveConfigV2 holds)."""
    from serve.config import check_config

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"not YAML: {' '.join(str(exc).split())[:200]}"]
    if not isinstance(data, dict):
        return ["must hold a mapping"]
    try:
        check_config(data)
    except ValueError as exc:
        return [str(exc)]
    return []


@functools.lru_cache(maxsize=1)
def launcher_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def check_launcher(config: Any) -> list[str]:
    """Problems with a Ray cluster launcher config: Ray's schema, then the launcher's cross-field rules."""
    if not isinstance(config, dict):
        return ["config is not a mapping"]
    problems = _errors(config, launcher_schema())
    types = config.get("available_node_types")
    if isinstance(types, dict):
        head = config.get("head_node_type")
        if head not in types:
            problems.append(f"head_node_type: {head!r} is not one of available_node_types ({', '.join(types)})")
        total = config.get("max_workers")
        for name, node in types.items():
            if not isinstance(node, dict):
                continue
            lo, hi = node.get("min_workers", 0), node.get("max_workers", 0)
            if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
                problems.append(f"available_node_types.{name}: min_workers {lo} > max_workers {hi}")
            if isinstance(total, int) and isinstance(hi, int) and hi > total and name != head:
                problems.append(f"available_node_types.{name}: max_workers {hi} > cluster max_workers {total}")
    return problems


def check_file(path: Path | str, crd_dir: Path | str = DEFAULT_CRD_DIR) -> list[str]:
    """Problems with any cluster file: every YAML document in it, by what it is."""
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        return [f"not YAML: {' '.join(str(exc).split())[:300]}"]
    if not docs:
        return ["no YAML document"]
    problems = []
    for i, doc in enumerate(docs):
        prefix = f"document {i}: " if len(docs) > 1 else ""
        if isinstance(doc, dict) and "provider" in doc and "kind" not in doc:
            found = check_launcher(doc)
        elif isinstance(doc, dict) and "applications" in doc and "kind" not in doc:
            found = check_serve_config_text(yaml.safe_dump(doc))
        else:
            found = check_kuberay(doc, crd_dir)
        problems += [prefix + p for p in found]
    return problems


def cluster_files(root: Path = ROOT / "cluster") -> list[Path]:
    """Every manifest the project ships: KubeRay, launcher, and the local Serve config."""
    found: Iterable[Path] = [
        *sorted((root / "kuberay").glob("*.yaml")),
        *sorted((root / "launcher").glob("*.yaml")),
        root / "local" / "serve-config.yaml",
    ]
    # The *.base.yaml and overlay files are inputs to `cluster.render`, not manifests.
    return [p for p in found if p.is_file() and not p.name.endswith(".base.yaml") and "overlay" not in p.name]
