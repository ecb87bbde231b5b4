"""Pitch targets as text (`pitch=140`, `pitch=+3st`, `pitch=rise`) and what F0 contour each asks for.

Torch-free, so the CLI and the Serve schema validate a request before anything heavy loads. A target
resolves to a straight line in log-frequency across the voiced region: `start_hz` at its first voiced
frame, `end_hz` at its last (equal for a level target). The guide (`guidance.guides.pitch`) and the
evaluation (`guidance.pitch_eval`) both read the resolved line, so they agree on what was asked.

- `140` or `140hz`: a level F0 of 140 Hz (50-500 Hz, the range a speaking voice covers).
- `+3st`, `-2.5st`: the reference voice's median F0 shifted by semitones (needs a speaker target).
- `rise`, `fall`: a glide of `GLIDE_SEMITONES` up or down across the voiced region, centred on the
  reference's median F0 when there is a speaker target, else on `DEFAULT_CENTER_HZ`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

PITCH_MIN_HZ = 50.0
PITCH_MAX_HZ = 500.0
MAX_SHIFT_SEMITONES = 24.0
GLIDE_SEMITONES = 6.0  # rise/fall: from centre -3 st to centre +3 st (a clear question/statement intonation)
# Median F0 of unguided samples of the committed generator, heard by the independent tracker (pYIN): 133.9 Hz
# over the 8 voiced of 12 samples of `evaluate-pitch` (reports/pitch/test/results.json); the training
# speakers' recordings: 126.7 Hz (41 voiced of 60 train clips). The centre of an unanchored glide.
DEFAULT_CENTER_HZ = 134.0
CONTOURS = ("rise", "fall")

_HZ = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:hz)?$", re.IGNORECASE)
_SHIFT = re.compile(r"^([+-]\d+(?:\.\d+)?)\s*st$", re.IGNORECASE)


class PitchTargetError(ValueError):
    """A pitch target that is malformed or out of range (the CLI exits 2, HTTP answers 422)."""


@dataclass(frozen=True)
class PitchTarget:
    """A parsed target: kind "hz" (value in Hz), "shift" (value in semitones) or "rise"/"fall"."""

    text: str
    kind: str
    value: float = 0.0

    @property
    def needs_reference(self) -> bool:
        return self.kind == "shift"


@dataclass(frozen=True)
class PitchLine:
    """The F0 line a target resolves to: start_hz at the first voiced frame, end_hz at the last."""

    start_hz: float
    end_hz: float

    @property
    def median_hz(self) -> float:
        """The line's median over a uniformly voiced region: its geometric midpoint."""
        return math.sqrt(self.start_hz * self.end_hz)

    def at(self, position: float) -> float:
        """F0 at a relative position (0 = first voiced frame, 1 = last), linear in semitones."""
        return self.start_hz * (self.end_hz / self.start_hz) ** position


def semitones(hz: float, reference_hz: float) -> float:
    return 12.0 * math.log2(hz / reference_hz)


def _check_hz(hz: float, what: str) -> float:
    if not (math.isfinite(hz) and PITCH_MIN_HZ <= hz <= PITCH_MAX_HZ):
        raise PitchTargetError(f"{what} must lie within {PITCH_MIN_HZ:g}-{PITCH_MAX_HZ:g} Hz, got {hz:g} Hz")
    return hz


def parse_pitch_target(text: str) -> PitchTarget:
    """`140`, `140hz`, `+3st`, `-2.5st`, `rise` or `fall` -> PitchTarget; anything else raises PitchTargetError."""
    label = str(text).strip()
    low = label.lower()
    if low in CONTOURS:
        return PitchTarget(label, low)
    if match := _HZ.match(label):
        return PitchTarget(label, "hz", _check_hz(float(match.group(1)), f"pitch={label}"))
    if match := _SHIFT.match(label):
        shift = float(match.group(1))
        if abs(shift) > MAX_SHIFT_SEMITONES:
            raise PitchTargetError(f"pitch={label}: a shift must lie within +-{MAX_SHIFT_SEMITONES:g} semitones")
        return PitchTarget(label, "shift", shift)
    raise PitchTargetError(
        f"pitch target must be a frequency in Hz (e.g. 140), a shift in semitones (e.g. +3st), or {' / '.join(CONTOURS)}; got {label!r}"
    )


def resolve_pitch(target: PitchTarget, reference_hz: float | None = None, center_hz: float = DEFAULT_CENTER_HZ) -> PitchLine:
    """The F0 line a target asks for; `reference_hz` is the speaker reference's median F0 (if any)."""
    if target.kind == "hz":
        return PitchLine(target.value, target.value)
    if target.kind == "shift":
        if reference_hz is None:
            raise PitchTargetError(f"pitch={target.text} is relative to a reference voice: add a speaker=REF.wav target")
        hz = reference_hz * 2.0 ** (target.value / 12.0)
        _check_hz(hz, f"pitch={target.text} from the reference's median F0 {reference_hz:.0f} Hz")
        return PitchLine(hz, hz)
    centre = reference_hz if reference_hz is not None else center_hz
    half = 2.0 ** (GLIDE_SEMITONES / 24.0)
    low, high = centre / half, centre * half
    _check_hz(low, f"pitch={target.text} (glide start)")
    _check_hz(high, f"pitch={target.text} (glide end)")
    return PitchLine(low, high) if target.kind == "rise" else PitchLine(high, low)
