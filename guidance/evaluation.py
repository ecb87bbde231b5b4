"""The evaluation protocol (../shared/docs/evaluation.md): unconditional, noise-conditioned guidance
and clean-classifier guidance, side by side on the same noise, scored by independent judges.

Generated log-Mels are vocoded and re-analysed before the judge hears them, exactly as a listener
would get them; the judge never guided anything.

A generated sample that is not finite (its log-Mel, its audio, or the judge's view of it) does not
stop the evaluation: the system's `nonfinite_samples` counts it, it counts as a miss for the
accuracies, and the distribution measures (FD, IS, mIS, AM) are reported as NaN (null in
report.json) for that system rather than computed on a silently smaller set. The real-clip floors
must be finite: a judge that cannot hear real clips finitely makes the whole report meaningless.

With a `listen` hook (`guidance.listening`; the CLI fills it from `outside_judges`), judges that hear
the waveform itself, rather than its log-Mel, score every system's vocoded audio (finite rows only),
and, once per report, real clips of the split (cut or padded to the model's clip length, the fair
comparison) and their round trip through the report's vocoder.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from guidance.data import DIGITS, fsdd_features, fsdd_split, fsdd_vocoded_features, list_fsdd, load_waves, resolve_fsdd_root, write_wav
from guidance.guides import DEFAULT_PROFILES, GuidanceProfile
from guidance.guides.kinds import CLASSIFIER_GUIDE_KINDS
from guidance.finite import nonfinite_rows, require_finite
from guidance.listening import OUTSIDE_COLUMNS, WHAT_EACH_JUDGE_HEARS, Listen, fmt_outside, listen_to, real_clip_subset, strip_settings
from guidance.metrics import (
    accuracy,
    am_score,
    frechet_distance,
    hear,
    inception_score,
    judge_outputs,
    modified_inception_score,
    per_class_accuracy,
)
from guidance.models import ModelFile
from guidance.cost import PeakMemory, count_macs, parameter_counts
from guidance.models.score_subnet import SingleBackboneModel
from guidance.generate import digit_guide_of
from guidance.pipeline import ModelSet, guided_denoiser, sample_plan, vocode, vocode_finite
from guidance.plan import Plan, plan_request, targets_for
from guidance.plots import spectrogram_grid
from guidance.features import LogMel, Vocoder
from guidance.vocoders import describe_vocoder


@dataclass
class EvalConfig:
    per_class: int = 50
    seed: int = 0
    # None: one system per guide kind at its base profile's own scale (the shipped, validation-picked default)
    noisy_scales: list[float] | None = None
    clean_scales: list[float] | None = None
    steps: int | None = None
    batch_size: int = 50
    split: str = "test"  # "val" for exploration and tuning; the test split is for final reports
    base_profiles: dict[str, GuidanceProfile] = field(default_factory=dict)  # guide kind -> profile to scale
    subnet_scales: list[float] = field(default_factory=lambda: [3.0])  # gamma for ScoreSubnet systems (when given subnets)
    outside_real_per_class: int | None = None  # real clips per digit the waveform judges hear (None: per_class, capped by the split)


@dataclass
class SystemResult:
    name: str
    kind: str
    scale: float
    judge_accuracy: float
    guide_accuracy: float | None
    fd: float
    inception_score: float
    modified_inception_score: float
    am_score: float
    per_class_accuracy: list[float]
    seconds_per_sample: float
    profile: dict
    generator: str = "unet"  # "unet" (U-Net denoiser, separate classifier) or "score-subnet" (single backbone)
    params_total: int = 0
    params_trainable: int = 0
    macs_per_eval: int = 0  # one denoiser call D(x, sigma=1) for one sample, backward passes included
    macs_per_step: int = 0  # sampling one sample, averaged over the sampler's steps
    peak_memory_mb: float = float("nan")
    memory_method: str = ""
    nonfinite_samples: int = 0  # samples whose log-Mel, audio or judge outputs were NaN/inf (FD, IS, mIS, AM are then NaN)
    outside: dict | None = None  # the waveform judges' figures (guidance.listening.listen_to), when a listen hook was given


_TAKES = {"test": "takes 0-4", "val": "takes 5-9", "train": "takes 10-49"}


def _systems(cfg: EvalConfig) -> list[tuple[str, str, GuidanceProfile]]:
    def prof(kind: str, scale: float | None = None) -> GuidanceProfile:
        p = cfg.base_profiles.get(kind, DEFAULT_PROFILES[kind])
        if scale is not None:
            p = p.with_guide(scale=scale)
        return p.with_sampler(steps=cfg.steps) if cfg.steps else p

    out = [("unconditional", "none", prof("unconditional"))]
    for kind, scales in (("noisy", cfg.noisy_scales), ("clean", cfg.clean_scales)):
        for s in scales if scales is not None else [prof(kind).guide.scale]:
            out.append((f"{kind}@{s:g}", kind, prof(kind, s)))
    return out


def _subnet_systems(cfg: EvalConfig, subnets: dict[str, ModelSet]) -> list[tuple[str, str, GuidanceProfile, ModelSet]]:
    """ScoreSubnet systems: unconditional and guided by their own backbone at each of cfg.subnet_scales.
    Named subnet-uncond / subnet-guided@gamma, with the regime label inserted when there are several."""
    out = []
    for label, ms in subnets.items():
        prefix = "subnet" if len(subnets) == 1 else f"subnet-{label}"
        base = cfg.base_profiles.get("noisy", DEFAULT_PROFILES["noisy"])
        uncond = DEFAULT_PROFILES["unconditional"]
        profiles = [(f"{prefix}-uncond", "none", uncond)] + [
            (f"{prefix}-guided@{s:g}", "noisy", base.with_guide(scale=s)) for s in cfg.subnet_scales
        ]
        for name, kind, p in profiles:
            out.append((name, kind, p.with_sampler(steps=cfg.steps) if cfg.steps else p, ms))
    return out


def digit_plan(models: ModelSet, kind: str, profile: GuidanceProfile, per_class: int, seed: int) -> Plan:
    """The protocol's request for one system: every digit, `per_class` samples each (digit-major), under the
    system's own profile (`scale_set`: the protocol chose it), noise drawn from `seed` (the same for every system)."""
    return plan_request(targets_for("digit", DIGITS), per_class, seed, profile, digit_guide_of(models, kind), digit_kind=kind, scale_set=True)


