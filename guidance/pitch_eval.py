"""Pitch guidance, evaluated by an independent tracker: does the written audio have the F0 asked for?

From one set of starting noises (digits cycling 0..9), up to four systems are sampled: unguided,
digit-only (the noise-conditioned digit guide, its default profile), pitch-only towards each target,
and digit + pitch towards each target; with a speaker judge, also speaker-only (the statistics voice guide
towards test-split references, two per FSDD speaker for 12 samples) and speaker + pitch towards shifts
relative to each reference's own median F0 (`+2st`, as `generate --target speaker=REF --target pitch=+2st`).
Every sample is vocoded by the model set's vocoder and heard, as
the 16-bit WAV a user gets (`guidance.data.as_written`), by pYIN (`guidance.pitch_tracker`, never CREPE): median F0 error in semitones to the target line, voiced
share of the speech frames, and glide. Digit systems are also heard by the outside recognizer
(PocketSphinx, `outside_judges`), so the digit rate of a composite stands next to digit-only's; speaker
systems by the FSDD speaker judge (never a guide) and resemblyzer's encoder, so the speaker rate of a
speaker + pitch composite stands next to speaker-only's.

Targets default to the unguided samples' median F0 shifted by -4, -2, +2 and +4 semitones (the
acceptance asks for at least 4 semitones either side).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from guidance.data import DIGITS, FSDD_SPEAKERS, as_written, fsdd_split, list_fsdd, load_wave, resolve_fsdd_root, write_wav
from guidance.guides import DEFAULT_PROFILES, GuidanceProfile
from guidance.guides.pitch import PitchGuide, default_pitch_settings
from guidance.guides.voice import VoiceGuide
from guidance.guides.voices import make_voice_guide
from guidance.metrics import hear, judge_outputs
from guidance.models import ModelFile
from guidance.pitch_tracker import HeardPitch, track
from guidance.pipeline import ModelSet, sample_plan, vocode_finite
from guidance.pitch_targets import parse_pitch_target, resolve_pitch
from guidance.plan import Plan, Target, plan_request, targets_for
from guidance.vocoders import describe_vocoder, request_vocoder
from guidance.voice_eval import check_speaker_judge, pick_references

WITHIN_SEMITONES = 1.0  # the acceptance: a sample is on target when its median F0 is within 1 semitone
DEFAULT_SHIFTS = (-4, -2, 2, 4)
SPEAKER_SHIFTS = ("-4st", "-2st", "+2st", "+4st")  # relative to each speaker reference's median F0


@dataclass(frozen=True)
class PitchEvalConfig:
    targets: tuple[str, ...] = ()  # empty: the unguided median shifted by DEFAULT_SHIFTS
    samples: int = 12
    seed: int = 0
    steps: int | None = None
    scale: float | None = None
    capacity: str = "tiny"
    head_weight: float | None = None  # the writing vocoder's F0 head next to CREPE (None: the guide's HEAD_WEIGHT)
    digit: bool = True
    outside_asr: bool = False
    speaker: bool = True  # speaker-only and speaker + pitch systems (needs the speaker judge)
    speaker_targets: tuple[str, ...] = SPEAKER_SHIFTS
    split: str = "test"  # where the speaker references come from
    write_wavs: bool = False  # every sample under out/wavs/<system>_<target>/NNN.wav


def _profile(cfg: PitchEvalConfig) -> GuidanceProfile:
    """The digit guide's default profile with the pitch guide's settings (the shipped pitch profile, or its scale changed)."""
    prof = DEFAULT_PROFILES["noisy"]
    pitch = default_pitch_settings()
    if cfg.scale is not None:
        pitch = pitch.model_copy(update={"scale": cfg.scale})
    prof = prof.model_copy(update={"per_guide": {**prof.per_guide, "pitch": pitch}})
    return prof.with_sampler(steps=cfg.steps) if cfg.steps else prof


def _heard(waves: torch.Tensor, ok: torch.Tensor, rate: int) -> list[HeardPitch]:
    return [track(w, rate) if bool(k) else HeardPitch(float("nan"), 0.0, float("nan")) for w, k in zip(waves, ok)]


DigitsSaid = Callable[[torch.Tensor, int], list]  # (waves, rate) -> the digit heard in each, or None


def summarize(errors: list[float], heard: list[HeardPitch]) -> dict:
    """Share of samples within WITHIN_SEMITONES (a silent/unvoiced sample counts as a miss), median error, voicing."""
    finite = [e for e in errors if math.isfinite(e)]
    return {
        "n": len(errors),
        "within_1st": round(sum(e <= WITHIN_SEMITONES for e in finite) / max(len(errors), 1), 3),
        "median_abs_error_st": round(statistics.median(finite), 2) if finite else None,
        "unvoiced": len(errors) - len(finite),
        "voiced_fraction": round(statistics.fmean(h.voiced_fraction for h in heard), 3) if heard else None,
        "median_glide_st": round(statistics.median([h.glide_semitones for h in heard if math.isfinite(h.glide_semitones)]), 2)
        if any(math.isfinite(h.glide_semitones) for h in heard) else None,
    }


def evaluate_pitch(
    models: ModelSet, cfg: PitchEvalConfig, out: Path, progress: Callable[[str], None] | None = None, digits_said: DigitsSaid | None = None,
    judge_speaker: ModelFile | None = None, data_root: str | None = None,
) -> dict:
    """Sample every system, hear it, write results.json and report.md under `out`; returns the results.
    `judge_speaker` (the FSDD speaker judge) is needed when `cfg.speaker`; `data_root` is FSDD's directory
    (default: the usual search), where the speaker references are read from."""
    if cfg.outside_asr and digits_said is None:
        raise ValueError("outside_asr needs digits_said: the outside recognizer, handed in by the caller")
    if cfg.speaker:
        if judge_speaker is None:
            raise ValueError("the speaker systems need the speaker judge (judge_speaker)")
        check_speaker_judge(models.spec, judge_speaker)
        for text in cfg.speaker_targets:
            if not parse_pitch_target(text).needs_reference:
                raise ValueError(f"speaker + pitch targets are relative to the reference (e.g. +2st), got {text!r}")
    say = progress or (lambda _msg: None)
    out.mkdir(parents=True, exist_ok=True)
    rate = models.spec.sample_rate
    prof = _profile(cfg)
    guide = PitchGuide(models.spec, models.vocoder, cfg.capacity, device=models.device, **({"head_weight": cfg.head_weight} if cfg.head_weight is not None else {}))
    digits = torch.arange(cfg.samples) % 10
    digit_targets = targets_for("digit", [DIGITS[d] for d in digits.tolist()])  # sample i says digit i mod 10
    timings: dict[str, float] = {}

    def plan(targets: list[Target], digit_kind: str) -> Plan:
        """One system's request: `cfg.samples` rows from the same noise draw (one row per digit target, else
        `cfg.samples` of each), under the evaluation's profile."""
        num = 1 if any(t.guide == "digit" for t in targets) else cfg.samples
        return plan_request(targets, num, cfg.seed, prof, models.guides["noisy"], digit_kind=digit_kind, scale_set=True, pitch_guide=guide)

    def run(name: str, planned: Plan, voice=None) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        mels = sample_plan(models, planned, {"pitch": guide} | ({"speaker": voice} if voice is not None else {}), allow_nonfinite=True)
        timings[name] = round((time.perf_counter() - t0) / cfg.samples, 2)
        say(f"{name}: {timings[name]} s per sample")
        vocoder = request_vocoder(models.vocoder, planned.named)  # what `generate` writes this request with
        waves, ok = vocode_finite(mels, vocoder)  # rows that could not be vocoded are silent (and not ok)
        if cfg.write_wavs:  # every sample, for listening or another tracker (`bench/pitch_second_tracker.py`)
            for i, wave in enumerate(waves):
                write_wav(out / "wavs" / name.replace(" ", "_") / f"{i:03d}.wav", wave, rate)
        return as_written(waves, rate), ok  # the tracker and the recognizer hear the file as written

    waves, ok = run("unguided", plan([], "none"))
    unguided = _heard(waves, ok, rate)
    voiced_medians = [h.median_hz for h in unguided if math.isfinite(h.median_hz)]
    centre = statistics.median(voiced_medians) if voiced_medians else 120.0
    texts = cfg.targets or tuple(f"{centre * 2 ** (k / 12):.0f}" for k in DEFAULT_SHIFTS)
    results: dict = {
        "config": asdict(cfg),
        "profile_pitch": json.loads(prof.per_guide["pitch"].model_dump_json()),
        "sampler": json.loads(prof.sampler.model_dump_json()),
        "crepe": guide.describe() | {"targets": None},
        "vocoder": describe_vocoder(models.vocoder),
        "unguided": {"median_f0_hz": round(centre, 1), "sample_f0_hz": [round(h.median_hz, 1) for h in unguided], "voiced_fraction": summarize([0.0] * len(unguided), unguided)["voiced_fraction"]},
        "targets": {},
    }
    asr: dict[str, float] = {}
    if cfg.digit:
        waves, ok = run("digit", plan(digit_targets, "noisy"))
        if cfg.outside_asr:
            said = digits_said(waves, rate)
            asr["digit"] = round(sum(s == int(d) for s, d in zip(said, digits)) / cfg.samples, 3)
    for text in texts:
        systems = [("pitch", plan([Target("pitch", text)], "none"))]
        systems += [("digit+pitch", plan([*digit_targets, Target("pitch", text)], "noisy"))] if cfg.digit else []
        line = resolve_pitch(parse_pitch_target(text))  # exactly as asked (the guide keeps it in float32 cents)
        row: dict = {"line_hz": [round(line.start_hz, 1), round(line.end_hz, 1)], "shift_from_unguided_st": round(12 * math.log2(line.median_hz / centre), 2)}
        for name, planned in systems:
            waves, ok = run(f"{name} {text}", planned)
            heard = _heard(waves, ok, rate)
            errors = [h.error_semitones(line) for h in heard]
            row[name] = summarize(errors, heard) | {"sample_f0_hz": [round(h.median_hz, 1) for h in heard]}
            if name == "digit+pitch" and cfg.outside_asr:
                said = digits_said(waves, rate)
                row[name]["digit_accuracy"] = round(sum(s == int(d) for s, d in zip(said, digits)) / cfg.samples, 3)
        results["targets"][text] = row
    results["digit_only_accuracy"] = asr.get("digit")
    if cfg.speaker:
        results["speaker"] = _speaker_systems(models, cfg, prof, guide, run, judge_speaker, data_root)
    results["seconds_per_sample"] = timings
    results["acceptance"] = acceptance(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(report(results))
    return results


def speaker_references(cfg: PitchEvalConfig, data_root: str | None) -> list:
    """`cfg.samples` reference clips of the split, fixed by rule (evaluate-voice's `pick_references`), taken
    speaker by speaker in turn so that every FSDD speaker is a target before any is one twice."""
    per = math.ceil(cfg.samples / len(FSDD_SPEAKERS))
    refs = pick_references(fsdd_split(list_fsdd(resolve_fsdd_root(data_root)), cfg.split), cfg.split, per)
    return [refs[s * per + r] for r in range(per) for s in range(len(FSDD_SPEAKERS))][: cfg.samples]


def _speaker_systems(models: ModelSet, cfg: PitchEvalConfig, prof: GuidanceProfile, guide: PitchGuide, run, judge: ModelFile, data_root: str | None) -> dict:
    """Speaker-only and speaker + pitch (each of `cfg.speaker_targets`) towards one reference per sample, planned
    as `generate --target speaker=REF --target pitch=+2st` plans them (the statistics voice guide, the
    reference's median F0 as CREPE hears it): the speaker judge's rate for the reference's speaker and the
    encoder's cosine to the reference on the written audio, and for the composites pYIN's error to each
    row's own target line."""
    spec, rate = models.spec, models.spec.sample_rate
    refs = speaker_references(cfg, data_root)
    labels = [c.path.name for c in refs]
    waves = {c.path.name: load_wave(c.path, rate) for c in refs}
    voice = make_voice_guide("stats", spec, models.device)
    encoder = VoiceGuide(spec, device=models.device)  # an ear that never guides here
    for label, wave in waves.items():
        voice.add_reference(label, wave, rate)
        encoder.add_reference(label, wave, rate)
    reference_hz = {label: guide.median_f0(wave, rate) for label, wave in waves.items()}
    speaker_of = torch.tensor([FSDD_SPEAKERS.index(c.speaker) for c in refs])
    speakers = targets_for("speaker", labels)

    def heard_speaker(written: torch.Tensor, ok: torch.Tensor) -> dict:
        _, logits = judge_outputs(judge.model, hear(written, spec))
        right = (logits.argmax(1) == speaker_of) & ok
        cosine = (encoder.embed_waves(written, rate).cpu() * encoder.references.cpu()[: len(refs)]).sum(1)
        return {"speaker_rate": round(float(right.double().mean()), 3), "encoder_cosine": round(float(cosine[ok].mean()), 3) if bool(ok.any()) else None}

    def plan(targets: list[Target]) -> Plan:
        return plan_request(targets, 1, cfg.seed, prof, models.guides["noisy"], voice, "none", scale_set=True, pitch_guide=guide, reference_hz=reference_hz, paired=True)

    def shifts(heard: list[HeardPitch]) -> dict:
        """Each sample's pYIN median F0 against its reference's, in semitones, and their median."""
        st = [round(12 * math.log2(h.median_hz / reference_hz[label]), 2) if math.isfinite(h.median_hz) else None for h, label in zip(heard, labels)]
        finite = [v for v in st if v is not None]
        return {"shift_from_reference_st": st, "median_shift_st": round(statistics.median(finite), 2) if finite else None}

    written, ok = run("speaker", plan(speakers), voice)
    heard = _heard(written, ok, rate)
    out: dict = {
        "references": labels,
        "reference_f0_hz": [round(reference_hz[label], 1) for label in labels],
        "speaker_only": heard_speaker(written, ok) | shifts(heard) | {"sample_f0_hz": [round(h.median_hz, 1) for h in heard]},
        "targets": {},
    }
    for text in cfg.speaker_targets:
        planned = plan([*speakers, *targets_for("pitch", [text] * len(labels))])
        written, ok = run(f"speaker+pitch {text}", planned, voice)
        heard = _heard(written, ok, rate)
        lines = [planned.pitch_lines[int(k)] for k in planned.named["pitch"]]
        errors = [h.error_semitones(line) for h, line in zip(heard, lines)]
        out["targets"][text] = summarize(errors, heard) | heard_speaker(written, ok) | shifts(heard) | {
            "line_hz": [round(line.median_hz, 1) for line in lines], "sample_f0_hz": [round(h.median_hz, 1) for h in heard],
        }
    return out


def _pooled(rows: list[dict], key: str) -> float:
    """A rate over several targets' rows, each weighted by its sample count `n`."""
    return round(sum(r[key] * r["n"] for r in rows) / sum(r["n"] for r in rows), 3)


def acceptance(results: dict) -> dict:
    """The issue's two checks over every target: share of samples within 1 st (>= 0.75), composite digit rate
    >= 0.9 x digit-only's."""
    out: dict = {}
    for system in ("pitch", "digit+pitch"):
        rows = [r[system] for r in results["targets"].values() if system in r]
        if rows:
            out[f"{system}_within_1st"] = _pooled(rows, "within_1st")
    base = results.get("digit_only_accuracy")
    rates = [r["digit+pitch"].get("digit_accuracy") for r in results["targets"].values() if "digit+pitch" in r]
    if base is not None and rates and all(v is not None for v in rates):
        out["composite_digit_accuracy"] = round(statistics.fmean(rates), 3)
        out["composite_over_digit_only"] = round(out["composite_digit_accuracy"] / base, 3) if base > 0 else None
    spk = results.get("speaker")
    if spk and spk["targets"]:
        rows = list(spk["targets"].values())
        out["speaker+pitch_within_1st"] = _pooled(rows, "within_1st")
        out["speaker_only_rate"] = spk["speaker_only"]["speaker_rate"]
        out["composite_speaker_rate"] = _pooled(rows, "speaker_rate")
        base = out["speaker_only_rate"]
        out["composite_over_speaker_only"] = round(out["composite_speaker_rate"] / base, 3) if base > 0 else None
    return out


def report(results: dict) -> str:
    cfg = results["config"]
    lines = [
        "# Pitch guidance (CREPE), heard by pYIN",
        "",
        f"{cfg['samples']} samples per system and target, seed {cfg['seed']}, sampler {results['sampler']['kind']} "
        f"{results['sampler']['steps']} steps; CREPE {cfg['capacity']} through the {results['crepe']['route']} route; "
        f"audio written by the {results['vocoder']['kind']} vocoder; "
        f"pitch settings {json.dumps(results['profile_pitch'])}.",
        "",
        f"Unguided median F0 (pYIN): {results['unguided']['median_f0_hz']} Hz.",
        "",
        "| target | line Hz | shift st | system | within 1 st | median abs err st | unvoiced | voiced frac | glide st | digit acc |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for text, row in results["targets"].items():
        for system in ("pitch", "digit+pitch"):
            if system in row:
                r = row[system]
                lines.append(
                    f"| {text} | {row['line_hz'][0]}-{row['line_hz'][1]} | {row['shift_from_unguided_st']} | {system} | {r['within_1st']} | "
                    f"{r['median_abs_error_st']} | {r['unvoiced']} | {r['voiced_fraction']} | {r['median_glide_st']} | {r.get('digit_accuracy', '')} |"
                )
    lines += ["", f"Digit-only accuracy (outside ASR): {results['digit_only_accuracy']}", ""]
    spk = results.get("speaker")
    if spk:
        only = spk["speaker_only"]
        lines += [
            f"Speaker + pitch: {len(spk['references'])} {cfg['split']}-split references ({', '.join(spk['references'])}), "
            f"median F0 as CREPE hears them {', '.join(map(str, spk['reference_f0_hz']))} Hz; one sample each. Speaker rate: "
            "the FSDD speaker judge names the reference's speaker; cosine: resemblyzer's encoder, written audio to reference.",
            "",
            "| system | median shift from reference st | within 1 st | median abs err st | unvoiced | voiced frac | speaker rate | encoder cosine |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| speaker only | {only['median_shift_st']} | - | - | - | - | {only['speaker_rate']} | {only['encoder_cosine']} |",
        ]
        for text, r in spk["targets"].items():
            lines.append(
                f"| speaker + pitch {text} | {r['median_shift_st']} | {r['within_1st']} | {r['median_abs_error_st']} | {r['unvoiced']} | "
                f"{r['voiced_fraction']} | {r['speaker_rate']} | {r['encoder_cosine']} |"
            )
        lines.append("")
    lines += [f"Acceptance: {json.dumps(results['acceptance'])}", "",
              f"Seconds per sample: {json.dumps(results['seconds_per_sample'])}", ""]
    return "\n".join(lines)
