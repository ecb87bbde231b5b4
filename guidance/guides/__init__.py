"""Guides: one interface, many guides, combined by a guided denoiser with per-step strength."""

from guidance.guides.base import Guide, GuidedDenoiser, GuideTerm, guide_gradient
from guidance.guides.classifier import ClassifierGuide
from guidance.guides.hf import HFAudioGuide
from guidance.guides.profile import DEFAULT_PROFILES, GuidanceProfile, GuideSettings, SamplerSettings
from guidance.guides.voice import VoiceGuide

__all__ = [
    "DEFAULT_PROFILES",
    "ClassifierGuide",
    "Guide",
    "GuideSettings",
    "GuideTerm",
    "GuidanceProfile",
    "GuidedDenoiser",
    "HFAudioGuide",
    "SamplerSettings",
    "VoiceGuide",
    "guide_gradient",
]