def system_costs(models: ModelSet, kind: str, profile: GuidanceProfile) -> dict:
    """Parameters (total, trainable), MACs of one denoiser evaluation at sigma 1 and per sampler step
    (one sample through the whole trajectory, divided by the steps: Heun's two evaluations per step and
    guidance windows included)."""
    modules = [models.denoiser.model] + ([models.guides[kind].model] if kind != "none" else [])
    total, trainable = parameter_counts(modules)
    plan = plan_request(targets_for("digit", DIGITS[:1]), 1, 12345, profile, digit_guide_of(models, kind), digit_kind=kind, scale_set=True)
    x = plan.noise(models.spec)
    denoiser = guided_denoiser(models, kind, plan.named["digit"].to(models.device), profile)
    with torch.no_grad():
        per_eval = count_macs(lambda: denoiser(x.to(models.device), torch.ones(1, device=models.device)))
    per_sample = count_macs(lambda: sample_plan(models, plan, batch_size=1, allow_nonfinite=True))
    generator = "score-subnet" if isinstance(models.denoiser.model, SingleBackboneModel) else "unet"
    return {
        "generator": generator,
        "params_total": total,
        "params_trainable": trainable,
        "macs_per_eval": per_eval,
        "macs_per_step": per_sample // profile.sampler.steps,
    }


