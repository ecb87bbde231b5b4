"""Every evaluation protocol samples through the request plan: the log-Mels a protocol samples for a system are,
bit for bit, what `generate_local` (what `speechguide generate` runs) gives for the same targets, count, profile
and seed. A protocol that drew its own noise, ordered its rows otherwise, seeded its batches otherwise or
steered with other settings would fail here.

Tiny random models, 2 sampler steps, the fewest samples each protocol takes; churn in the profiles where the
comparison allows it, so the sampler's per-batch seeds count too.
"""

from __future__ import annotations

import pytest
import torch

from guidance.data import DIGITS
from guidance.generate import generate_local
from guidance.guides import DEFAULT_PROFILES
from guidance.pipeline import ModelPaths, ModelSet
from guidance.plan import Target, targets_for

CHURN = 5.0


@pytest.fixture(scope="module")
def models(tiny_models_dir) -> ModelSet:
    torch.set_num_threads(1)
    return ModelSet.load(ModelPaths(root=tiny_models_dir), "cpu")


def _recording(monkeypatch, module) -> list[torch.Tensor]:
    """Every log-Mel batch `module` samples through `sample_plan`, in order."""
    got: list[torch.Tensor] = []
    real = module.sample_plan

    def sample_plan(*args, **kwargs):
        mels = real(*args, **kwargs)
        got.append(mels)
        return mels

    monkeypatch.setattr(module, "sample_plan", sample_plan)
    return got


def test_evaluate_samples_every_digit_per_class_times_as_generate_does(models, tiny_models_dir, fsdd_root, tmp_path, monkeypatch):
    import guidance.evaluation as evaluation
    from guidance.models import load_model

    churned = {k: DEFAULT_PROFILES[k].with_sampler(churn=CHURN) for k in ("unconditional", "noisy")}
    cfg = evaluation.EvalConfig(per_class=1, seed=5, noisy_scales=[3.0], clean_scales=[], steps=2, split="val", base_profiles=churned)
    got = _recording(monkeypatch, evaluation)
    judge = load_model(tiny_models_dir / "judge-digit.safetensors", kind="judge")
    report = evaluation.evaluate(models, judge, None, cfg, tmp_path / "eval", data_root=str(fsdd_root))
    assert [s["name"] for s in report["systems"]] == ["unconditional", "noisy@3"]
    sampled = [m for m in got if len(m) > 1]  # leaves out each system's one-sample cost probe
    for mels, kind, profile in zip(sampled, ("none", "noisy"), (churned["unconditional"], churned["noisy"].with_guide(scale=3.0))):
        want = generate_local(models, targets_for("digit", DIGITS), 1, 5, profile.with_sampler(steps=2), kind, scale_set=True).mels
        assert torch.equal(mels, want), kind
    assert not torch.equal(sampled[0], sampled[1])  # guidance changed the samples: the comparison can fail


def test_evaluate_voice_pairs_each_reference_with_its_digits_as_generate_does(models, tiny_models_dir, fsdd_root, monkeypatch):
    import guidance.voice_eval as voice_eval
    from guidance.data import load_wave

    cfg = voice_eval.VoiceEvalConfig(split="val", refs_per_speaker=1, samples_per_ref=2, steps=2, systems=("stats", "stats+digit"),
                                     real_baselines=False)
    got = _recording(monkeypatch, voice_eval)
    report = voice_eval.evaluate_voice(models, _judge(tiny_models_dir, "digit"), _judge(tiny_models_dir, "speaker"), cfg, data_root=str(fsdd_root))
    refs = voice_eval.pick_references(voice_eval.fsdd_split(voice_eval.list_fsdd(fsdd_root), "val"), "val", 1)
    rows = [r for r in range(len(refs)) for _ in range(cfg.samples_per_ref)]
    labels = [str(refs[r].path) for r in rows]
    digits = [DIGITS[(7 * i + r) % 10] for i, r in enumerate(rows)]  # the protocol's own rule: every digit, spread over references
    references = {str(c.path): load_wave(c.path, models.spec.sample_rate) for c in refs}
    for mels, (name, with_digit) in zip(got, (("stats", False), ("stats+digit", True))):
        targets = (targets_for("digit", digits) if with_digit else []) + targets_for("speaker", labels)
        want = generate_local(
            models, targets, 1, cfg.seed, cfg.profile("stats"), cfg.digit_kind if with_digit else "none", references, "stats",
            scale_set=True, paths=ModelPaths(root=tiny_models_dir), paired=True,  # no word-spectra table there: no retargeting
        ).mels
        assert torch.equal(mels, want), name
    assert [s["name"] for s in report["systems"]] == ["stats", "stats+digit"] and not torch.equal(got[0], got[1])


