"""The zero-shot voice guides by kind: the one module that knows every `ReferenceGuide` subclass
(the guides themselves import only their base, `guidance.guides.reference`)."""

from __future__ import annotations

import torch

from guidance.features import FeatureSpec
from guidance.guides.reference import ReferenceGuide
from guidance.guides.voice import VoiceGuide
from guidance.guides.voice_stats import VoiceStatsGuide

VOICE_GUIDE_KINDS = ("stats", "encoder")


def make_voice_guide(kind: str, spec: FeatureSpec, device: str | torch.device = "cpu") -> ReferenceGuide:
    """The zero-shot voice guide of a kind: "stats" (the reference's spectral statistics, the default: it
    moves the voice on FSDD; `guidance.guides.voice_stats`) or "encoder" (resemblyzer's speaker encoder)."""
    if kind == "stats":
        return VoiceStatsGuide(spec, device=device)
    if kind == "encoder":
        return VoiceGuide(spec, device=device)
    raise ValueError(f"voice guide must be one of {', '.join(VOICE_GUIDE_KINDS)}, got {kind!r}")