def evaluate(
    models: ModelSet,
    judge_digit: ModelFile,
    judge_speaker: ModelFile | None,
    cfg: EvalConfig,
    out: Path,
    data_root: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    subnets: dict[str, ModelSet] | None = None,
    listen: Listen | None = None,
) -> dict:
    """Run the protocol, write report.json, report.md, WAVs and a spectrogram grid under `out`.

    `listen`: judges that hear waveforms (see `guidance.listening`); None leaves their figures out.
    """
    spec = models.spec
    for j in (judge_digit, judge_speaker):
        if j is not None:
            spec.check_compatible(j.spec, what=f"judge {j.name}")
    for label, ms in (subnets or {}).items():
        spec.check_compatible(ms.spec, what=f"score subnet {label}")
    test = fsdd_features(cfg.split, spec, root=data_root)
    train = fsdd_features("train", spec, root=data_root)
    test_vocoded = fsdd_vocoded_features(cfg.split, spec, root=data_root, vocoder=models.vocoder)
    judge = judge_digit.model
    test_emb, test_logits = judge_outputs(judge, test.mels)
    train_emb, train_logits = judge_outputs(judge, train.mels)
    voc_emb, voc_logits = judge_outputs(judge, test_vocoded.mels)
    floors = {f"embeddings of real {cfg.split}": test_emb, "embeddings of real train": train_emb,
              f"embeddings of vocoded {cfg.split}": voc_emb, f"logits of real {cfg.split}": test_logits, "logits of real train": train_logits}
    for what, values in floors.items():  # the floors and real-clip figures are only meaningful when finite
        require_finite(values, f"digit judge {judge_digit.name}: its {what} clips")
    report: dict = {
        "protocol": f"FSDD {cfg.split} split ({_TAKES[cfg.split]}), judge-scored; generated audio is vocoded ({describe_vocoder(models.vocoder)['kind']}) before judging",
        "config": {**asdict(cfg), "base_profiles": {k: json.loads(v.model_dump_json()) for k, v in cfg.base_profiles.items()}},
        "judges": {
            "digit": {
                "model": judge_digit.name,
                "test_accuracy": accuracy(test_logits, test.digits),
                "test_accuracy_vocoded": accuracy(voc_logits, test_vocoded.digits),
            }
        },
        "fd_floor_train_vs_test": frechet_distance(test_emb, train_emb),
        "fd_vocoded_test_vs_test": frechet_distance(test_emb, voc_emb),
        "real_test": {
            "inception_score": inception_score(test_logits),
            "modified_inception_score": modified_inception_score(test_logits.softmax(1)),
            "am_score": am_score(test_logits.softmax(1), train_logits.softmax(1)),
        },
        "models": models.describe(),
    }
    if judge_speaker is not None:
        _, spk_logits = judge_outputs(judge_speaker.model, test.mels)
        report["judges"]["speaker"] = {"model": judge_speaker.name, "test_accuracy": accuracy(spk_logits, test.speakers)}
    if listen is not None:
        if progress:
            progress("outside judges: real clips", 0, 1)
        report["outside_judges"] = _outside_reference(listen, cfg, models, data_root)

    n = cfg.per_class * len(DIGITS)
    systems = [(*s, models) for s in _systems(cfg)] + _subnet_systems(cfg, subnets or {})
    results: list[SystemResult] = []
    generated: dict[str, torch.Tensor] = {}
    for idx, (name, kind, profile, system_models) in enumerate(systems):
        if progress:
            progress(name, idx, len(systems))
        costs = system_costs(system_models, kind, profile)
        plan = digit_plan(system_models, kind, profile, cfg.per_class, cfg.seed)  # the same targets and noise for every system
        targets = plan.named["digit"]
        started = time.time()
        with PeakMemory(system_models.device) as memory:
            mels = sample_plan(system_models, plan, batch_size=cfg.batch_size, allow_nonfinite=True)
        elapsed = time.time() - started
        emb, logits, ok, waves, audible = _judge_generated(judge, mels, spec, models.vocoder)
        guide_acc = None
        if kind != "none":
            guide_probs = system_models.guides[kind].probabilities(mels.to(system_models.device)).cpu()
            guide_acc = accuracy(guide_probs.masked_fill(~ok.unsqueeze(1), float("nan")), targets)
        scores = _distribution_scores(test_emb, train_logits, emb, logits) if bool(ok.all()) else _NO_SCORES
        results.append(
            SystemResult(
                name=name,
                kind=kind,
                scale=profile.settings_for("digit").scale,
                judge_accuracy=accuracy(logits, targets),
                guide_accuracy=guide_acc,
                **scores,
                per_class_accuracy=per_class_accuracy(logits, targets, len(DIGITS)),
                seconds_per_sample=elapsed / n,
                profile=json.loads(profile.model_dump_json()),
                **costs,
                peak_memory_mb=memory.peak_bytes / 2**20,
                memory_method=memory.method,
                nonfinite_samples=int((~ok).sum()),
                outside=None if listen is None else strip_settings(listen_to(listen, waves, spec.sample_rate, targets, audible)),
            )
        )
        generated[name] = mels
    if progress:
        progress("report", len(systems), len(systems))
    report["systems"] = [_system_record(r) for r in results]
    best = {}
    for kind in CLASSIFIER_GUIDE_KINDS:
        candidates = [r for r in results if r.kind == kind and r.generator == "unet"]
        if candidates:
            top = max(candidates, key=lambda r: (r.nonfinite_samples == 0, r.judge_accuracy, -r.fd if math.isfinite(r.fd) else -math.inf))
            best[kind] = top.name
    report["best"] = best
    if subnets:
        report["subnets"] = {label: ms.describe() for label, ms in subnets.items()}
    _write_outputs(report, results, generated, targets, spec, out, cfg, models.vocoder)
    return report


