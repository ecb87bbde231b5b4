"""`speechguide tune`: the search space, the validation objective, the CLI's checks, a sweep logging
nested runs to a real MLflow server, and a sweep killed mid-way that `Tuner.restore` completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from guidance.guides import DEFAULT_PROFILES, GuidanceProfile, GuideSettings
from mlflow_server import mlflow_server_uri  # noqa: F401  (fixture)
from tune.objective import ObjectiveAccumulator, ObjectiveWeights, ValReference, within_class_spread
from tune.settings import TuneSettings
from tune.space import ProfileSpace
from tune.sweep import TrialRow, pareto_front

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "speechguide"]


# ---- search space ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["clean", "noisy"])
def test_default_point_is_the_default_profile(kind: str) -> None:
    base = DEFAULT_PROFILES[kind].with_sampler(steps=10)
    space = ProfileSpace(base)
    rebuilt = space.to_profile(space.default_point(10), name=base.name)
    # sigma_lo 0 becomes the sampler's sigma_min (0.002): the same active window on the sampler's grid
    assert rebuilt.guide.model_copy(update={"sigma_lo": 0.0}) == base.guide
    assert rebuilt.sampler == base.sampler


def test_sampled_points_are_valid_profiles_and_cover_both_scale_units() -> None:
    space = ProfileSpace(DEFAULT_PROFILES["clean"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_norm = set()
    for _ in range(30):
        trial = study.ask()
        space(trial)
        profile = space.to_profile(trial.params)
        g = profile.guide
        seen_norm.add(g.norm_scaling)
        lo, hi = (space.bounds.scale_norm if g.norm_scaling else space.bounds.scale_plain)
        assert lo <= g.scale <= hi and g.sigma_lo < g.sigma_hi
        assert space.bounds.steps[0] <= profile.sampler.steps <= space.bounds.steps[1]
        study.tell(trial, 0.0)
    assert seen_norm == {True, False}


def test_per_bin_temperatures_are_searched_through_one_multiplier_and_guides_get_their_own_knobs() -> None:
    calibrated = GuideSettings(scale=0.3, norm_scaling=True, temperature_sigma_edges=[0.0, 1.0, 80.0], temperatures=[1.5, 3.0])
    base = GuidanceProfile(per_guide={"digit": calibrated, "speaker": GuideSettings(scale=2.0)})
    space = ProfileSpace(base, guide_names=("digit", "speaker"))
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    space(trial)
    assert "digit.temperature_mult" in trial.params and "speaker.temperature" in trial.params
    profile = space.to_profile(trial.params)
    mult = trial.params["digit.temperature_mult"]
    assert profile.per_guide["digit"].temperatures == pytest.approx([1.5 * mult, 3.0 * mult])
    assert profile.per_guide["speaker"].temperature == pytest.approx(trial.params["speaker.temperature"])


# ---- objective ---------------------------------------------------------------------------------

def test_objective_rewards_real_like_samples_over_collapsed_ones() -> None:
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 8, generator=gen) * 4
    digits = torch.arange(10).repeat(20)
    real = centers[digits] + torch.randn(len(digits), 8, generator=gen)
    ref = ValReference.from_judge_outputs(real, digits)
    logits = torch.nn.functional.one_hot(digits, 10).float()

    good = ObjectiveAccumulator(ref)
    fresh = centers[digits] + torch.randn(len(digits), 8, generator=gen)
    m_good = good.add(fresh[:100], logits[:100], digits[:100])
    m_good = good.add(fresh[100:], logits[100:], digits[100:])
    assert m_good["samples"] == 200 and m_good["judge_accuracy"] == 1.0
    assert 0.8 < m_good["diversity"] < 1.2 and m_good["fd"] < 2.0

    collapsed = ObjectiveAccumulator(ref)
    m_bad = collapsed.add(centers[digits] * 3, logits.roll(1, 0), digits)  # one point per digit, far off, wrong labels
    assert m_bad["diversity"] == pytest.approx(0.0, abs=1e-6) and m_bad["fd"] > 10 * m_good["fd"]
    assert m_bad["objective"] < m_good["objective"]
    w = ObjectiveWeights()
    assert m_good["objective"] == pytest.approx(w.accuracy * 1.0 - w.fd * m_good["fd"] + w.diversity * min(m_good["diversity"], 1.0))
    assert within_class_spread(torch.zeros(4, 3), torch.tensor([0, 1, 2, 3])) != within_class_spread(torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]))  # NaN: no pairs


def test_pareto_front_keeps_only_undominated_trials() -> None:
    def row(tid: str, acc: float, fd: float, div: float) -> TrialRow:
        return TrialRow(tid, "complete", {"judge_accuracy": acc, "fd": fd, "diversity": div, "objective": acc}, {})

    rows = [row("a", 0.9, 20, 0.8), row("b", 0.8, 10, 0.8), row("c", 0.8, 25, 0.7), row("d", 0.9, 20, 0.9)]
    assert sorted(r.trial_id for r in pareto_front(rows)) == ["b", "d"]


def test_settings_resolve_paths_and_the_tracking_uri_to_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s = TuneSettings(storage_path="rel/store", tracking_uri="sqlite:///x.db").resolved()
    assert s.storage_path == str(tmp_path / "rel" / "store")
    assert s.tracking_uri == f"sqlite:///{tmp_path / 'x.db'}"
    assert TuneSettings(storage_path="s3://bucket/sweeps").resolved().storage_path == "s3://bucket/sweeps"


# ---- CLI checks --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "args, needle",
    [
        (["--scheduler", "hyperband"], "--scheduler"),
        (["--objective", "pareto"], "--objective"),
        (["--guide", "speaker"], "--guide"),
        (["--per-class", "5"], "multiple of batch_per_class"),
        (["--steps-min", "12", "--steps-max", "8"], "steps_min"),
        (["--gpus-per-trial", "-1"], "--gpus-per-trial"),
        (["--out", "best.txt"], "--out"),
        (["--resume", "/nonexistent/sweep"], "not a speechguide sweep"),
        (["--resume", "/nonexistent/sweep", "--trials", "3"], "drop --trials"),
    ],
)
def test_tune_bad_arguments_exit_2_with_one_line(args: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    from speechguide.cli import main

    assert main(["tune", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


# ---- sweeps on a real local Ray cluster --------------------------------------------------------

def _tiny(models: Path, store: Path, data: Path, **changes) -> TuneSettings:
    base = dict(per_class=4, batch_per_class=2, steps_min=2, steps_max=3, base_steps=2, max_concurrent=2,
                storage_path=str(store), models_dir=str(models), data_dir=str(data), seed=0)
    return TuneSettings(**{**base, **changes})


@pytest.mark.slow
def test_sweep_logs_nested_runs_to_an_mlflow_server_and_registers_the_best_profile(
    tiny_models_dir: Path, fsdd_root: Path, tmp_path: Path, mlflow_server_uri: str  # noqa: F811
) -> None:
    from mlflow.tracking import MlflowClient

    from tune.sweep import run

    settings = _tiny(tiny_models_dir, tmp_path / "store", fsdd_root, trials=2, scheduler="fifo", tracking_uri=mlflow_server_uri,
                     experiment="tune-test", register_name="tune-test-profile")
    result = run(settings, log=lambda m: None)
    assert len(result.rows) == 2 and all(r.status == "complete" for r in result.rows)  # side by side: max_concurrent 2
    assert sum(r.is_default for r in result.rows) == 1  # Optuna starts from the default profile, then samples one

    c = MlflowClient(mlflow_server_uri, registry_uri=mlflow_server_uri)  # earlier tests may have set another registry
    parent = c.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and "best_objective" in parent.data.metrics
    exp = c.get_experiment_by_name("tune-test")
    children = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"guide.scale", "guide.schedule", "sampler.steps", "sampler.churn"} <= set(child.data.params)
        history = c.get_metric_history(child.info.run_id, "objective")
        assert [m.step for m in history] == [1, 2]  # one report per batch
        files = {f.path for f in c.list_artifacts(child.info.run_id)} | {f.path for f in c.list_artifacts(child.info.run_id, "wavs")}
        assert {"profile.json", "spectrograms.png", "wavs/0_000.wav"} <= files
    logged = json.loads(Path(c.download_artifacts(children[0].info.run_id, "profile.json", str(tmp_path))).read_text())
    assert GuidanceProfile.model_validate(logged).sampler.steps in (2, 3)

    assert result.registered_version is not None, result.registration_note
    version = c.get_model_version_by_alias("tune-test-profile", "candidate")
    assert int(version.version) == result.registered_version


def _finished_trials(exp: Path, batches: int) -> dict[str, str]:
    """Trial directory -> result.json text, for trials whose every batch is on record."""
    done = {}
    for f in exp.glob("*/result.json"):
        text = f.read_text()
        if len([line for line in text.splitlines() if line.strip()]) >= batches:
            done[f.parent.name] = text
    return done


@pytest.mark.slow
def test_a_sweep_killed_mid_way_resumes_with_restore_and_keeps_its_finished_trials(
    tiny_models_dir: Path, fsdd_root: Path, tmp_path: Path
) -> None:
    store, trials, batches = tmp_path / "store", 2, 2
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "OMP_NUM_THREADS": "1"}
    args = [*CLI, "tune", "--trials", str(trials), "--scheduler", "fifo", "--max-concurrent", "1", "--per-class", "4",
            "--batch-per-class", "2", "--steps-min", "2", "--steps-max", "3", "--base-steps", "2", "--no-mlflow",
            "--storage-path", str(store), "--name", "killed", "--models-dir", str(tiny_models_dir), "--data-dir", str(fsdd_root)]
    exp = store / "killed"
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not _finished_trials(exp, batches):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in 10 minutes"
            time.sleep(0.5)
        time.sleep(3)  # the experiment state is saved every second
        finished = _finished_trials(exp, batches)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
        proc.wait(timeout=60)
    assert len(finished) < trials, "the sweep finished before it could be interrupted"
    assert not (exp / "sweep_summary.json").exists()

    resumed = subprocess.run([*CLI, "tune", "--resume", str(exp)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = json.loads((exp / "sweep_summary.json").read_text())
    assert summary["trials"] == trials and summary["complete"] == trials and summary["errored"] == 0
    after = _finished_trials(exp, batches)
    assert len(after) == trials
    for name, text in finished.items():  # kept as they were: neither lost nor run again
        assert after[name] == text


def test_default_picker_compares_each_default_with_churn_and_names_its_files_after_the_draw() -> None:
    from guidance.guides import DEFAULT_PROFILES
    from tune.pick_defaults import CHURNS, churn_candidates, sweep_stem

    cands = churn_candidates((18,))
    assert [(c.kind, c.profile.sampler.churn) for c in cands] == [(k, c) for k in ("noisy", "clean") for c in (0.0, *CHURNS)]
    for c in cands:  # the shipped default of its kind, the sampler's churn aside
        assert c.profile.guide == DEFAULT_PROFILES[c.kind].guide and c.profile.sampler.steps == 18
    assert len({c.name for c in cands}) == len(cands) and cands[1].name.endswith("churn 5")
    assert sweep_stem(0, "scales") == "val-sweep" and sweep_stem(7, "churn") == "val-sweep-seed7-churn"
