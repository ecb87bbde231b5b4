"""Model files: save and load every kind of model the project ships. The file format itself
(safetensors weights plus JSON metadata) is `guidance.models.model_file`; this module adds the
builder of each kind. Nothing is ever unpickled, and a model is refused when its front end differs
from the one it is used with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from guidance.diffusion.precond import EDMPrecond
from guidance.features import FeatureSpec
from guidance.models.classifier import build_classifier
from guidance.models.judge import JudgeConfig, TDNNJudge
from guidance.models.model_file import FORMAT, ModelFile, config_dict, from_dict, load_model_file, read_metadata
from guidance.models.unet import UNet, UNetConfig

__all__ = ["FORMAT", "MODEL_BUILDERS", "ModelFile", "config_dict", "count_parameters", "load_model", "read_metadata", "save_model"]


def _build_unet_denoiser(cfg: dict) -> torch.nn.Module:
    cfg = dict(cfg)
    sigma_data = cfg.pop("sigma_data", 1.0)
    return EDMPrecond(UNet(from_dict(UNetConfig, cfg)), sigma_data=sigma_data)


def _build_score_subnet(cfg: dict) -> torch.nn.Module:
    from guidance.models.score_subnet import build_single_backbone

    return build_single_backbone(cfg)


def _build_word_spectra(cfg: dict) -> torch.nn.Module:
    from guidance.models.word_spectra import WordSpectra, WordSpectraConfig

    return WordSpectra(from_dict(WordSpectraConfig, cfg))


def _build_vocoder(cfg: dict) -> torch.nn.Module:
    from guidance.models.vocoder import NeuralVocoder, VocoderConfig

    return NeuralVocoder(from_dict(VocoderConfig, cfg))


def _build_f0_head(cfg: dict) -> torch.nn.Module:
    from guidance.models.f0_head import F0Head, F0HeadConfig

    return F0Head(from_dict(F0HeadConfig, cfg))


MODEL_BUILDERS: dict[str, Callable[[dict], torch.nn.Module]] = {
    "denoiser-unet": _build_unet_denoiser,
    "classifier": build_classifier,
    "judge": lambda cfg: TDNNJudge(from_dict(JudgeConfig, cfg)),
    "score-subnet": _build_score_subnet,
    "word-spectra": _build_word_spectra,
    "vocoder": _build_vocoder,
    "f0-head": _build_f0_head,
}


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


def load_model(
    path: Path,
    expected_spec: FeatureSpec | None = None,
    kind: str | None = None,
    device: torch.device | str = "cpu",
) -> ModelFile:
    """Load a model file of any kind; refuse it if its kind or feature spec is not what the caller expects."""
    return load_model_file(path, MODEL_BUILDERS, expected_spec, kind, device)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
