"""Pick the shipped default profiles on the validation split, by what outside ears hear.

Every candidate (guide kind, profile, scale, steps) generates the same number of samples per digit from
the same noise, goes through the default vocoder into WAV-ready audio, and is scored by the outside
judges (pocketsphinx digit ASR with a ten-word grammar, DNSMOS) and by the project's digit judge. The
pick per guide kind maximises outside ASR accuracy + 0.25 x DNSMOS OVRL (a 0.1 OVRL step is worth 2.5
points of accuracy), and the winners are written as profile files: guidance/guides/defaults/KIND.json.
The test split is never read.

    .venv/bin/python -m tune.pick_defaults --per-class 10 --out reports/defaults

`--candidates churn` compares each kind's shipped default profile with EDM's stochastic sampler (churn 5 and
10) on a draw of its own (`--seed`; the files are named after the draw, so a second draw leaves the first in
place): the README's default-kind table is

    .venv/bin/python -m tune.pick_defaults --candidates churn --per-class 20 --seed 7 --out reports/defaults

(reports/defaults/val-sweep-seed7-churn.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from guidance.data import DIGITS, as_written
from guidance.guides import DEFAULT_PROFILES, GuidanceProfile, GuideSettings
from guidance.guides.defaults import DEFAULTS_DIR
from guidance.guides.kinds import CLASSIFIER_GUIDE_KINDS
from guidance.metrics import accuracy, hear, judge_outputs
from guidance.models import load_model, read_metadata
from guidance.files import file_sha256
from guidance.pipeline import ModelPaths, ModelSet, sample_plan, vocode_finite
from guidance.plan import Plan, plan_request, targets_for
from outside_judges.report import judge_waves, summary_row

OVRL_WEIGHT = 0.25
CALIBRATED_WINDOW = 27.72579372620585  # top of the highest sigma bin where the clean classifier beats chance (reports/calibration)
CHURNS = (5.0, 10.0)  # EDM's S_churn values tried against each kind's deterministic default (`--candidates churn`)
CANDIDATE_SETS = ("scales", "churn")


@dataclass(frozen=True)
class Candidate:
    kind: str  # noisy | clean
    profile: GuidanceProfile

    @property
    def name(self) -> str:
        g, s = self.profile.guide, self.profile.sampler
        window = f" sigma<={g.sigma_hi:g}" if g.sigma_hi is not None else ""
        churn = f" churn {s.churn:g}" if s.churn else ""
        return f"{self.kind} {'norm ' if g.norm_scaling else ''}{g.scale:g}{window} {s.kind}-{s.steps}{churn}"


def candidates(steps: tuple[int, ...]) -> list[Candidate]:
    out = []
    for n in steps:
        for scale in (3.0, 10.0, 20.0, 40.0):
            out.append(Candidate("noisy", GuidanceProfile(name=f"noisy-{scale:g}-{n}", guide=GuideSettings(scale=scale)).with_sampler(steps=n)))
        for scale in (0.1, 0.2, 0.3, 0.4, 0.5):
            clean = GuideSettings(scale=scale, norm_scaling=True, sigma_hi=CALIBRATED_WINDOW, input="x0_hat")
            out.append(Candidate("clean", GuidanceProfile(name=f"clean-window-{scale:g}-{n}", guide=clean).with_sampler(steps=n)))
    return out


def churn_candidates(steps: tuple[int, ...]) -> list[Candidate]:
    """Each classifier kind's shipped default profile as it is (churn 0) and with each of `CHURNS`."""
    out = []
    for n in steps:
        for kind in CLASSIFIER_GUIDE_KINDS:
            for churn in (0.0, *CHURNS):
                name = f"{kind}-default-{n}" + (f"-churn{churn:g}" if churn else "")
                profile = DEFAULT_PROFILES[kind].with_sampler(steps=n, churn=churn).model_copy(update={"name": name})
                out.append(Candidate(kind, profile))
    return out


