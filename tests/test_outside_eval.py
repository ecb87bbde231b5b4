"""The outside judges (PocketSphinx digit ASR, DNSMOS) inside the project's evaluations: `evaluate`,
`evaluate-voice` and the Tune objective. Arithmetic with stub listeners; the wiring with the real
judges on a few clips (tiny random models, so the generated audio is noise: the figures only have
to be valid, and the real clips' ones must beat it)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from guidance.listening import listen_to, real_clip_subset
from test_cli import run_cli
from tune.objective import OUTSIDE_METRIC, ObjectiveAccumulator, ObjectiveWeights, ValReference
from tune.settings import TuneSettings

OUTSIDE_KEYS = ("asr_accuracy", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")


class StubListen:
    """A listen hook that records what it was given and answers fixed figures."""

    def __init__(self, asr: float = 0.5, mos: float = 3.0) -> None:
        self.asr, self.mos, self.calls = asr, mos, []

    def __call__(self, waves: torch.Tensor, sample_rate: int, targets: torch.Tensor | None) -> dict:
        self.calls.append((waves.clone(), sample_rate, None if targets is None else targets.clone()))
        return {"asr_accuracy": None if targets is None else self.asr, "asr_no_answer": 0,
                "sig": self.mos, "bak": self.mos + 0.5, "ovrl": self.mos - 0.5, "seconds_per_clip": {"total": 0.01}}


def assert_valid(figures: dict, with_asr: bool = True) -> None:
    if with_asr:
        assert 0.0 <= figures["asr_accuracy"] <= 1.0, figures
    else:
        assert figures["asr_accuracy"] is None
    for key in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"):
        assert 1.0 <= figures[key] <= 5.0, figures  # DNSMOS P.835's scale
    assert figures["n_heard"] == figures["n"] > 0


# ---- the hook's arithmetic ---------------------------------------------------------------------

def test_rows_that_are_not_finite_are_not_played_count_as_asr_misses_and_leave_the_mos_means():
    stub = StubListen(asr=0.5, mos=3.0)
    waves = torch.randn(4, 100)
    ok = torch.tensor([True, False, True, True])
    figures = listen_to(stub, waves, 16000, torch.tensor([1, 2, 3, 4]), ok)
    (played, rate, targets), = stub.calls
    from guidance.data import as_written

    assert rate == 16000 and targets.tolist() == [1, 3, 4]
    assert torch.equal(played, as_written(waves[ok], 16000))  # judges hear the 16-bit WAV a user gets
    assert played.abs().max() <= 1.0 and not torch.equal(played, waves[ok])
    assert figures["asr_accuracy"] == pytest.approx(0.5 * 3 / 4)  # the unplayed row is a miss
    assert (figures["dnsmos_sig"], figures["dnsmos_bak"], figures["dnsmos_ovrl"]) == (3.0, 3.5, 2.5)
    assert (figures["n"], figures["n_heard"]) == (4, 3)
    silent = listen_to(stub, waves, 16000, torch.tensor([1, 2, 3, 4]), torch.zeros(4, dtype=torch.bool))
    assert len(stub.calls) == 1 and silent["asr_accuracy"] == 0.0 and math.isnan(silent["dnsmos_ovrl"])
    assert listen_to(stub, waves, 16000)["asr_accuracy"] is None  # no digit targeted: DNSMOS only


def test_real_clips_are_chosen_by_rule_every_digit_and_several_speakers(fsdd_root):
    from guidance.data import fsdd_split, list_fsdd

    clips = fsdd_split(list_fsdd(fsdd_root), "val")
    chosen = real_clip_subset(clips, 3)
    assert len(chosen) == 30 and sorted({c.digit for c in chosen}) == list(range(10))
    assert len({c.speaker for c in chosen}) == 6 and {c.take for c in chosen} == {5}
    assert real_clip_subset(clips, 3) == chosen and len(real_clip_subset(clips, None)) == len(clips)


# ---- speechguide evaluate ----------------------------------------------------------------------

EVAL_ARGS = ("evaluate", "--per-class", "1", "--steps", "2", "--noisy-scales", "1", "--clean-scales", "0.3", "--split", "val", "--no-mlflow")


@pytest.mark.slow  # about 30 s: 50 clips through both judges
def test_evaluate_reports_outside_figures_for_every_system_and_the_reference_rows(tiny_models_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip("pocketsphinx")
    from cli_run import run_in_process

    out = tmp_path / "eval"  # in this process: evaluate runs in a real one in tests/test_demo_models.py and below
    code, err = run_in_process([*EVAL_ARGS, "--out", out, "--models-dir", tiny_models_dir], capsys, monkeypatch)
    assert code == 0, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["systems"]] == ["unconditional", "noisy@1", "clean@0.3"]
    for system in report["systems"]:
        assert_valid(system["outside"])
        assert system["outside"]["n"] == 10
    judged = report["outside_judges"]
    assert_valid(judged["real"])
    assert_valid(judged["round_trip"])
    assert judged["real"]["n"] == 10 and "10 real clips of the val split" in judged["clips"]
    assert judged["settings"]["asr"]["search"] == "grammar"
    # real speech, as recorded, against the noise an untrained generator and vocoder make
    assert judged["real"]["asr_accuracy"] >= 0.5 and judged["real"]["dnsmos_sig"] > report["systems"][0]["outside"]["dnsmos_sig"]
    md = (out / "report.md").read_text()
    assert "| outside ASR acc. | SIG | BAK | OVRL |" in md
    assert "| *real clips* |" in md and "| *vocoder round trip* |" in md and "## What each judge hears" in md
    row = next(line for line in md.splitlines() if line.startswith("| *real clips* |"))
    assert row.rstrip(" |").endswith(f"{judged['real']['dnsmos_ovrl']:.2f}")


def test_evaluate_with_the_judges_missing_exits_2_in_one_line_before_sampling(tiny_models_dir, tmp_path):
    fake = tmp_path / "site"
    (fake / "pocketsphinx").mkdir(parents=True)
    (fake / "pocketsphinx" / "__init__.py").write_text("raise ImportError('simulated: not installed')\n")
    out = tmp_path / "eval"
    r = run_cli(*EVAL_ARGS, "--out", str(out), "--models-dir", str(tiny_models_dir), env={"PYTHONPATH": str(fake)})
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("speechguide: error: --outside-judges:"), r.stderr
    assert "pocketsphinx" in lines[0] and "--no-outside-judges" in lines[0]
    assert not out.exists()


def test_guidance_takes_the_judges_as_a_hook_and_never_imports_them():
    import subprocess

    code = ("import sys, guidance.evaluation, guidance.voice_eval, guidance.listening; "
            "print(sorted(m for m in ('outside_judges', 'pocketsphinx', 'speechmos', 'ray', 'mlflow') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])


def test_evaluate_refuses_a_bad_real_clip_count_in_one_line(tiny_models_dir, capsys, monkeypatch):
    from cli_run import run_in_process

    code, err = run_in_process(["evaluate", "--outside-real-per-class", "0", "--models-dir", tiny_models_dir], capsys, monkeypatch)
    assert code == 2 and err.strip().splitlines() == ["speechguide: error: --outside-real-per-class must be between 1 and 1000, got 0"], err


# ---- speechguide evaluate-voice ---------------------------------------------------------------

def test_evaluate_voice_hears_every_system_and_the_reference_rows(tiny_models_dir, tmp_path, fsdd_root):
    from guidance.models import load_model
    from guidance.pipeline import ModelPaths, ModelSet
    from guidance.voice_eval import VoiceEvalConfig, evaluate_voice

    models = ModelSet.load(ModelPaths(root=tiny_models_dir), "cpu")
    judges = [load_model(tiny_models_dir / f"judge-{t}.safetensors", kind="judge") for t in ("digit", "speaker")]
    cfg = VoiceEvalConfig(split="val", refs_per_speaker=1, samples_per_ref=1, steps=2, systems=("unguided", "stats+digit"), real_baselines=False)
    stub = StubListen(asr=0.5, mos=3.0)
    report = evaluate_voice(models, *judges, cfg, tmp_path / "voice", data_root=str(fsdd_root), listen=stub)
    unguided, composite = report["systems"]
    assert unguided["outside"]["asr_accuracy"] is None and unguided["outside"]["dnsmos_sig"] == 3.0  # no digit targeted
    assert composite["outside"]["asr_accuracy"] == 0.5
    targets = [c[2] for c in stub.calls]
    assert targets[0].tolist() == [int(name[0]) for name in report["references"]]  # references: their own digits
    assert targets[-1] is not None and len(targets[-1]) == 6 and targets[2] is None  # the composite's digits; unguided none
    assert set(report["outside_judges"]) >= {"real", "round_trip", "clips"}
    md = (tmp_path / "voice" / "report.md").read_text()
    assert "| *reference clips* |" in md and "| *vocoder round trip* |" in md and "## What each judge hears" in md


# ---- the Tune objective ------------------------------------------------------------------------

def _reference_and_batch():
    gen = torch.Generator().manual_seed(0)
    digits = torch.arange(10).repeat(4)
    emb = torch.randn(len(digits), 8, generator=gen)
    logits = torch.nn.functional.one_hot(digits, 10).float()
    return ValReference.from_judge_outputs(torch.randn(40, 8, generator=gen), digits), emb, logits, digits


def test_the_objective_moves_with_the_outside_accuracy_by_its_weight():
    ref, emb, logits, digits = _reference_and_batch()
    w = ObjectiveWeights(outside_asr=0.7)
    scores = {}
    for right in (0, 10, 40):
        acc = ObjectiveAccumulator(ref, w)
        verdicts = torch.arange(len(digits)) < right
        m = acc.add(emb[:20], logits[:20], digits[:20], outside=verdicts[:20])
        m = acc.add(emb[20:], logits[20:], digits[20:], outside=verdicts[20:])
        assert m[OUTSIDE_METRIC] == pytest.approx(right / 40)
        assert m["objective"] == pytest.approx(w.combine(m["judge_accuracy"], m["fd"], m["diversity"], right / 40))
        scores[right] = m["objective"]
    assert scores[40] - scores[0] == pytest.approx(0.7) and scores[10] - scores[0] == pytest.approx(0.7 / 4)
    off = ObjectiveAccumulator(ref)  # weight 0: not consulted, not reported
    m_off = off.add(emb, logits, digits)
    assert OUTSIDE_METRIC not in m_off and m_off["objective"] == pytest.approx(scores[0])
    with pytest.raises(ValueError, match="outside"):
        ObjectiveAccumulator(ref, w).add(emb, logits, digits)  # weighed but not heard: refused, not silently 0


def test_a_resumed_accumulator_keeps_the_outside_verdicts_it_had():
    ref, emb, logits, digits = _reference_and_batch()
    w = ObjectiveWeights(outside_asr=1.0)
    verdicts = torch.arange(len(digits)) % 3 == 0
    whole = ObjectiveAccumulator(ref, w)
    whole.add(emb[:20], logits[:20], digits[:20], outside=verdicts[:20])
    state = whole.state()
    expected = whole.add(emb[20:], logits[20:], digits[20:], outside=verdicts[20:])
    resumed = ObjectiveAccumulator(ref, w)
    resumed.load_state(state)
    assert resumed.add(emb[20:], logits[20:], digits[20:], outside=verdicts[20:]) == pytest.approx(expected)
    old = {k: v for k, v in state.items() if k != "outside"}  # a checkpoint from before the outside term
    with pytest.raises(ValueError, match="checkpoint"):
        ObjectiveAccumulator(ref, w).load_state(old)


def test_settings_weigh_the_outside_recognizer_like_the_judge_by_default():
    s = TuneSettings()
    assert s.outside_asr_weight == s.accuracy_weight > 0
    from tune.evaluator import weights

    assert weights(s).outside_asr == s.outside_asr_weight
    assert weights(s).multi_objectives()[0][-1] == OUTSIDE_METRIC
    assert weights(TuneSettings(outside_asr_weight=0)).multi_objectives()[0] == ("judge_accuracy", "fd", "diversity")
    with pytest.raises(ValueError):
        TuneSettings(outside_asr_weight=-1)


class SaysDigit:
    """A stub recognizer: says the target (right) or the next digit (wrong)."""

    def __init__(self, right: bool, targets: torch.Tensor) -> None:
        self.right, self.targets = right, targets

    def recognize_many(self, waves, sample_rate):
        t = self.targets[: len(waves)].tolist()
        return t if self.right else [(d + 1) % 10 for d in t]


def _tune_settings(models_dir: Path, fsdd_root: Path, **changes) -> TuneSettings:
    return TuneSettings(guide="noisy", per_class=2, batch_per_class=2, steps_min=2, steps_max=2, base_steps=2,
                        mlflow=False, models_dir=str(models_dir), data_dir=str(fsdd_root), **changes)


def test_a_trial_batch_weighs_what_the_recognizer_hears(tiny_models_dir, fsdd_root):
    from tune.evaluator import ProfileEvaluator, base_profile, load_models, val_reference

    torch.set_num_threads(1)
    settings = _tune_settings(tiny_models_dir, fsdd_root, outside_asr_weight=0.5)
    models, judge = load_models(settings, "cpu")
    reference = val_reference(settings, models, judge)
    results = {}
    for right in (True, False):
        evaluator = ProfileEvaluator(settings, models, judge, reference, recognizer=SaysDigit(right, torch.arange(10).repeat(2)))
        results[right] = next(evaluator.run(base_profile(settings))).metrics
    assert results[True][OUTSIDE_METRIC] == 1.0 and results[False][OUTSIDE_METRIC] == 0.0
    assert results[True]["judge_accuracy"] == results[False]["judge_accuracy"]  # the same noise and samples
    assert results[True]["objective"] - results[False]["objective"] == pytest.approx(0.5)


def test_a_trial_batch_with_the_real_recognizer(tiny_models_dir, fsdd_root):
    pytest.importorskip("pocketsphinx")
    from tune.evaluator import ProfileEvaluator, base_profile, load_models, val_reference, weights

    torch.set_num_threads(1)
    settings = _tune_settings(tiny_models_dir, fsdd_root)  # the default weight: the recognizer is on
    models, judge = load_models(settings, "cpu")
    evaluator = ProfileEvaluator(settings, models, judge, val_reference(settings, models, judge))
    assert type(evaluator.recognizer).__name__ == "DigitRecognizer"
    m = next(evaluator.run(base_profile(settings))).metrics
    assert m["samples"] == 20 and 0.0 <= m[OUTSIDE_METRIC] <= 1.0
    assert m["objective"] == pytest.approx(weights(settings).combine(m["judge_accuracy"], m["fd"], m["diversity"], m[OUTSIDE_METRIC]))
    assert evaluator.accumulator.state()["outside"].shape == (20,)  # checkpointed with the trial's state


def test_tune_refuses_a_negative_outside_weight_in_one_line(capsys):
    from speechguide.cli import main

    assert main(["tune", "--outside-asr-weight", "-1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--outside-asr-weight" in lines[0], lines


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
