"""Model files: safetensors weights plus JSON metadata (kind, network config, feature spec, labels,
model card). Nothing is ever unpickled, and a model is refused when its front end differs from the
one it is used with.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file, safe_open

from guidance.diffusion.precond import EDMPrecond
from guidance.features import FeatureSpec
from guidance.models.classifier import ClassifierConfig, LogMelClassifier
from guidance.models.judge import JudgeConfig, TDNNJudge
from guidance.models.unet import UNet, UNetConfig

FORMAT = "speechguide-model/1"


def _build_unet_denoiser(cfg: dict) -> torch.nn.Module:
    cfg = dict(cfg)
    sigma_data = cfg.pop("sigma_data", 1.0)
    return EDMPrecond(UNet(_from_dict(UNetConfig, cfg)), sigma_data=sigma_data)


def _from_dict(cls: type, data: dict) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _build_score_subnet(cfg: dict) -> torch.nn.Module:
    from guidance.models.score_subnet import build_single_backbone  # lazy: it imports the guides package

    return build_single_backbone(cfg)


def _build_word_spectra(cfg: dict) -> torch.nn.Module:
    from guidance.models.word_spectra import WordSpectra, WordSpectraConfig

    return WordSpectra(_from_dict(WordSpectraConfig, cfg))


def _build_vocoder(cfg: dict) -> torch.nn.Module:
    from guidance.models.vocoder import NeuralVocoder, VocoderConfig

    return NeuralVocoder(_from_dict(VocoderConfig, cfg))


MODEL_BUILDERS: dict[str, Callable[[dict], torch.nn.Module]] = {
    "denoiser-unet": _build_unet_denoiser,
    "classifier": lambda cfg: LogMelClassifier(_from_dict(ClassifierConfig, cfg)),
    "judge": lambda cfg: TDNNJudge(_from_dict(JudgeConfig, cfg)),
    "score-subnet": _build_score_subnet,
    "word-spectra": _build_word_spectra,
    "vocoder": _build_vocoder,
}


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


def save_model(
    path: Path,
    model: torch.nn.Module,
    kind: str,
    config: dict,
    spec: FeatureSpec,
    labels: list[str] | None = None,
    task: str = "",
    card: dict | None = None,
) -> Path:
    """Write weights and metadata atomically (temp file, then rename)."""
    if kind not in MODEL_BUILDERS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODEL_BUILDERS)}")
    meta = {
        "format": FORMAT,
        "kind": kind,
        "config": config,
        "feature_spec": spec.to_dict(),
        "labels": labels or [],
        "task": task,
        "card": card or {},
    }
    # A model that references frozen weights elsewhere (ScoreSubnet's backbone) saves only its own part.
    state = model.checkpoint_state() if hasattr(model, "checkpoint_state") else model.state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata={"speechguide": json.dumps(meta)})
    tmp.replace(path)
    return path


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


def load_model(
    path: Path,
    expected_spec: FeatureSpec | None = None,
    kind: str | None = None,
    device: torch.device | str = "cpu",
) -> ModelFile:
    """Load a model file; refuse it if its kind or feature spec is not what the caller expects."""
    meta = read_metadata(path)
    if kind is not None and meta["kind"] != kind:
        raise ValueError(f"{path} holds a {meta['kind']!r} model, expected {kind!r}")
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    if expected_spec is not None:
        expected_spec.check_compatible(spec, what=f"model file {path}")
    model = MODEL_BUILDERS[meta["kind"]](meta["config"])
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


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
