"""Voice and composite guidance, evaluated: does zero-shot voice guidance make samples sound like the reference?

For reference clips of every FSDD speaker (from one split; test for reported figures, val to explore),
samples are generated from the same noise by up to five systems: unguided (baseline), each zero-shot
voice guide towards the reference (`stats`: the reference's spectral statistics; `encoder`:
resemblyzer's speaker encoder), and each voice guide together with the digit guide (composite).
They are vocoded and re-analysed, as a listener gets them, then scored by:
- the FSDD speaker judge (trained on FSDD, never used for guidance): rate of samples assigned to the
  reference's speaker (chance 1/6), and for composites the rate right on digit and speaker both;
- the speaker encoder (resemblyzer's, through its own front end on the vocoded waveform): cosine to
  the reference, next to the cosines of real clips of the same speaker and of the other speakers
  (raw and vocoded, so the vocoder's share of the gap is visible);
- the statistics guide's distance to the reference (0 = the same long-term spectrum and spread);
- with a `listen` hook (`guidance.listening`; the CLI fills it from `outside_judges`), judges that
  hear the waveform: the outside ASR's accuracy on the digit asked for (systems with a digit target)
  and DNSMOS quality, next to the same figures for the reference clips and their vocoder round trip.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from guidance.data import DIGITS, FSDD_SPEAKERS, Clip, fsdd_split, list_fsdd, load_wave, resolve_fsdd_root, write_wav
from guidance.diffusion.samplers import SamplerConfig
from guidance.features import LogMel, Vocoder, fit_length
from guidance.finite import nonfinite_rows
from guidance.listening import OUTSIDE_COLUMNS, WHAT_EACH_JUDGE_HEARS, Listen, fmt_outside, listen_to, strip_settings
from guidance.vocoders import describe_vocoder
from guidance.guides import DEFAULT_PROFILES, GuidanceProfile, GuideSettings
from guidance.guides.reference import ReferenceGuide
from guidance.guides.voice import DEFAULT_GRADIENT_BLUR, DEFAULT_VOICE_SETTINGS, VoiceGuide
from guidance.guides.voice_stats import DEFAULT_STATS_SETTINGS, VoiceStatsGuide, words_said
from guidance.metrics import hear, judge_outputs
from guidance.models import ModelFile
from guidance.generate import digit_guide_of
from guidance.pipeline import ModelSet, sample_plan, vocode
from guidance.plan import COMPOSITE_DIGIT_SCALE, Plan, plan_request, targets_for  # the composite's digit scale (picked on val), written once there

# system -> (voice guide kind or None, with the digit guide)
SYSTEMS: dict[str, tuple[str | None, bool]] = {
    "unguided": (None, False),
    "stats": ("stats", False),
    "encoder": ("encoder", False),
    "stats+digit": ("stats", True),
    "encoder+digit": ("encoder", True),
}
_FIRST_TAKE = {"test": 0, "val": 5, "train": 10}


@dataclass
class VoiceEvalConfig:
    split: str = "test"
    refs_per_speaker: int = 3
    samples_per_ref: int = 4
    seed: int = 0
    steps: int = SamplerConfig.steps
    digit_kind: str = "noisy"
    stats: GuideSettings = DEFAULT_STATS_SETTINGS
    encoder: GuideSettings = DEFAULT_VOICE_SETTINGS
    gradient_blur: int = DEFAULT_GRADIENT_BLUR  # the encoder guide's
    digit: GuideSettings = GuideSettings(scale=COMPOSITE_DIGIT_SCALE)
    voice_weight: float = 1.0
    digit_weight: float = 1.0
    batch_size: int = 50
    systems: tuple[str, ...] = tuple(SYSTEMS)
    real_baselines: bool = True  # cosines of real clips to the references (Griffin-Lim over the whole split)

    def profile(self, voice_kind: str | None) -> GuidanceProfile:
        base = DEFAULT_PROFILES["noisy"].with_sampler(steps=self.steps)
        per_guide = {"digit": self.digit}
        if voice_kind is not None:
            per_guide["speaker"] = self.stats if voice_kind == "stats" else self.encoder
        return base.model_copy(update={"name": "voice-eval", "guide": self.digit, "per_guide": per_guide})


def check_speaker_judge(spec, judge: ModelFile) -> None:
    """ValueError unless `judge` hears the model's features and names FSDD's speakers, in FSDD's order."""
    spec.check_compatible(judge.spec, what=f"judge {judge.name}")
    if list(judge.labels) != FSDD_SPEAKERS:
        raise ValueError(f"speaker judge labels {judge.labels} are not FSDD's speakers {FSDD_SPEAKERS}")


