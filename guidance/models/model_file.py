"""The model file format: safetensors weights plus JSON metadata (kind, network config, feature spec,
labels, model card), read and loaded given the builders of the kinds a caller accepts.

This module knows no network: `guidance.models.checkpoint` holds the builder of every kind, and a
model that loads another model file (the ScoreSubnet loads its classifier backbone) passes just the
builders it needs, so neither has to import the other. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file, safe_open

from guidance.features import FeatureSpec

FORMAT = "speechguide-model/1"

Builder = Callable[[dict], torch.nn.Module]


@dataclass
class ModelFile:
    """A loaded model and everything needed to use it correctly."""

    model: torch.nn.Module
    kind: str
    config: dict
    spec: FeatureSpec
    labels: list[str] = field(default_factory=list)
    task: str = ""
    card: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.stem if self.path else self.kind


def config_dict(config: Any) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def from_dict(cls: type, data: dict) -> Any:
    """A config dataclass from its metadata dict (JSON lists back to tuples); unknown fields are refused."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def read_metadata(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("speechguide")
    except Exception as exc:  # safetensors raises its own error types for non-safetensors input
        raise ValueError(f"{path} is not a safetensors model file: {exc}") from exc
    if not raw:
        raise ValueError(f"{path} has no speechguide metadata (not a speechguide model file)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_model_file(
    path: Path,
    builders: Mapping[str, Builder],
    expected_spec: FeatureSpec | None = None,
    kind: str | None = None,
    device: torch.device | str = "cpu",
) -> ModelFile:
    """Load a model file with `builders[kind]`; refuse it if its kind or feature spec is not what the caller expects."""
    meta = read_metadata(path)
    if kind is not None and meta["kind"] != kind:
        raise ValueError(f"{path} holds a {meta['kind']!r} model, expected {kind!r}")
    if meta["kind"] not in builders:
        raise ValueError(f"{path} holds a {meta['kind']!r} model; known kinds: {sorted(builders)}")
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    if expected_spec is not None:
        expected_spec.check_compatible(spec, what=f"model file {path}")
    model = builders[meta["kind"]](meta["config"])
    if hasattr(model, "load_checkpoint_state"):  # loads (and verifies) what the file only references
        model.load_checkpoint_state(load_file(str(path)), Path(path), spec)
    else:
        model.load_state_dict(load_file(str(path)))
    model.to(device).eval()
    return ModelFile(
        model=model,
        kind=meta["kind"],
        config=meta["config"],
        spec=spec,
        labels=meta.get("labels", []),
        task=meta.get("task", ""),
        card=meta.get("card", {}),
        path=Path(path),
    )