def sweep_stem(seed: int, candidate_set: str) -> str:
    """The report's file stem: val-sweep for the first draw (seed 0) of the scale sweep, else named after the draw."""
    return "val-sweep" + (f"-seed{seed}" if seed else "") + (f"-{candidate_set}" if candidate_set != "scales" else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the draw: starting noise and the sampler's noise (a second draw: another seed)")
    parser.add_argument("--candidates", choices=CANDIDATE_SETS, default="scales",
                        help="scales: guidance scales per kind; churn: each kind's default profile with churn 0, 5 and 10")
    parser.add_argument("--steps", default="18", help="comma-separated sampler step counts to try")
    parser.add_argument("--only", default="", help="comma-separated candidate names to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("reports/defaults"))
    parser.add_argument("--write-profiles", action="store_true", help=f"write the winners to {DEFAULTS_DIR}")
    parser.add_argument("--from-sweep", type=Path, nargs="*", default=None, help="val-sweep.json files to pick from (no sampling)")
    args = parser.parse_args()
    if args.from_sweep:
        sweeps = [json.loads(path.read_text()) for path in args.from_sweep]
        meta = {k: v for k, v in sweeps[0].items() if k != "rows"}
        if any({k: v for k, v in sw.items() if k != "rows"} != meta for sw in sweeps):
            parser.error("--from-sweep files come from different settings (samples per digit, seed or models)")
        rows = [r for sw in sweeps for r in sw["rows"]]
        write_report(args.out, meta, rows)
        if args.write_profiles:
            write_winners(rows)
        return

    paths = ModelPaths()
    models = ModelSet.load(paths, "cpu")
    judge = load_model(paths.path("judge_digit"), models.spec, "judge")
    rows = []
    make = candidates if args.candidates == "scales" else churn_candidates
    chosen = [c for c in make(tuple(int(s) for s in args.steps.split(","))) if not args.only or c.profile.name in args.only.split(",")]
    for cand in chosen:
        began = time.time()
        plan = candidate_plan(models, cand, args.per_class, args.seed)
        targets = plan.named["digit"]
        mels = sample_plan(models, plan, allow_nonfinite=True)
        waves, ok = vocode_finite(mels, models.vocoder)
        _, logits = judge_outputs(judge.model, hear(waves, models.spec))
        outside = summary_row(judge_waves(as_written(waves, models.spec.sample_rate), models.spec.sample_rate, targets.tolist()))
        row = {
            "name": cand.name,
            "kind": cand.kind,
            "profile": json.loads(cand.profile.model_dump_json()),
            "outside_asr_accuracy": outside["asr_accuracy"],
            "dnsmos_sig": outside["sig"],
            "dnsmos_ovrl": outside["ovrl"],
            "judge_accuracy": accuracy(logits, targets),
            "nonfinite_samples": int((~ok).sum()),
            "seconds": round(time.time() - began, 1),
        }
        row["score"] = row["outside_asr_accuracy"] + OVRL_WEIGHT * row["dnsmos_ovrl"]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
    meta = {"per_class": args.per_class, "seed": args.seed, "vocoder": models.vocoder.description, "denoiser": describe_model(paths.path("denoiser"))}
    write_report(args.out, meta, rows, sweep_stem(args.seed, args.candidates))
    if args.write_profiles:
        write_winners(rows)


def candidate_plan(models: ModelSet, cand: Candidate, per_class: int, seed: int) -> Plan:
    """A candidate's request: every digit, `per_class` samples each, the noise of `seed` (the same for every candidate)."""
    return plan_request(targets_for("digit", DIGITS), per_class, seed, cand.profile, models.guides[cand.kind], digit_kind=cand.kind, scale_set=True)


def describe_model(path: Path) -> dict:
    """File name, content hash and training card of a model file: which weights a sweep measured."""
    card = read_metadata(path).get("card", {})
    return {"file": path.name, "sha256": file_sha256(path), **{k: card[k] for k in ("train_steps", "batch_size", "device") if k in card}}


def write_report(out: Path, meta: dict, rows: list[dict], stem: str = "val-sweep") -> None:
    """STEM.json (every row) and STEM.md (sorted by score) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    lines = [
        f"FSDD validation split, {meta['per_class']} samples per digit, seed {meta['seed']}",
        f"vocoder {meta.get('vocoder')}",
        f"denoiser {meta.get('denoiser')}",
        "",
        "| candidate | outside ASR | DNSMOS SIG | OVRL | own judge | score |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["score"]):
        lines.append(
            f"| {r['name']} | {r['outside_asr_accuracy']:.3f} | {r['dnsmos_sig']:.2f} | {r['dnsmos_ovrl']:.2f} | {r['judge_accuracy']:.3f} | {r['score']:.3f} |"
        )
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_winners(rows: list[dict]) -> None:
    """The best-scoring finite candidate per guide kind becomes that kind's shipped default profile."""
    for kind in CLASSIFIER_GUIDE_KINDS:
        mine = [r for r in rows if r["kind"] == kind and r["nonfinite_samples"] == 0]
        if mine:
            best = max(mine, key=lambda r: r["score"])
            profile = GuidanceProfile.model_validate({**best["profile"], "name": f"{kind}-default"})
            print(f"{kind}: {best['name']} -> {profile.save(DEFAULTS_DIR / f'{kind}.json')}")


if __name__ == "__main__":
    main()