def pick_references(clips: list[Clip], split: str, per_speaker: int) -> list[Clip]:
    """`per_speaker` clips of every speaker, fixed by rule (no choice by result): reference r of speaker s
    is digit (3r + s) mod 10 at take (first take of the split + r) mod 5."""
    index = {(c.speaker, c.digit, c.take): c for c in clips}
    out = []
    for s, speaker in enumerate(FSDD_SPEAKERS):
        for r in range(per_speaker):
            key = (speaker, (3 * r + s) % 10, _FIRST_TAKE[split] + r % 5)
            if key not in index:
                raise FileNotFoundError(f"reference clip {key} missing from the {split} split")
            out.append(index[key])
    return out


def system_plan(
    models: ModelSet, cfg: "VoiceEvalConfig", name: str, references: list[str], digits: list[str], voice: ReferenceGuide | None,
    said: torch.Tensor | None = None, word_offsets: torch.Tensor | None = None,
) -> Plan:
    """The protocol's request for one system: row i is reference `references[i]` (a label of `voice`) with the
    digit `digits[i]` (paired targets: each reference has its own digits, not every digit), from one noise draw
    for every system. The voice guide is left out of the unguided system, the digit guide (kind "none") of the
    voice-only ones. `said` (the word each row of `voice`'s table says) and `word_offsets` retarget the stats
    + digit composite's references to the digit asked for."""
    voice_kind, with_digit = SYSTEMS[name]
    targets = (targets_for("digit", digits) if with_digit else []) + (targets_for("speaker", references) if voice_kind else [])
    weights = {**({"digit": cfg.digit_weight} if with_digit else {}), **({"speaker": cfg.voice_weight} if voice_kind else {})}
    return plan_request(
        targets, 1 if targets else len(digits), cfg.seed, cfg.profile(voice_kind), digit_guide_of(models, cfg.digit_kind),
        voice if voice_kind else None, cfg.digit_kind if with_digit else "none", weights, scale_set=True,
        said=said, offsets=word_offsets if said is not None else None, paired=True,
    )


def _waves(clips: list[Clip], num_samples: int) -> torch.Tensor:
    return torch.stack([fit_length(load_wave(c.path, 16000), num_samples) for c in clips])


def real_cosines(guide: VoiceGuide, refs: list[Clip], clips: list[Clip], spec, vocoder: Vocoder) -> dict:
    """Mean cosine of each reference to real clips (raw and vocoder round trips) of its own speaker
    (other clips than the reference) and of the other speakers, over the same split."""
    waves = _waves(clips, spec.num_samples)
    raw = guide.embed_waves(waves, spec.sample_rate)
    vocoded = guide.embed_waves(vocode(LogMel(spec)(waves), vocoder), spec.sample_rate)
    speakers = torch.tensor([FSDD_SPEAKERS.index(c.speaker) for c in clips])
    out: dict[str, list[float]] = {"same_raw": [], "other_raw": [], "same_vocoded": [], "other_vocoded": []}
    for i, ref in enumerate(refs):
        e = guide.references[i].cpu()
        s = FSDD_SPEAKERS.index(ref.speaker)
        same = (speakers == s) & torch.tensor([c.path != ref.path for c in clips])
        for tag, emb in (("raw", raw.cpu()), ("vocoded", vocoded.cpu())):
            cos = emb @ e
            out[f"same_{tag}"].append(float(cos[same].mean()))
            out[f"other_{tag}"].append(float(cos[speakers != s].mean()))
    return {k: sum(v) / len(v) for k, v in out.items()}