def _outside_reference(listen: Listen, cfg: EvalConfig, models: ModelSet, data_root: str | None) -> dict:
    """The waveform judges on real clips of the split (cut or padded to the model's clip length, as every
    round trip's input is) and on their round trip through the report's vocoder: what generated audio
    is read against. Clips: `outside_real_per_class` per digit (default `per_class`), chosen by rule."""
    spec = models.spec
    per_digit = cfg.outside_real_per_class or cfg.per_class
    clips = real_clip_subset(fsdd_split(list_fsdd(resolve_fsdd_root(data_root)), cfg.split), per_digit)
    waves = load_waves(clips, spec)
    digits = torch.tensor([c.digit for c in clips])
    with torch.no_grad():
        round_trip = vocode(LogMel(spec)(waves), models.vocoder)
    real = listen_to(listen, waves, spec.sample_rate, digits)
    vocoded = listen_to(listen, round_trip, spec.sample_rate, digits, ~nonfinite_rows(round_trip))
    return {
        "clips": f"{len(clips)} real clips of the {cfg.split} split ({per_digit} per digit at most, lowest takes first, "
        f"speakers in turn), cut or padded to {spec.num_samples / spec.sample_rate:.3f} s",
        "settings": real.get("settings"),
        "real": strip_settings(real),
        "round_trip": strip_settings(vocoded),
    }


def _system_record(result: SystemResult) -> dict:
    """A system's entry in report.json (no `outside` key when no waveform judge listened)."""
    record = asdict(result)
    if record["outside"] is None:
        del record["outside"]
    return record


_NO_SCORES = {"fd": float("nan"), "inception_score": float("nan"), "modified_inception_score": float("nan"), "am_score": float("nan")}


def _judge_generated(judge, mels: torch.Tensor, spec, vocoder: Vocoder) -> tuple[torch.Tensor, ...]:
    """(embeddings, logits, ok, waves, audible) of the judge on generated log-Mels as a listener hears them.

    `ok` is False for a sample whose log-Mel, audio or judge outputs are not finite; its embedding
    and logits rows are NaN, so accuracies count it as a miss and nothing downstream mistakes the
    silence it was vocoded to for a real answer. `waves` are the vocoded samples (silent where the
    log-Mel or audio was not finite) and `audible` marks the rows whose audio is real.
    """
    waves, audible = vocode_finite(mels, vocoder)
    ok = audible.clone()
    emb, logits = judge_outputs(judge, hear(waves, spec))
    ok &= ~nonfinite_rows(emb) & ~nonfinite_rows(logits)
    emb[~ok], logits[~ok] = float("nan"), float("nan")
    return emb, logits, ok, waves, audible


