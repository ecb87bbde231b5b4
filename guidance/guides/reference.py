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
        row = self.features_of(wave, sample_rate)
        self.references = row if not self.labels else torch.cat([self.references, row])
        self.labels.append(name)
        return len(self.labels) - 1

    def features_of(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """A reference clip's feature row (1, ...), the clip cut or padded to the model's clip length first."""
        wave = fit_length(wave.reshape(-1), self.spec.num_samples).unsqueeze(0)
        return self.reference_features(wave, sample_rate).to(self.device)

    def request_table(self) -> torch.Tensor:
        return self.references

    def with_request_table(self, rows: torch.Tensor) -> "ReferenceGuide":
        return self.with_references(rows)

    def with_references(self, rows: torch.Tensor) -> "ReferenceGuide":
        """A shallow copy whose reference table is `rows` (what a guide host receives with a gradient call:
        the request's reference features travel with the call, so one hosted guide serves every request)."""
        import copy

        other = copy.copy(self)
        other.references = rows.to(self.device)
        other.labels = [f"reference {i}" for i in range(len(rows))]
        return other

    def for_word(self, reference: int, said: int, word: int, offsets: torch.Tensor) -> int:
        """A target row for reference `reference` (a clip of the word `said`) saying `word` instead.

        The row is the reference's statistics minus what `said` adds to them plus what `word` adds
        (`offsets`, e.g. the committed word-spectra model; rows of the spectral-statistics guide, whose
        features add up this way).
        Without it a composite pulls the sample towards the reference's word as well as its voice.
        """
        label = f"{self.labels[reference]}|{said}->{word}"
        if label in self.labels:
            return self.labels.index(label)
        offsets = offsets.to(self.device)
        row = self.references[reference] - offsets[said] + offsets[word]
        self.references = torch.cat([self.references, row.unsqueeze(0)])
        self.labels.append(label)
        return len(self.labels) - 1

    def retarget(self, references: torch.Tensor, said: torch.Tensor, words: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """(B,) target rows, row i: reference `references[i]` (a clip of the word `said[i]`) saying `words[i]` (`for_word`)."""
        return torch.tensor([self.for_word(int(r), int(s), int(w), offsets) for r, s, w in zip(references, said, words)])


def read_reference(source: Path | bytes, sample_rate: int = 16000, name: str | None = None) -> torch.Tensor:
    """A reference voice clip: a readable, non-silent WAV (a file, or its bytes as an HTTP request carries
    them), as mono float at `sample_rate` (peak 0.9). The same bytes give the same samples either way.

    Raises ValueError with one line saying what is wrong (missing, not a WAV, empty or silent).
    """
    import io

    import soundfile

    from guidance.data import load_wave

    if isinstance(source, (bytes, bytearray)):
        what, said = name or "reference clip", name or "reference clip"
        opened = lambda: io.BytesIO(bytes(source))  # noqa: E731
    else:
        path = Path(source)
        what, said = f"reference WAV {path}", f"reference {path}"
        opened = lambda: path  # noqa: E731
        if not path.is_file():
            raise ValueError(f"{what} does not exist")
    try:
        info = soundfile.info(source_io if isinstance(source_io := opened(), io.BytesIO) else str(source_io))
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise ValueError(f"{said} is not a readable WAV file") from exc
    if info.format != "WAV":
        raise ValueError(f"{said} is a {info.format} file, not a WAV")
    if info.frames == 0:
        raise ValueError(f"{what} holds no audio")
    wave = load_wave(opened(), sample_rate)
    if not bool(wave.abs().max() > 1e-6) or not torch.isfinite(wave).all():
        raise ValueError(f"{what} is silent")
    return wave
