"""Cluster manifests, checked offline against the schemas the real systems apply.

KubeRay manifests against KubeRay's own CRDs (read from ../shared/schemas/kuberay, strict about
unknown fields), every embedded Serve config against Ray's `ServeDeploySchema` (plus the project's
unknown-key check), the launcher YAML against Ray's ray-schema.json. Each check is also shown to
fail on a deliberately broken copy, for the reason it was broken.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from cluster import render, validate

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = ROOT.parent / "shared" / "schemas" / "kuberay"
KUBERAY = ROOT / "cluster" / "kuberay"
LAUNCHER = ROOT / "cluster" / "launcher" / "aws-gpu.yaml"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

needs_crds = pytest.mark.skipif(
    not all((CRD_DIR / f).is_file() for f in validate.CRD_FILES.values()),
    reason=f"KubeRay CRDs not found in {CRD_DIR} (KubeRay's ray-operator/config/crd/bases)",
)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _serve(manifest: dict) -> dict:
    return yaml.safe_load(manifest["spec"]["serveConfigV2"])


def _deployments(config: dict) -> dict[str, dict]:
    (app,) = config["applications"]
    return {d["name"]: d for d in app["deployments"]}


def test_the_project_ships_every_kind_of_manifest() -> None:
    names = {p.relative_to(ROOT / "cluster").as_posix() for p in validate.cluster_files()}
    assert {"kuberay/rayservice.yaml", "kuberay/rayjob-tune.yaml", "launcher/aws-gpu.yaml", "launcher/serve-config.yaml",
            "local/serve-config.yaml"} <= names


@needs_crds
@pytest.mark.parametrize("path", validate.cluster_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_manifest_is_valid(path: Path) -> None:
    assert validate.check_file(path, CRD_DIR) == []


def test_committed_renders_equal_a_fresh_render() -> None:
    assert render.stale() == [], "run `python -m cluster.render` and commit the result"


def test_serve_config_v2_passes_rays_own_schema_and_keeps_the_project_app() -> None:
    from ray.serve.schema import ServeDeploySchema

    base = _load(ROOT / "serve" / "config.yaml")
    for config in (_serve(_load(KUBERAY / "rayservice.yaml")), _load(ROOT / "cluster" / "local" / "serve-config.yaml"),
                   _load(ROOT / "cluster" / "launcher" / "serve-config.yaml")):
        schema = ServeDeploySchema.model_validate(config)
        assert [a.import_path for a in schema.applications] == [a["import_path"] for a in base["applications"]]
        assert set(_deployments(config)) == {d["name"] for d in base["applications"][0]["deployments"]}


def test_local_config_pins_denoiser_and_classifier_to_different_nodes() -> None:
    from cluster.local.nodes import default_nodes

    deps = _deployments(_load(ROOT / "cluster" / "local" / "serve-config.yaml"))
    markers = {name: set(d["ray_actor_options"]["resources"]) for name, d in deps.items()}
    assert markers == {"SpeechIngress": {"head_node"}, "Denoiser": {"denoiser_node"}, "Classifier": {"classifier_node"}}
    # each marker exists on exactly one node of the local cluster, and every replica the config may start fits there
    nodes = default_nodes()
    for name, d in deps.items():
        (marker,) = markers[name]
        owners = [n for n in nodes if marker in n.resources]
        assert len(owners) == 1
        most = d.get("autoscaling_config", {}).get("max_replicas", d.get("num_replicas", 1))
        assert most * d["ray_actor_options"]["resources"][marker] <= owners[0].resources[marker]
    assert deps["Denoiser"]["ray_actor_options"]["num_cpus"] == _deployments(_load(ROOT / "serve" / "config.yaml"))["Denoiser"]["ray_actor_options"]["num_cpus"]


def test_rayservice_has_gpu_workers_autoscaling_and_fractional_gpu_replicas() -> None:
    manifest = _load(KUBERAY / "rayservice.yaml")
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpu = groups["gpu"]
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    deps = _deployments(_serve(manifest))
    assert 0 < deps["Denoiser"]["ray_actor_options"]["num_gpus"] < 1 and 0 < deps["Classifier"]["ray_actor_options"]["num_gpus"] < 1
    # the denoiser can autoscale to every GPU the group may have, and not beyond
    per_gpu = round(1 / deps["Denoiser"]["ray_actor_options"]["num_gpus"])
    assert deps["Denoiser"]["autoscaling_config"]["max_replicas"] == per_gpu * gpu["maxReplicas"]
    # the ingress asks for the CPU group's marker, which only that group carries
    assert set(deps["SpeechIngress"]["ray_actor_options"]["resources"]) == set(groups["cpu"]["resources"])
    assert _serve(manifest)["http_options"]["host"] == "0.0.0.0"


def test_rayjob_entrypoint_is_a_valid_speechguide_tune_command() -> None:
    import typer

    from speechguide.cli import app

    job = _load(KUBERAY / "rayjob-tune.yaml")
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:2] == ["speechguide", "tune"]
    command = typer.main.get_command(app)
    tune = command.get_command(None, "tune")  # type: ignore[arg-type]
    ctx = tune.make_context("tune", args[2:])  # parses and type-checks every option, runs nothing
    assert ctx.params["trials"] == 20 and ctx.params["storage_path"].startswith("s3://")
    assert ctx.params["gpus_per_trial"] > 0
    (worker,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert ctx.params["max_concurrent"] <= worker["maxReplicas"] * gpus / ctx.params["gpus_per_trial"]


def test_launcher_gpu_node_types_have_integer_gpus() -> None:
    config = _load(LAUNCHER)
    gpu_types = {k: v for k, v in config["available_node_types"].items() if "GPU" in v["resources"]}
    assert gpu_types and all(isinstance(v["resources"]["GPU"], int) and v["resources"]["GPU"] >= 1 for v in gpu_types.values())
    assert validate.check_launcher(config) == []
    # every resource the launcher's Serve config asks for exists on some node type, with room for it
    offered: dict[str, int] = {}
    for node in config["available_node_types"].values():
        for k, v in node["resources"].items():
            offered[k] = max(offered.get(k, 0), v)
    for name, dep in _deployments(_load(ROOT / "cluster" / "launcher" / "serve-config.yaml")).items():
        opts = dep["ray_actor_options"]
        assert opts.get("num_gpus", 0) <= offered["GPU"] and opts.get("num_cpus", 1) <= offered["CPU"], name
        assert all(0 < v <= offered.get(k, 0) for k, v in opts.get("resources", {}).items()), (name, opts)


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """Set (or delete) the item at a "/"-separated path; "~" inside a key stands for "/"."""

    def apply(doc: dict) -> None:
        *parents, last = [k.replace("~", "/") for k in path.split("/")]
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return apply


_DELETE = object()


def _edit_serve(old: str, new: str) -> Callable[[dict], None]:
    def apply(doc: dict) -> None:
        text = doc["spec"]["serveConfigV2"]
        assert old in text
        doc["spec"]["serveConfigV2"] = text.replace(old, new, 1)

    return apply


GPU_GROUP = "spec/rayClusterConfig/workerGroupSpecs/1"
BROKEN_RAYSERVICE = [
    ("replicas-not-integer", _set(f"{GPU_GROUP}/replicas", "2"), "replicas: '2' is not of type 'integer'"),
    ("unknown-group-field", _set(f"{GPU_GROUP}/replica", 2), "'replica' was unexpected"),
    ("missing-maxReplicas", _set(f"{GPU_GROUP}/maxReplicas", _DELETE), "'maxReplicas' is a required property"),
    ("gpu-not-a-quantity", _set(f"{GPU_GROUP}/template/spec/containers/0/resources/limits/nvidia.com~gpu", "one"), "does not match"),
    ("autoscaling-flag-string", _set("spec/rayClusterConfig/enableInTreeAutoscaling", "true"), "is not of type 'boolean'"),
    ("no-head-group", _set("spec/rayClusterConfig/headGroupSpec", _DELETE), "'headGroupSpec' is a required property"),
    ("serve-config-not-a-string", _set("spec/serveConfigV2", {"applications": []}), "serveConfigV2: {'applications': []} is not of type 'string'"),
    ("serve-misspelled-key", _edit_serve("max_queued_requests: 1024", "max_queued_request: 1024"), "unknown keys in Serve config"),
    ("serve-bad-replicas", _edit_serve("num_replicas: 2", "num_replicas: many"), "num_replicas"),
    ("serve-bad-app-arg", _edit_serve("retry_s: 30", "retry_s: -1"), "retry_s"),
    ("wrong-kind", _set("kind", "RayServe"), "is not one of"),
]


@needs_crds
@pytest.mark.parametrize("name,breaks,expected", BROKEN_RAYSERVICE, ids=[b[0] for b in BROKEN_RAYSERVICE])
def test_a_broken_rayservice_fails_for_the_reason_it_was_broken(name: str, breaks: Callable[[dict], None], expected: str) -> None:
    manifest = _load(KUBERAY / "rayservice.yaml")
    assert validate.check_kuberay(manifest, CRD_DIR) == []
    broken = copy.deepcopy(manifest)
    breaks(broken)
    problems = validate.check_kuberay(broken, CRD_DIR)
    assert problems and any(expected in p for p in problems), problems


BROKEN_RAYJOB = [
    ("entrypoint-list", _set("spec/entrypoint", ["speechguide", "tune"]), "is not of type 'string'"),
    ("shutdown-flag-string", _set("spec/shutdownAfterJobFinishes", "yes"), "is not of type 'boolean'"),
    ("unknown-spec-field", _set("spec/entryPoint", "speechguide tune"), "'entryPoint' was unexpected"),
    ("runtime-env-not-yaml", _set("spec/runtimeEnvYAML", "env_vars: [unclosed"), "runtimeEnvYAML: not YAML"),
    ("worker-missing-template", _set("spec/rayClusterSpec/workerGroupSpecs/0/template", _DELETE), "'template' is a required property"),
]


@needs_crds
@pytest.mark.parametrize("name,breaks,expected", BROKEN_RAYJOB, ids=[b[0] for b in BROKEN_RAYJOB])
def test_a_broken_rayjob_fails_for_the_reason_it_was_broken(name: str, breaks: Callable[[dict], None], expected: str) -> None:
    job = _load(KUBERAY / "rayjob-tune.yaml")
    assert validate.check_kuberay(job, CRD_DIR) == []
    breaks(job)
    problems = validate.check_kuberay(job, CRD_DIR)
    assert problems and any(expected in p for p in problems), problems


BROKEN_LAUNCHER = [
    ("fractional-gpu", _set("available_node_types/gpu_a10g/resources/GPU", 0.5), "0.5 is not of type 'integer'"),
    ("string-cpu", _set("available_node_types/head/resources/CPU", "4"), "'4' is not of type 'integer'"),
    ("no-provider", _set("provider", _DELETE), "'provider' is a required property"),
    ("unknown-top-level-key", _set("max_worker", 3), "'max_worker' was unexpected"),
    ("no-node-config", _set("available_node_types/gpu_a10g/node_config", _DELETE), "'node_config' is a required property"),
    ("unknown-head-type", _set("head_node_type", "ray_head"), "head_node_type: 'ray_head' is not one of"),
    ("min-over-max", _set("available_node_types/gpu_a10g/min_workers", 9), "min_workers 9 > max_workers 4"),
]


@pytest.mark.parametrize("name,breaks,expected", BROKEN_LAUNCHER, ids=[b[0] for b in BROKEN_LAUNCHER])
def test_a_broken_launcher_config_fails_for_the_reason_it_was_broken(name: str, breaks: Callable[[dict], None], expected: str) -> None:
    config = _load(LAUNCHER)
    assert validate.check_launcher(config) == []
    breaks(config)
    problems = validate.check_launcher(config)
    assert problems and any(expected in p for p in problems), problems


def test_the_crd_schemas_are_made_strict_only_where_kubernetes_is() -> None:
    schema = validate._strict({"type": "object", "properties": {"a": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"b": {}}},
                                                                "m": {"type": "object", "additionalProperties": {"type": "string"}},
                                                                "n": {"type": "string", "nullable": True}}})
    assert schema["additionalProperties"] is False
    assert "additionalProperties" not in schema["properties"]["a"]  # preserve-unknown-fields stays open
    assert schema["properties"]["m"]["additionalProperties"] == {"type": "string"}  # maps stay maps
    assert schema["properties"]["n"]["type"] == ["string", "null"]


def test_overlay_merges_by_name_and_refuses_unknown_deployments() -> None:
    base = {"applications": [{"name": "a", "deployments": [{"name": "D", "ray_actor_options": {"num_cpus": 1}}, {"name": "C"}]}]}
    merged = render.merge(base, {"applications": [{"name": "a", "deployments": [{"name": "D", "ray_actor_options": {"resources": {"x": 0.01}}}]}]})
    assert merged["applications"][0]["deployments"][0]["ray_actor_options"] == {"num_cpus": 1, "resources": {"x": 0.01}}
    assert merged["applications"][0]["deployments"][1] == {"name": "C"} and base["applications"][0]["deployments"][0]["ray_actor_options"] == {"num_cpus": 1}
    with pytest.raises(ValueError, match="lacks"):
        render.merge(base, {"applications": [{"name": "a", "deployments": [{"name": "Denoizer"}]}]})


def test_local_start_commands_never_share_a_port_nor_use_rays_defaults(tmp_path: Path) -> None:
    from cluster.local import nodes

    cmds = [nodes.start_command(s, i, 6391, tmp_path, 100 * 2**20, nodes.free_port()) for i, s in enumerate(nodes.default_nodes())]
    ports: list[int] = []
    for cmd in cmds:
        opts = dict(a[2:].split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
        ports += [int(v) for k, v in opts.items() if k.endswith("-port") and k not in ("min-worker-port", "max-worker-port")]
        lo, hi = int(opts["min-worker-port"]), int(opts["max-worker-port"])
        assert 20000 <= lo < hi < 32768
        ports += list(range(lo, hi + 1))
        assert "--block" in cmd
    assert len(ports) == len(set(ports))
    assert 6379 not in ports and 8265 not in ports and 10001 not in ports and 52365 not in ports
    head = dict(a[2:].split("=", 1) for a in cmds[0] if a.startswith("--") and "=" in a)
    assert head["dashboard-host"] == "127.0.0.1" and head["temp-dir"] == str(tmp_path) and head["port"] == "6391"
    assert all(f"--address=127.0.0.1:6391" in c for c in cmds[1:])


def test_cluster_check_command_exits_1_on_a_broken_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from speechguide.cli import app

    config = _load(LAUNCHER)
    config["available_node_types"]["gpu_a10g"]["resources"]["GPU"] = 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["cluster", "check", str(bad), str(LAUNCHER)])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "0.5 is not of type 'integer'" in result.output and f"ok   {LAUNCHER}" in result.output
