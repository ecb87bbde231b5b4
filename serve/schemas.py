"""The HTTP API's request shapes and limits, as strict pydantic models (no Ray, no torch).

Strict so that nothing a client sends is silently reinterpreted: unknown fields are refused (a
misspelled `guidance_scale` must not quietly fall back to the default), NaN and infinities are
refused, numbers do not arrive as strings, and every size a request controls has a ceiling.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Literal, Optional, Union

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from guidance.strict import StrictModel
from guidance.guides import GuidanceProfile
from guidance.guides.kinds import GUIDE_KIND_TABLE
from guidance.guides.voices import VOICE_GUIDE_KINDS
from serve.config import REF_PATTERN

MAX_NUM_SAMPLES = 16  # samples per target
MAX_TARGETS = 10
MAX_TOTAL_SAMPLES = 32  # targets x num_samples: one request is at most one sampler batch
MAX_STEPS = 200
MAX_SEED = 2**31 - 1
MAX_REFERENCE_WAV_BYTES = 1_000_000  # decoded reference clip (about 30 s of 16 kHz 16-bit audio)


class _Strict(StrictModel):
    """Requests: the strict base, and numbers never arrive as strings."""

    model_config = ConfigDict(strict=True)


class TargetSpec(_Strict):
    """One requested target: a class label of a guide (digit=7), or a speaker's reference clip."""

    guide: str = Field(min_length=1, max_length=64)
    label: Optional[str] = Field(None, min_length=1, max_length=64)
    reference_wav_base64: Optional[str] = Field(None, min_length=1, max_length=4 * MAX_REFERENCE_WAV_BYTES // 3 + 8)

    @model_validator(mode="after")
    def _shape(self) -> "TargetSpec":
        if self.guide == "speaker":
            if self.reference_wav_base64 is None:
                raise ValueError("a speaker target needs reference_wav_base64")
            if self.label is not None:
                raise ValueError("a speaker target takes reference_wav_base64, not label")
            reference_wav(self.reference_wav_base64)
        else:
            if self.label is None:
                raise ValueError(f"a {self.guide!r} target needs a label")
            if self.reference_wav_base64 is not None:
                raise ValueError("reference_wav_base64 belongs to speaker targets only")
            if self.guide == "pitch":  # a malformed or out-of-range pitch is refused here (422) whatever serves it
                from guidance.pitch_targets import parse_pitch_target

                parse_pitch_target(self.label)
        return self


def reference_wav(text: str) -> bytes:
    """Decode and sanity-check a reference clip: valid base64 of a readable WAV file."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("reference_wav_base64 is not valid base64") from None
    if len(raw) > MAX_REFERENCE_WAV_BYTES:
        raise ValueError(f"reference clip is larger than {MAX_REFERENCE_WAV_BYTES} bytes")
    if len(raw) < 44 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError("reference_wav_base64 does not hold a WAV file (no RIFF/WAVE header)")
    import soundfile  # imported here: only speaker targets need it

    try:
        info = soundfile.info(io.BytesIO(raw))
    except Exception:  # soundfile raises its own error types for corrupt input
        raise ValueError("reference_wav_base64 holds a WAV file that cannot be read") from None
    if info.frames < 1:
        raise ValueError("reference clip is empty")
    return raw


class GenerateRequest(_Strict):
    """POST /v1/generate. Every field but `targets` is optional; the profile supplies defaults."""

    targets: list[TargetSpec] = Field(min_length=1, max_length=MAX_TARGETS)
    num_samples: int = Field(1, ge=1, le=MAX_NUM_SAMPLES, description="samples per target")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    guidance_scale: Optional[float] = Field(None, ge=0, le=1000)
    steps: Optional[int] = Field(None, ge=1, le=MAX_STEPS)
    sampler: Optional[Literal["euler", "heun"]] = None
    guide_kind: Optional[Literal[tuple(GUIDE_KIND_TABLE)]] = Field(  # type: ignore[valid-type]
        None, description="digit guide kind; default: clean for digit targets, noisy with a speaker target or the score-subnet generator (hf with hf_guide)"
    )
    hf_guide: Optional[str] = Field(
        None, min_length=1, max_length=64, description="guide_kind hf: which of the app's Hugging Face guides (default: its only one)"
    )
    voice_guide: Literal[VOICE_GUIDE_KINDS] = Field("stats", description="the voice guide of speaker targets")  # type: ignore[valid-type]
    weights: Optional[dict[str, float]] = Field(None, max_length=MAX_TARGETS, description="guide -> weight of its term in a composite (default 1)")
    generator: Optional[Literal["unet", "score-subnet"]] = Field(None, description="must be the app's generator when given")
    guide_model: Optional[str] = Field(
        None, min_length=1, max_length=220, description="a registered classifier, NAME@ALIAS or NAME/VERSION (NAME: @production)"
    )
    profile: Union[str, GuidanceProfile, None] = Field(None, description="profile name, or an inline profile")

    @field_validator("profile", mode="before")
    @classmethod
    def _profile(cls, v: object) -> object:
        if isinstance(v, dict):  # inline profiles are validated by the profile's own (strict) model
            return GuidanceProfile.model_validate(v)
        if isinstance(v, str) and not 1 <= len(v) <= 64:
            raise ValueError("profile name must be 1 to 64 characters")
        return v

    @field_validator("guide_model")
    @classmethod
    def _guide_model(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        ref = v if ("@" in v or "/" in v) else f"{v}@production"
        if not REF_PATTERN.fullmatch(ref):
            raise ValueError("guide_model must be NAME@ALIAS or NAME/VERSION of a registered classifier")
        return ref

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: Optional[dict[str, float]]) -> Optional[dict[str, float]]:
        for name, w in (v or {}).items():
            if not 0 <= w <= 1000:
                raise ValueError(f"weight of {name!r} must be between 0 and 1000, got {w}")
        return v

    @model_validator(mode="after")
    def _total(self) -> "GenerateRequest":
        targeted = {t.guide for t in self.targets}
        for name in self.weights or {}:
            if name not in targeted:
                raise ValueError(f"weights: no target names the guide {name!r}")
        total = len(self.targets) * self.num_samples
        if total > MAX_TOTAL_SAMPLES:
            raise ValueError(
                f"num_samples x targets = {total} exceeds {MAX_TOTAL_SAMPLES} samples per request"
            )
        return self

    @property
    def total_samples(self) -> int:
        return len(self.targets) * self.num_samples


def describe_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """One line naming each bad field (`targets.0.label: ...`), for the response's `detail`."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after[_shape()]",))
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
