"""Any Hugging Face audio classifier as a clean guide: load it, adapt its input, map its labels.

`HFAudioGuide` wraps a `transformers.AutoModelForAudioClassification` and a differentiable front
end (`guidance.guides.hf_frontends`) chosen from the model's own feature extractor, so it reads
the project's normalized log-Mel x0_hat like the repurposed clean classifier does. The model's
label names (`config.id2label`) are mapped to project targets: Speech Commands' digit words
("zero".."nine") and the digits "0".."9" are built in; a user map adds or overrides names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from guidance.features import FeatureSpec
from guidance.guides.base import Guide
from guidance.guides.classifier import log_prob_from_logits
from guidance.guides.hf_frontends import FSDD_BAND_LIMIT_HZ, UnsupportedFeatureExtractor, frontend_for

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
BUILTIN_LABEL_MAP: dict[str, str] = {**{w: str(i) for i, w in enumerate(DIGIT_WORDS)}, **{str(i): str(i) for i in range(10)}}


class HFGuideError(ValueError):
    """A Hugging Face guide cannot be built from what was given (path, labels, model type)."""


def parse_label_map(text: str | None) -> dict[str, str]:
    """`seven=7,yes=1` or the path of a JSON object {"seven": "7"} -> {model label: target label}."""
    if not text or not text.strip():
        return {}
    path = Path(text)
    if text.strip().endswith(".json") or path.is_file():
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise HFGuideError(f"label map file {text} does not exist") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise HFGuideError(f"label map file {text} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in data.items()):
            raise HFGuideError(f"label map file {text} must hold one JSON object of model label -> target label")
        return {k.strip(): str(v).strip() for k, v in data.items()}
    out: dict[str, str] = {}
    for item in text.split(","):
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise HFGuideError(f"label map entries look like model_label=target (e.g. seven=7), got {item.strip()!r}")
        out[name.strip()] = target.strip()
    return out


def map_labels(id2label: dict[int, str], user_map: dict[str, str] | None = None) -> dict[str, int]:
    """{target label: model class index}, from the built-in map (case-insensitive) and the user's.

    A user entry naming a label the model lacks, or two model labels landing on one target, is an error.
    """
    user_map = dict(user_map or {})
    names = {int(i): str(n) for i, n in id2label.items()}
    missing = sorted(set(user_map) - set(names.values()))
    if missing:
        raise HFGuideError(f"--label-map names {missing[0]!r}, which is not a label of the model (its labels: {_preview(names)})")
    mapping: dict[str, int] = {}
    for idx in sorted(names):
        name = names[idx]
        target = user_map.get(name, BUILTIN_LABEL_MAP.get(name.strip().lower()))
        if target is None:
            continue
        if target in mapping:
            raise HFGuideError(
                f"model labels {names[mapping[target]]!r} and {name!r} both map to target {target!r}; fix it with --label-map"
            )
        mapping[target] = idx
    if not mapping:
        raise HFGuideError(
            f"none of the model's labels maps to a target (its labels: {_preview(names)}); give one with --label-map NAME=TARGET"
        )
    return dict(sorted(mapping.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0, kv[0])))


def _preview(names: dict[int, str], limit: int = 12) -> str:
    shown = [names[i] for i in sorted(names)][:limit]
    return ", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _looks_like_path(text: str) -> bool:
    """A hub id is `name` or `org/name`; anything else that does not exist is a missing local path."""
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or text.endswith("/") or os.sep != "/" and os.sep in text


def load_hf_audio_classifier(path_or_id: str | os.PathLike, device: torch.device | str = "cpu"):
    """(model, feature_extractor) from a local directory (never touches the network) or a hub id."""
    text = str(path_or_id)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise HFGuideError(f"Hugging Face guide {text} is a file; give the model's directory (config.json, weights)")
        source, kwargs = str(local), {"local_files_only": True}
    elif _looks_like_path(text):
        raise HFGuideError(f"Hugging Face guide directory {text} does not exist")
    else:
        source, kwargs = text, {}
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    try:
        extractor = AutoFeatureExtractor.from_pretrained(source, **kwargs)
        model = AutoModelForAudioClassification.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        where = f"directory {text}" if kwargs else f"hub id {text} (no network, or HF_HUB_OFFLINE set?)"
        reason = " ".join(str(exc).split())[:200]
        raise HFGuideError(f"could not load a Hugging Face audio classifier from {where}: {reason}") from None
    return model.to(device).eval().requires_grad_(False), extractor


class HFAudioGuide(Guide):
    """log p(target | x0_hat) from a Hugging Face audio classifier behind a differentiable front end.

    The softmax runs over all the model's classes (a Speech Commands model's "yes", "_unknown_",
    "_silence_" too), so the guide also pushes away from every non-target class.
    """

    needs_sigma = False

    def __init__(self, model: torch.nn.Module, frontend: torch.nn.Module, targets: dict[str, int], name: str = "digit", source: str = "") -> None:
        self.model = model.eval().requires_grad_(False)
        self.frontend = frontend
        self.name = name
        self.source = source
        self.labels = list(targets)
        device = next(model.parameters()).device
        self.frontend.to(device)
        self.class_index = torch.tensor([targets[t] for t in self.labels], device=device)
        self.model_labels = {int(i): str(n) for i, n in model.config.id2label.items()}

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        spec: FeatureSpec,
        label_map: dict[str, str] | str | None = None,
        name: str = "digit",
        device: torch.device | str = "cpu",
        band_limit_hz: float | None = FSDD_BAND_LIMIT_HZ,
    ) -> "HFAudioGuide":
        model, extractor = load_hf_audio_classifier(path_or_id, device)
        user = parse_label_map(label_map) if isinstance(label_map, str) or label_map is None else dict(label_map)
        targets = map_labels(model.config.id2label, user)
        if getattr(model, "main_input_name", "input_values") != "input_values":
            raise HFGuideError(f"{path_or_id}: model reads {model.main_input_name!r}; the adapters make 'input_values'")
        try:
            frontend = frontend_for(extractor, spec, band_limit_hz)
        except UnsupportedFeatureExtractor as exc:
            raise HFGuideError(f"{path_or_id} ({model.config.model_type}): {exc}") from None
        _check_model_matches(model, frontend, path_or_id)
        return cls(model, frontend, targets, name, str(path_or_id))

    def label_index(self, label: str) -> int:
        if label not in self.labels:
            raise KeyError(
                f"the Hugging Face model {self.source or ''} has no label for {self.name}={label} "
                f"(mapped: {', '.join(self.labels)}; its labels: {_preview(self.model_labels)}); add one with --label-map NAME={label}"
            )
        return self.labels.index(label)

    def model_input(self, inp: torch.Tensor) -> torch.Tensor:
        """The model's `input_values` rebuilt from normalized log-Mels (B, 1, M, T)."""
        return self.frontend(inp)

    def logits(self, inp: torch.Tensor) -> torch.Tensor:
        return self.model(input_values=self.model_input(inp)).logits.float()

    def log_prob(self, inp: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        classes = self.class_index[target.to(self.class_index.device)]
        return log_prob_from_logits(self.logits(inp), classes, temperature.to(inp.device))

    @torch.no_grad()
    def probabilities(self, mels: torch.Tensor) -> torch.Tensor:
        """(N, len(labels)) model probabilities of the mapped classes (softmax over all of its classes)."""
        return torch.softmax(self.logits(mels), dim=-1)[:, self.class_index]

    def describe(self) -> dict:
        return {
            "source": self.source,
            "model_type": self.model.config.model_type,
            "frontend": type(self.frontend).__name__,
            "labels": {t: self.model_labels[int(i)] for t, i in zip(self.labels, self.class_index.tolist())},
        }


def _check_model_matches(model: torch.nn.Module, frontend: torch.nn.Module, source) -> None:
    """AST's position embeddings fix its input size: the extractor's must agree with the model's."""
    cfg = model.config
    for field in ("max_length", "num_mel_bins"):
        want, have = getattr(cfg, field, None), getattr(frontend, field, None)
        if want is not None and have is not None and int(want) != int(have):
            raise HFGuideError(f"{source}: feature extractor {field} {have} differs from the model's {want}")