def evaluate_voice(
    models: ModelSet,
    judge_digit: ModelFile,
    judge_speaker: ModelFile,
    cfg: VoiceEvalConfig,
    out: Path | None = None,
    data_root: str | None = None,
    guides: dict[str, ReferenceGuide] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    word_offsets: torch.Tensor | None = None,
    listen: Listen | None = None,
) -> dict:
    """Run the voice/composite protocol; write report.json, report.md and a few WAVs under `out` when given.

    `guides` maps "stats" and "encoder" to voice guides (built here when left out); the encoder one
    also measures every system's cosines. With `word_offsets` (the word-spectra model's table) the
    stats + digit composite retargets each reference to the digit asked for (`VoiceStatsGuide.for_word`),
    the reference's own digit as the clean classifier hears it. `listen`: judges that hear waveforms
    (see `guidance.listening`); None leaves their figures out.
    """
    spec = models.spec
    spec.check_compatible(judge_digit.spec, what=f"judge {judge_digit.name}")
    check_speaker_judge(spec, judge_speaker)
    unknown = [name for name in cfg.systems if name not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown voice evaluation system {unknown[0]!r}; known: {', '.join(SYSTEMS)}")
    clips = fsdd_split(list_fsdd(resolve_fsdd_root(data_root)), cfg.split)
    refs = pick_references(clips, cfg.split, cfg.refs_per_speaker)
    guides = dict(guides or {})
    guides.setdefault("encoder", VoiceGuide(spec, device=models.device))
    guides.setdefault("stats", VoiceStatsGuide(spec, device=models.device))
    encoder, stats = guides["encoder"], guides["stats"]
    encoder.gradient_blur = cfg.gradient_blur
    ref_waves = _waves(refs, spec.num_samples)
    ref_index = {}
    for kind, guide in guides.items():
        ref_index[kind] = torch.tensor([guide.add_reference(str(c.path), w, spec.sample_rate) for c, w in zip(refs, ref_waves)])
    n = cfg.samples_per_ref
    row_ref = torch.arange(len(refs)).repeat_interleave(n)  # row -> reference
    ref_speaker = torch.tensor([FSDD_SPEAKERS.index(refs[i].speaker) for i in range(len(refs))])[row_ref]
    digit_target = (torch.arange(len(row_ref)) * 7 + row_ref) % len(DIGITS)  # every digit, spread over refs
    row_labels = [str(refs[r].path) for r in row_ref.tolist()]  # each row's reference, by its label in the voice guides
    row_digits = [DIGITS[d] for d in digit_target.tolist()]
    report: dict = {
        "protocol": f"FSDD {cfg.split} split references ({len(refs)} clips, {cfg.refs_per_speaker} per speaker), "
        f"{n} samples per reference; generated audio is vocoded ({describe_vocoder(models.vocoder)['kind']}) before scoring",
        "config": {
            **asdict(cfg),
            **{k: getattr(cfg, k).model_dump() for k in ("stats", "encoder", "digit")},
            "stats_guide": {
                "frame_sharpness": stats.frame_sharpness, "spread_weight": stats.spread_weight, "word_spectra": word_offsets is not None,
            },
        },
        "references": [c.path.name for c in refs],
        "real_cosines": real_cosines(encoder, refs, clips, spec, models.vocoder) if cfg.real_baselines else None,
        "systems": [],
    }
    if listen is not None:
        ref_digits = torch.tensor([c.digit for c in refs])
        with torch.no_grad():
            round_trip = vocode(LogMel(spec)(ref_waves), models.vocoder)
        real = listen_to(listen, ref_waves, spec.sample_rate, ref_digits)
        report["outside_judges"] = {
            "clips": f"the {len(refs)} reference clips, cut or padded to {spec.num_samples / spec.sample_rate:.3f} s",
            "settings": real.get("settings"),
            "real": strip_settings(real),
            "round_trip": strip_settings(listen_to(listen, round_trip, spec.sample_rate, ref_digits, ~nonfinite_rows(round_trip))),
        }
    for idx, name in enumerate(cfg.systems):
        if progress:
            progress(name, idx, len(cfg.systems))
        voice_kind, with_digit = SYSTEMS[name]
        voice = guides[voice_kind] if voice_kind is not None else None
        said = None
        if voice_kind == "stats" and with_digit and word_offsets is not None:
            said = torch.zeros(len(voice.labels), dtype=torch.long)  # by row of the guide's table
            said[ref_index["stats"]] = words_said(models.guides["clean"], ref_waves, spec, models.device)  # as the clean classifier hears them
        plan = system_plan(models, cfg, name, row_labels, row_digits, voice, said, word_offsets)
        started = time.time()
        mels = sample_plan(models, plan, {"speaker": voice} if voice is not None else None, batch_size=cfg.batch_size)
        seconds = (time.time() - started) / len(mels)
        waves = vocode(mels, models.vocoder)
        heard = hear(waves, spec)
        _, spk_logits = judge_outputs(judge_speaker.model, heard)
        _, dig_logits = judge_outputs(judge_digit.model, heard)
        speaker_ok = spk_logits.argmax(1) == ref_speaker
        digit_ok = dig_logits.argmax(1) == digit_target
        cos = (encoder.embed_waves(waves, spec.sample_rate).cpu() * encoder.references[ref_index["encoder"][row_ref]].cpu()).sum(1)
        with torch.no_grad():
            distance = stats.distance(heard.to(stats.device), ref_index["stats"][row_ref]).cpu()
        report["systems"].append(
            {
                "name": name,
                "speaker_rate": float(speaker_ok.double().mean()),
                "digit_rate": float(digit_ok.double().mean()) if with_digit else None,
                "both_rate": float((speaker_ok & digit_ok).double().mean()) if with_digit else None,
                "cosine_to_reference": float(cos.mean()),
                "stats_distance": float(distance.mean()),
                "per_speaker_rate": [float(speaker_ok[ref_speaker == s].double().mean()) for s in range(len(FSDD_SPEAKERS))],
                "seconds_per_sample": seconds,
            }
        )
        if listen is not None:  # the digit asked for is the ASR's target; without one, DNSMOS only
            figures = listen_to(listen, waves, spec.sample_rate, digit_target if with_digit else None, ~nonfinite_rows(waves))
            report["systems"][-1]["outside"] = strip_settings(figures)
        if out is not None:
            for r in range(len(refs)):  # one sample per reference, for listening
                write_wav(Path(out) / "wavs" / name / f"{refs[r].path.stem}_ref_000.wav", waves[r * n], spec.sample_rate)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.md").write_text(markdown_report(report))
    return report


def _settings_text(g: dict) -> str:
    scaling = "norm-scaled" if g["norm_scaling"] else "plain"
    return f"{scaling} {g['scale']:g}, sigma {g['sigma_lo']:g}-{g['sigma_hi']:g}"


def markdown_report(report: dict) -> str:
    rc = report["real_cosines"] or {k: float("nan") for k in ("same_raw", "other_raw", "same_vocoded", "other_vocoded")}
    cfg = report["config"]
    sg = cfg["stats_guide"]
    lines = [
        "# Voice and composite guidance",
        "",
        report["protocol"] + ".",
        "",
        f"- stats guide (the reference's spectral statistics): {_settings_text(cfg['stats'])}, frame sharpness "
        f"{sg['frame_sharpness']:g}, spread weight {sg['spread_weight']:g}; in stats+digit the reference is retargeted "
        f"to the digit asked for: {'yes (word-spectra model)' if sg.get('word_spectra') else 'no'};",
        f"- encoder guide (resemblyzer): {_settings_text(cfg['encoder'])}, gradient blur {cfg['gradient_blur']};",
        f"- digit guide in composites ({cfg['digit_kind']}): {_settings_text(cfg['digit'])}; weights voice "
        f"{cfg['voice_weight']:g}, digit {cfg['digit_weight']:g};",
        f"- {cfg['steps']} Heun steps, noise seed {cfg['seed']}, the same noise for every system.",
        "",
    ]
    outside = report.get("outside_judges")
    extra = [title.replace("acc.", "digit") for _, title in OUTSIDE_COLUMNS] if outside else []
    lines += [
        "| system | judge: reference speaker | judge: digit | judge: both | encoder cosine to reference (vocoded) | stats distance | s/sample |"
        + "".join(f" {t} |" for t in extra),
        "|---|---|---|---|---|---|---|" + "---|" * len(extra),
    ]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for s in report["systems"]:
        lines.append(
            f"| {s['name']} | {pct(s['speaker_rate'])} | {pct(s['digit_rate'])} | {pct(s['both_rate'])} | "
            f"{s['cosine_to_reference']:.3f} | {s['stats_distance']:.3f} | {s['seconds_per_sample']:.2f} |"
            + "".join(f" {fmt_outside(s.get('outside'), k)} |" for k, _ in OUTSIDE_COLUMNS if outside)
        )
    if outside:
        for label, row in (("*reference clips*", "real"), ("*vocoder round trip*", "round_trip")):
            lines.append(f"| {label} | - | - | - | - | - | - |" + "".join(f" {fmt_outside(outside[row], k)} |" for k, _ in OUTSIDE_COLUMNS))
    lines += [
        "",
        "Chance for the speaker judge is 16.7% (6 speakers); for digit and speaker both, 1.7%.",
        "",
    ]
    if outside:
        lines += [
            f"The outside judges hear the waveform: the outside ASR's accuracy on the digit asked for (systems without a "
            f"digit target: -) and DNSMOS quality. Reference rows (in italics): {outside['clips']}, as recorded and after "
            "the report's vocoder; the ASR's target there is the digit each reference says.",
            "",
        ]
    lines += [
        "Rate to the reference speaker, per reference speaker:",
        "",
        "| system | " + " | ".join(FSDD_SPEAKERS) + " |",
        "|---|" + "---|" * len(FSDD_SPEAKERS),
    ]
    for s in report["systems"]:
        lines.append(f"| {s['name']} | " + " | ".join(pct(v) for v in s["per_speaker_rate"]) + " |")
    lines += [
        "",
        "| real clips of the split | encoder cosine to reference (raw) | (vocoded) |",
        "|---|---|---|",
        f"| same speaker | {rc['same_raw']:.3f} | {rc['same_vocoded']:.3f} |",
        f"| other speakers | {rc['other_raw']:.3f} | {rc['other_vocoded']:.3f} |",
        "",
    ]
    if outside:
        lines += [
            *WHAT_EACH_JUDGE_HEARS[:-1],
            "- The speaker encoder (resemblyzer's, not trained here either) hears the vocoded waveform through its own "
            "front end; the stats distance reads the log-Mel of the re-analysed audio.",
            "",
        ]
    return "\n".join(lines)
