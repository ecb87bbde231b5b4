"""One plan of a request, whichever door it came through (the CLI in-process, `generate --url`, the Serve
ingress): targets, weights, profile, seed and count in; the rows to sample, each guide's targets, the guide
terms, the sampler settings, the file names and the per-sample scores out.

What the plan needs from models (a guide's labels, a reference clip's features, the word a reference says,
a reference's median F0) is handed in by its driver: in-process from the loaded guides, in Serve from the
guide deployment. Every door therefore makes the same decisions: the composite's digit scale, the voice and
pitch guides' settings, retargeting a reference to the digit asked for, resolving a relative pitch target
(`+3st`) against each speaker reference, the order of the rows and what each sample is called.

Pitch targets (`pitch=140 | +3st | rise | fall`, the CREPE guide of `guidance.guides.pitch`) are planned
here like the others, in-process against the loaded guide, in Serve against its stand-in whose target table
travels to the hosted guide (`guidance.guide_host`).

The evaluation protocols plan their systems here too (evaluate, evaluate-voice, evaluate-pitch, Tune, the
default picker): each is a list of targets and a count, sampled by `guidance.pipeline.sample_plan`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from guidance.diffusion.samplers import SamplerConfig
from guidance.features import FeatureSpec
from guidance.guides.base import Guide, GuideTerm
from guidance.guides.profile import DEFAULT_PROFILES, GuidanceProfile, GuideSettings
from guidance.guides.reference import ReferenceGuide
from guidance.pitch_targets import PitchLine, parse_pitch_target

# The digit guide's scale in a digit + speaker composite when the request sets neither a scale nor a
# profile: the voice term pulls against the digit guide (picked on validation, reports/voice-val-sweep.md).
COMPOSITE_DIGIT_SCALE = 20.0
TARGET_GUIDES: tuple[str, ...] = ("digit", "speaker", "pitch")  # the guides a target can name


@dataclass(frozen=True)
class Target:
    """One requested class: `guide=label`, e.g. digit=7, speaker=REF (the reference clip's name) or pitch=+3st."""

    guide: str
    label: str

    @classmethod
    def parse(cls, text: str) -> "Target":
        guide, sep, label = text.partition("=")
        if not sep or not guide.strip() or not label.strip():
            raise ValueError(f"target must look like guide=label (e.g. digit=7), got {text!r}")
        return cls(guide.strip(), label.strip())


def targets_for(guide: str, labels: list[str]) -> list[Target]:
    """One target per label, in order: a protocol's "every digit" (`targets_for("digit", DIGITS)`), or one
    target per row of a paired plan."""
    return [Target(guide, label) for label in labels]


def make_noise(n: int, spec: FeatureSpec, seed: int) -> torch.Tensor:
    """Unit Gaussian starting noise, drawn on the CPU so every device and every door sees the same numbers."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(n, 1, spec.n_mels, spec.frames, generator=gen)


def base_profile(kind: str) -> GuidanceProfile:
    """The default profile of a digit guide kind ("none": unconditional)."""
    return DEFAULT_PROFILES["unconditional" if kind == "none" else kind]


def with_overrides(profile: GuidanceProfile, scale: float | None = None, steps: int | None = None, sampler: str | None = None) -> GuidanceProfile:
    """A request's scale, steps and sampler kind over its profile."""
    if scale is not None:
        profile = profile.with_guide(scale=scale)
    if steps is not None or sampler is not None:
        profile = profile.with_sampler(**{k: v for k, v in dict(steps=steps, kind=sampler).items() if v is not None})
    return profile


def check_targets(targets: list[Target]) -> None:
    """ValueError naming the first target whose guide this build does not know, or the first pitch target that
    is malformed, out of range (`PitchTargetError`, a ValueError) or relative without a speaker target.
    Torch-free work only: a door runs it before any model loads."""
    for t in targets:
        if t.guide not in TARGET_GUIDES:
            raise ValueError(f"unknown guide {t.guide!r} in the targets; this build guides with: {', '.join(TARGET_GUIDES)}")
    has_speaker = any(t.guide == "speaker" for t in targets)
    for t in targets:
        if t.guide == "pitch" and parse_pitch_target(t.label).needs_reference and not has_speaker:
            raise ValueError(f"pitch={t.label} is relative to a reference voice: add a speaker=REF.wav target")


def pitch_references(targets: list[Target]) -> list[str]:
    """The speaker references whose median F0 `plan_request` needs (`reference_hz`), by label: every one, when
    a pitch target is relative to the voice (`+3st`) or a contour centred on it (rise, fall); else none."""
    if not any(t.guide == "pitch" and parse_pitch_target(t.label).kind != "hz" for t in targets):
        return []
    return list(dict.fromkeys(t.label for t in targets if t.guide == "speaker"))


def check_weights(weights: dict[str, float], targets: list[Target]) -> None:
    """ValueError unless every weight is finite, >= 0 and belongs to a targeted guide."""
    targeted = {t.guide for t in targets}
    for name, w in weights.items():
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {w}")
        if name not in targeted:
            raise ValueError(f"weight {name}=...: no target names the guide {name!r}")


def retargets(targets: list[Target], voice_kind: str | None, offsets: torch.Tensor | None) -> bool:
    """Whether the plan retargets references to the digit asked for: a digit + speaker composite guided
    by the spectral statistics, with the word-spectra table at hand. Only then is the word each reference
    says needed (`plan_request`'s `said`)."""
    guides = {t.guide for t in targets}
    return offsets is not None and voice_kind == "stats" and {"digit", "speaker"} <= guides


def guide_settings(profile: GuidanceProfile, name: str, guide: Guide) -> GuideSettings:
    """A guide's settings: the profile's per-guide entry, else the guide kind's own default
    (`default_settings`, e.g. the voice guide's), else the profile's shared settings."""
    if name in profile.per_guide:
        return profile.per_guide[name]
    return getattr(guide, "default_settings", None) or profile.guide


def build_guide_terms(
    targets: dict[str, torch.Tensor],
    guides: dict[str, Guide],
    profile: GuidanceProfile,
    weights: dict[str, float] | None = None,
    device: torch.device | str | None = None,
) -> list[GuideTerm]:
    """One GuideTerm per targeted guide (composite targets): `targets` maps a guide name ("digit",
    "speaker", or any other kind added to `guides`) to (B,) label indices. Each term has its own
    settings (`guide_settings`) and weight (default 1); terms with scale or weight 0 are left out."""
    terms = []
    for name, target in targets.items():
        if name not in guides:
            raise KeyError(f"no guide named {name!r}; known: {', '.join(sorted(guides))}")
        settings = guide_settings(profile, name, guides[name])
        weight = (weights or {}).get(name, 1.0)
        if settings.scale > 0 and weight != 0:
            terms.append(GuideTerm(guides[name], target.to(device) if device else target, settings, weight))
    return terms


@dataclass
class Plan:
    """What to sample for one request: rows in output order, each guide's per-row targets, the final profile."""

    rows: list[tuple[int | None, int | None, int | None]]  # (digit class, reference index, pitch target index) of each sample
    named: dict[str, torch.Tensor]  # guide name -> (B,) target indices (speaker: rows of the voice guide's table; pitch: the pitch guide's labels)
    profile: GuidanceProfile
    weights: dict[str, float]  # every targeted guide's weight (default 1)
    seed: int
    digit_kind: str  # noisy | clean | hf | none
    digit_labels: list[str]
    speaker_labels: list[str]  # the references' names, by index
    voice_kind: str | None  # the voice guide's kind when a speaker is targeted
    retargeted: bool
    pitch_labels: list[str] = field(default_factory=list)  # the pitch targets as requested, by index (rows' third entry)
    pitch_lines: list[PitchLine] = field(default_factory=list)  # the F0 line of each pitch guide label (named["pitch"])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def sampler(self) -> SamplerConfig:
        return self.profile.sampler.to_config()

    def noise(self, spec: FeatureSpec) -> torch.Tensor:
        return make_noise(len(self.rows), spec, self.seed)

    def guided(self) -> dict[str, torch.Tensor]:
        """The guides that steer: every targeted guide, the digit one only when the kind is not "none"."""
        return {k: v for k, v in self.named.items() if not (k == "digit" and self.digit_kind == "none")}

    def terms(self, guides: dict[str, Guide], device: torch.device | str | None = None) -> list[GuideTerm]:
        """The guide terms over `guides` (loaded in-process, or stand-ins whose gradients a deployment computes)."""
        return build_guide_terms(self.guided(), guides, self.profile, self.weights, device)

    def targets_of(self, i: int) -> list[dict]:
        """What sample i was asked to be, as the manifest and the HTTP response list it."""
        digit, ref, pitch = self.rows[i]
        return (
            ([{"guide": "digit", "label": self.digit_labels[digit]}] if digit is not None else [])
            + ([{"guide": "speaker", "label": self.speaker_labels[ref]}] if ref is not None else [])
            + ([{"guide": "pitch", "label": self.pitch_labels[pitch]}] if pitch is not None else [])
        )

    def file_names(self) -> list[str]:
        """`{digit}_{k:03d}.wav` per digit target, `sample_{k:03d}.wav` without one."""
        return file_names([self.digit_labels[d] if d is not None else None for d, _, _ in self.rows])

    def scores(
        self,
        digit_probs: torch.Tensor | None = None,
        speaker_score: torch.Tensor | None = None,
        cosine_wav: torch.Tensor | None = None,
        pitch_error: torch.Tensor | None = None,
        pitch_heard: list | None = None,
    ) -> list[dict]:
        """Per-sample scores: the digit guide's probability of the target and its prediction, the voice guide's
        own score (`speaker_stats_distance`, 0 = the reference's statistics, or `speaker_cosine`) and the
        encoder's cosine on the written waveform (`speaker_cosine_wav`), each when given. For a pitch target:
        the target line (`pitch_target_hz`, start and end), the pitch guide's own error (`pitch_crepe_error_st`,
        CREPE on the log-Mel; `pitch_error`, NaN when unvoiced) and what the independent tracker heard in the
        written audio (`pitch_heard`: one `guidance.pitch_tracker.HeardPitch` per sample)."""
        out = []
        for i, (digit, ref, pitch) in enumerate(self.rows):
            s: dict = {}
            if digit_probs is not None and digit is not None:
                s["guide_target_probability"] = round(float(digit_probs[i, digit]), 4)
                s["guide_prediction"] = self.digit_labels[int(digit_probs[i].argmax())]
            if speaker_score is not None and ref is not None:
                if self.voice_kind == "encoder":
                    s["speaker_cosine"] = round(float(speaker_score[i]), 4)
                else:
                    s["speaker_stats_distance"] = round(-float(speaker_score[i]), 4)
            if cosine_wav is not None and ref is not None:
                s["speaker_cosine_wav"] = round(float(cosine_wav[i]), 4)
            if pitch is not None and (pitch_error is not None or pitch_heard is not None):
                s.update(self._pitch_scores(i, pitch_error, pitch_heard))
            out.append(s)
        return out


    def _pitch_scores(self, i: int, pitch_error: torch.Tensor | None, pitch_heard: list | None) -> dict:
        line = self.pitch_lines[int(self.named["pitch"][i])]
        s: dict = {"pitch_target_hz": [round(line.start_hz, 1), round(line.end_hz, 1)]}
        if pitch_error is not None:
            s["pitch_crepe_error_st"] = _rounded(float(pitch_error[i]), 3)
        if pitch_heard is not None:
            heard = pitch_heard[i]
            s["pitch_heard_hz"] = _rounded(heard.median_hz, 1)
            s["pitch_heard_error_st"] = _rounded(heard.error_semitones(line), 3)
            s["pitch_heard_glide_st"] = _rounded(heard.glide_semitones, 2)
            s["pitch_voiced_fraction"] = round(heard.voiced_fraction, 3)
        return s


def _rounded(value: float, digits: int) -> float | None:
    return None if math.isnan(value) else round(value, digits)


def file_names(digit_labels: list[str | None]) -> list[str]:
    """One file name per sample, counted per digit label (None: `sample`); the HTTP client names with it too."""
    counts: dict[str, int] = {}
    names = []
    for label in digit_labels:
        key = label if label is not None else "sample"
        k = counts[key] = counts.get(key, -1) + 1
        names.append(f"{key}_{k:03d}.wav")
    return names


def plan_request(
    targets: list[Target],
    num: int,
    seed: int,
    profile: GuidanceProfile,
    digit_guide: Guide | None,
    voice_guide: ReferenceGuide | None = None,
    digit_kind: str = "noisy",
    weights: dict[str, float] | None = None,
    scale_set: bool = False,
    said: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
    pitch_guide: Guide | None = None,
    reference_hz: dict[str, float] | None = None,
    paired: bool = False,
) -> Plan:
    """Plan one request. `digit_guide` gives the digit labels; `voice_guide` holds every speaker target's
    reference under its label (`add_reference`); `said` (R,) is the word each of its references says, needed
    when `retargets(...)`; `offsets` the word-spectra table. `scale_set`: the request chose the digit scale
    (a scale or a profile of its own), so a composite keeps it. `pitch_guide` takes every pitch target
    (`add_target(text, reference_hz, reference_name)` -> label index, `line(index)`), resolved per row against
    that row's speaker reference, whose median F0 `reference_hz` gives by label (needed for `+3st`; rise and
    fall centre on it). Rows are every combination of the targets (digit-major, then reference, then pitch),
    each `num` times; `paired`: the k-th target of every targeted guide go together instead (one row per k,
    each `num` times), for a protocol whose rows are not a product, e.g. evaluate-voice's references each with
    its own digits. Raises ValueError (unknown guide, bad weight, bad pitch target, unequal paired counts) and
    KeyError (a label the guide lacks) with one line."""
    check_targets(targets)
    weights = dict(weights or {})
    check_weights(weights, targets)
    digits = [t for t in targets if t.guide == "digit"]
    speakers = [t for t in targets if t.guide == "speaker"]
    pitch_labels = [t.label for t in targets if t.guide == "pitch"]
    if pitch_labels and pitch_guide is None:
        raise ValueError("a pitch target needs a pitch guide")
    if digits and digit_guide is None:
        raise ValueError("a digit target needs a digit guide")
    if speakers and voice_guide is None:
        raise ValueError("a speaker target needs a voice guide")
    classes = [digit_guide.label_index(t.label) for t in digits] if digits else []
    refs = [voice_guide.labels.index(t.label) for t in speakers] if speakers else []
    speaker_labels = list(voice_guide.labels) if voice_guide is not None else []  # before retargeting adds rows
    if classes and refs and not scale_set and digit_kind == "noisy":
        profile = profile.with_guide(scale=COMPOSITE_DIGIT_SCALE)  # the voice term pulls against the digit guide
    if refs:
        profile = profile.model_copy(update={"per_guide": {**profile.per_guide, "speaker": guide_settings(profile, "speaker", voice_guide)}})
    if pitch_labels:
        profile = profile.model_copy(update={"per_guide": {**profile.per_guide, "pitch": guide_settings(profile, "pitch", pitch_guide)}})
    pitches = list(range(len(pitch_labels)))
    rows = [g for g in _combinations(classes, refs, pitches, paired) for _ in range(num)]
    named: dict[str, torch.Tensor] = {}
    if classes:
        named["digit"] = torch.tensor([d for d, _, _ in rows])
    if refs:
        named["speaker"] = torch.tensor([r for _, r, _ in rows])
    pitch_lines: list[PitchLine] = []
    if pitch_labels:  # a relative target resolves against each row's reference (one guide label per reference)
        hz = reference_hz or {}
        named["pitch"] = torch.tensor([
            pitch_guide.add_target(pitch_labels[p], hz.get(speaker_labels[r]) if r is not None else None, speaker_labels[r] if r is not None else None)
            for _, r, p in rows
        ])
        pitch_lines = [pitch_guide.line(k) for k in range(len(pitch_guide.labels))]
    retargeted = retargets(targets, voice_guide.kind if voice_guide is not None else None, offsets)
    if retargeted:  # a reference saying one digit stands for its speaker saying the one asked for
        if said is None:
            raise ValueError("retargeting needs the word each reference says")
        named["speaker"] = voice_guide.retarget(named["speaker"], said[named["speaker"]], named["digit"], offsets)
    return Plan(
        rows=rows, named=named, profile=profile,
        weights={name: weights.get(name, 1.0) for name in dict.fromkeys(t.guide for t in targets)},
        seed=seed, digit_kind=digit_kind,
        digit_labels=list(digit_guide.labels) if digit_guide is not None else [],
        speaker_labels=speaker_labels, voice_kind=voice_guide.kind if refs else None, retargeted=retargeted,
        pitch_labels=pitch_labels, pitch_lines=pitch_lines,
    )


def _combinations(classes: list[int], refs: list[int], pitches: list[int], paired: bool) -> list[tuple[int | None, int | None, int | None]]:
    """(digit, reference, pitch) of each distinct row: every combination, or (`paired`) the k-th of each."""
    if not paired:
        return list(itertools.product(classes or [None], refs or [None], pitches or [None]))
    counts = {len(x) for x in (classes, refs, pitches) if x}
    if len(counts) > 1:
        raise ValueError(f"paired targets need the same number of targets per guide, got {sorted(counts)}")
    n = counts.pop() if counts else 1
    return list(zip(classes or [None] * n, refs or [None] * n, pitches or [None] * n))


def load_word_offsets(path: Path, spec: FeatureSpec) -> torch.Tensor | None:
    """The word-spectra table (what each digit adds to the spectral statistics; `ModelPaths.path("word_spectra")`),
    None when the file is not there."""
    from guidance.models import load_model

    path = Path(path)
    return load_model(path, spec, "word-spectra").model.offsets if path.is_file() else None