def _distribution_scores(test_emb: torch.Tensor, train_logits: torch.Tensor, emb: torch.Tensor, logits: torch.Tensor) -> dict:
    """FD, IS, mIS and AM of one system's samples (all finite)."""
    probs = logits.softmax(1)
    return {
        "fd": frechet_distance(test_emb, emb),
        "inception_score": inception_score(logits),
        "modified_inception_score": modified_inception_score(probs),
        "am_score": am_score(probs, train_logits.softmax(1)),
    }


def _json_ready(value):
    """`value` with NaN and infinities as None: report.json stays strict JSON (null, not NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def _write_outputs(report, results, generated, targets, spec, out: Path, cfg: EvalConfig, vocoder: Vocoder) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shown = ["unconditional"] + [report["best"][k] for k in CLASSIFIER_GUIDE_KINDS if k in report["best"]]
    shown += [r.name for r in results if r.generator == "score-subnet" and r.kind != "none"][:3]
    first = [int((targets == d).nonzero()[0]) for d in range(len(DIGITS))]
    rows = {name: generated[name][first] for name in shown}
    for name, mels in rows.items():
        waves, ok = vocode_finite(mels, vocoder)
        for d, wave in enumerate(waves):
            if ok[d]:  # a non-finite sample has no audio; its absence (and nonfinite_samples) says so
                write_wav(out / "wavs" / name.replace("@", "_") / f"{d}_000.wav", wave, spec.sample_rate)
    spectrogram_grid(rows, [f"'{d}'" for d in DIGITS], out / "spectrograms.png")
    (out / "report.json").write_text(json.dumps(_json_ready(report), indent=2))
    (out / "report.md").write_text(markdown_report(report))


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.2f}"


def markdown_report(report: dict) -> str:
    j = report["judges"]
    lines = [
        "# Evaluation report",
        "",
        report["protocol"] + ".",
        f"Samples: {report['config']['per_class']} per digit, seed {report['config']['seed']}, the same noise for every system.",
        "",
        "## Judges and floors",
        "",
        "| figure | value |",
        "|---|---|",
        f"| digit judge test accuracy ({j['digit']['model']}) | {_fmt(j['digit']['test_accuracy'], True)} |",
        f"| digit judge accuracy on vocoded test clips | {_fmt(j['digit']['test_accuracy_vocoded'], True)} |",
    ]
    if "speaker" in j:
        lines.append(f"| speaker judge test accuracy ({j['speaker']['model']}) | {_fmt(j['speaker']['test_accuracy'], True)} |")
    lines += [
        f"| FD floor: real train vs real test | {_fmt(report['fd_floor_train_vs_test'])} |",
        f"| FD of vocoded test clips vs test (vocoder floor) | {_fmt(report['fd_vocoded_test_vs_test'])} |",
        f"| IS / mIS / AM of real test clips | {_fmt(report['real_test']['inception_score'])} / "
        f"{_fmt(report['real_test']['modified_inception_score'])} / {_fmt(report['real_test']['am_score'])} |",
        "",
        "## Systems",
        "",
        "Target accuracy as the judge hears it, and as the guiding classifier claims it (the gap measures over-optimisation).",
    ]
    outside = report.get("outside_judges")
    extra = [title for _, title in OUTSIDE_COLUMNS] if outside else []
    if outside:
        lines.append("The outside judges hear the waveform: the digit the outside ASR recognises (target accuracy) and DNSMOS quality.")
    lines += [
        "",
        "| system | scale | judge target acc. | guide-claimed acc. | FD | IS | mIS | AM | s/sample |" + "".join(f" {t} |" for t in extra),
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(extra),
    ]
    for s in report["systems"]:
        mark = " (best)" if s["name"] in report["best"].values() else ""
        lines.append(
            f"| {s['name']}{mark} | {s['scale']:g} | {_fmt(s['judge_accuracy'], True)} | {_fmt(s['guide_accuracy'], True)} | "
            f"{_fmt(s['fd'])} | {_fmt(s['inception_score'])} | {_fmt(s['modified_inception_score'])} | "
            f"{_fmt(s['am_score'])} | {s['seconds_per_sample']:.3f} |" + "".join(f" {fmt_outside(s.get('outside'), k)} |" for k, _ in OUTSIDE_COLUMNS if outside)
        )
    if outside:
        rt = report["real_test"]
        lines.append(
            f"| *real clips* | - | {_fmt(j['digit']['test_accuracy'], True)} | - | - | {_fmt(rt['inception_score'])} | "
            f"{_fmt(rt['modified_inception_score'])} | {_fmt(rt['am_score'])} | - |" + "".join(f" {fmt_outside(outside['real'], k)} |" for k, _ in OUTSIDE_COLUMNS)
        )
        lines.append(
            f"| *vocoder round trip* | - | {_fmt(j['digit']['test_accuracy_vocoded'], True)} | - | {_fmt(report['fd_vocoded_test_vs_test'])} | "
            f"- | - | - | - |" + "".join(f" {fmt_outside(outside['round_trip'], k)} |" for k, _ in OUTSIDE_COLUMNS)
        )
    clean_windows = sorted({s["profile"]["guide"]["sigma_hi"] for s in report["systems"] if s["kind"] == "clean"})
    window = f" (active for sigma <= {', '.join(f'{w:.3g}' for w in clean_windows)})" if clean_windows else ""
    lines += ["", f"Noisy guidance scale is gamma (plain classifier guidance); clean guidance scale is the norm-scaled fraction of the denoiser step{window}.", ""]
    if outside:
        lines += [
            f"Reference rows (in italics): the project's judge figures are over every clip of the split (as in the table above); "
            f"the outside judges heard {outside['clips']}, and the same clips after the report's vocoder. Generated "
            "samples whose audio was not finite are not played to the outside judges: they count as ASR misses and "
            "are left out of the DNSMOS means.",
            "",
        ]
        lines += list(WHAT_EACH_JUDGE_HEARS)
    lines += nonfinite_note(report)
    lines += cost_table(report)
    return "\n".join(lines)


def nonfinite_note(report: dict) -> list[str]:
    """Markdown lines naming the systems that produced non-finite samples (none when all were finite)."""
    bad = [s for s in report["systems"] if s.get("nonfinite_samples")]
    if not bad:
        return []
    n = report["config"]["per_class"] * len(DIGITS)
    lines = [
        "## Non-finite samples",
        "",
        "Samples whose log-Mel, audio or judge outputs were NaN or infinite. They count as misses for the "
        "accuracies; FD, IS, mIS and AM are left out (-) for these systems.",
        "",
    ]
    lines += [f"- {s['name']}: {s['nonfinite_samples']} of {n}" for s in bad]
    lines.append("")
    return lines


def cost_table(report: dict) -> list[str]:
    """Markdown lines: what each system costs (parameters, MACs, time, memory)."""
    systems = [s for s in report["systems"] if s.get("macs_per_eval")]
    if not systems:
        return []
    lines = [
        "## Cost",
        "",
        "Trainable: parameters trained for the generator (a ScoreSubnet's backbone is a frozen, reused classifier). "
        "MACs = FLOPs / 2 from torch.utils.flop_counter, backward passes included; per evaluation: one denoiser call "
        "D(x, sigma = 1) for one sample; per step: one sample's whole trajectory divided by the sampler steps. "
        f"Peak memory: {systems[0].get('memory_method', '')} while sampling a batch of {report['config']['batch_size']}.",
        "",
        "| system | generator | params (total) | params (trainable) | MMACs/eval | MMACs/step | s/sample | peak memory (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in systems:
        lines.append(
            f"| {s['name']} | {s['generator']} | {s['params_total'] / 1e6:.3f} M | {s['params_trainable'] / 1e6:.3f} M | "
            f"{s['macs_per_eval'] / 1e6:.1f} | {s['macs_per_step'] / 1e6:.1f} | {s['seconds_per_sample']:.3f} | {s['peak_memory_mb']:.0f} |"
        )
    lines.append("")
    return lines
