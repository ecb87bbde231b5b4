"""Guides: one interface, many guides, combined by a guided denoiser with per-step strength."""

from guidance.guides.base import Guide, GuideTerm, guide_gradient
from guidance.guides.classifier import ClassifierGuide
from guidance.guides.engine import GuidedDenoiser
from guidance.guides.hf import HFAudioGuide
from guidance.guides.profile import DEFAULT_PROFILES, GuidanceProfile, GuideSettings, SamplerSettings
from guidance.guides.reference import ReferenceGuide, read_reference
from guidance.guides.voice import VoiceGuide
from guidance.guides.voice_stats import VoiceStatsGuide
from guidance.guides.voices import VOICE_GUIDE_KINDS, make_voice_guide

__all__ = [
    "DEFAULT_PROFILES",
    "VOICE_GUIDE_KINDS",
    "ClassifierGuide",
    "Guide",
    "GuideSettings",
    "GuideTerm",
    "GuidanceProfile",
    "GuidedDenoiser",
    "HFAudioGuide",
    "ReferenceGuide",
    "SamplerSettings",
    "VoiceGuide",
    "VoiceStatsGuide",
    "guide_gradient",
    "make_voice_guide",
    "read_reference",
]
