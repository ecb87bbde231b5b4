"""Guides that steer towards reference recordings (a voice), whatever they measure of them.

A reference guide keeps one row of features per reference clip; the target index of a sample picks
its reference, and the labels are the references' names (the CLI uses the WAV paths). Subclasses say
what a row is (`reference_features`) and how close a sample's x0 estimate is to it (`log_prob`).
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import torch

from guidance.features import FeatureSpec, fit_length
from guidance.guides.base import Guide


class ReferenceGuide(Guide):
    """A guide whose labels are reference clips added at run time with `add_reference`."""

    name = "speaker"
    kind = ""  # which voice guide ("stats", "encoder"): what manifests and reports name
    needs_sigma = False

    def __init__(self, spec: FeatureSpec, device: str | torch.device = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.labels: list[str] = []
        self.references = torch.empty(0, device=self.device)

    @abstractmethod
    def reference_features(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """One reference clip (1, samples), cut or padded to the model's clip length -> its feature row (1, ...)."""

    def add_reference(self, name: str, wave: torch.Tensor, sample_rate: int) -> int:
        """Describe a reference clip (cut or padded to the model's clip length, as the samples are) and return its index."""
        if name in self.labels:
            return self.labels.index(name)
        wave = fit_length(wave.reshape(-1), self.spec.num_samples).unsqueeze(0)
        row = self.reference_features(wave, sample_rate).to(self.device)
        self.references = row if not self.labels else torch.cat([self.references, row])
        self.labels.append(name)
        return len(self.labels) - 1


def read_reference(path: Path, sample_rate: int = 16000) -> torch.Tensor:
    """A reference voice clip: a readable, non-silent WAV file, as mono float at `sample_rate` (peak 0.9).

    Raises ValueError with one line saying what is wrong (missing, not a WAV, empty or silent).
    """
    import soundfile

    from guidance.data import load_wave

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference WAV {path} does not exist")
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise ValueError(f"reference {path} is not a readable WAV file") from exc
    if info.format != "WAV":
        raise ValueError(f"reference {path} is a {info.format} file, not a WAV")
    if info.frames == 0:
        raise ValueError(f"reference WAV {path} holds no audio")
    wave = load_wave(path, sample_rate)
    if not bool(wave.abs().max() > 1e-6) or not torch.isfinite(wave).all():
        raise ValueError(f"reference WAV {path} is silent")
    return wave