def _judge(models_dir, task: str):
    from guidance.models import load_model

    return load_model(models_dir / f"judge-{task}.safetensors", kind="judge")


def test_a_tune_trial_samples_the_sweep_plan_batch_by_batch_as_generate_does(models, tiny_models_dir, fsdd_root):
    from tune.evaluator import ProfileEvaluator, base_profile, val_reference
    from tune.settings import TuneSettings

    settings = TuneSettings(guide="noisy", per_class=4, batch_per_class=2, steps_min=2, steps_max=2, base_steps=2, seed=3,
                            mlflow=False, models_dir=str(tiny_models_dir), data_dir=str(fsdd_root), outside_asr_weight=0.0)
    judge = _judge(tiny_models_dir, "digit")
    evaluator = ProfileEvaluator(settings, models, judge, val_reference(settings, models, judge))
    profile = base_profile(settings)
    batches = list(evaluator.run(profile))
    assert len(batches) == 2 and all(b.targets.tolist() == list(range(10)) * 2 for b in batches)  # every batch holds every digit
    # One batch at a time is the whole plan at once (a deterministic sampler: batch seeds do not enter).
    want = generate_local(models, targets_for("digit", DIGITS) * 4, 1, 3, profile, "noisy", scale_set=True).mels
    assert torch.equal(torch.cat([b.mels for b in batches]), want)
    resumed = next(evaluator.run(profile, start=1))  # a resumed trial starts at its second batch: the same rows
    assert torch.equal(resumed.mels, batches[1].mels)


@pytest.mark.slow
def test_evaluate_pitch_samples_every_system_as_generate_does(models, tiny_models_dir, fsdd_root, tmp_path, monkeypatch):
    import guidance.pitch_eval as pitch_eval
    from guidance.data import load_wave
    from guidance.models import load_model

    # 4 steps: one sigma in the pitch guide's window
    cfg = pitch_eval.PitchEvalConfig(targets=("rise",), samples=1, seed=1, steps=4, speaker_targets=("+3st",))
    got = _recording(monkeypatch, pitch_eval)
    judge = load_model(tiny_models_dir / "judge-speaker.safetensors", kind="judge")
    pitch_eval.evaluate_pitch(models, cfg, tmp_path / "pitch", judge_speaker=judge, data_root=str(fsdd_root))
    profile = pitch_eval._profile(cfg)
    digits = targets_for("digit", ["0"])  # sample i says digit i mod 10
    systems = [([], "none", 1), (digits, "noisy", 1), ([Target("pitch", "rise")], "none", 1), ([*digits, Target("pitch", "rise")], "noisy", 1)]
    (ref,) = pitch_eval.speaker_references(cfg, str(fsdd_root))
    speaker = [Target("speaker", ref.path.name)]  # a reference's voice, then 3 semitones above its median F0
    systems += [(speaker, "none", 1), ([*speaker, Target("pitch", "+3st")], "none", 1)]
    references = {ref.path.name: load_wave(ref.path, models.spec.sample_rate)}
    assert len(got) == len(systems)
    for mels, (targets, kind, num) in zip(got, systems):
        voiced = any(t.guide == "speaker" for t in targets)
        want = generate_local(models, targets, num, cfg.seed, profile, kind, references=references if voiced else None, scale_set=True, paired=voiced).mels
        assert torch.equal(mels, want), (targets, kind)
    assert not torch.equal(got[0], got[2])  # the pitch guide changed the samples
    assert not torch.equal(got[4], got[5])  # and the speaker's
