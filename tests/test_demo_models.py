"""The committed demo models, used as `make demo` uses them (end to end, marked slow)."""

from __future__ import annotations

import json

import pytest
import torch

from guidance.data import fsdd_features
from guidance.models import load_model, read_metadata
from guidance.pipeline import ModelPaths, default_models_dir
from test_cli import run_cli

pytestmark = pytest.mark.slow
FILES = ["denoiser", "noisy_classifier", "clean_classifier", "judge_digit", "judge_speaker"]


def test_committed_models_share_one_feature_spec_and_fit_the_budget():
    paths = ModelPaths()
    specs = {json.dumps(read_metadata(paths.path(f))["feature_spec"], sort_keys=True) for f in FILES}
    assert len(specs) == 1
    total = sum(paths.path(f).stat().st_size for f in FILES)
    assert total < 25 * 2**20
    for f in FILES:
        card = read_metadata(paths.path(f))["card"]
        assert card["train_steps"] > 0 and "test takes 0-4 never used" in card["data"]


def test_judges_are_accurate_on_the_test_split(fsdd_root):
    paths = ModelPaths()
    digit = load_model(paths.path("judge_digit"), kind="judge")
    speaker = load_model(paths.path("judge_speaker"), kind="judge")
    test = fsdd_features("test", digit.spec, root=fsdd_root)
    with torch.no_grad():
        acc_digit = (digit.model(test.mels).argmax(1) == test.digits).double().mean().item()
        acc_speaker = (speaker.model(test.mels).argmax(1) == test.speakers).double().mean().item()
    assert acc_digit >= 0.95
    assert acc_speaker >= 0.9


def test_generate_all_digits_with_committed_models(tmp_path):
    args = ["generate", "--num", "1", "--seed", "0", "--steps", "10", "--out", str(tmp_path)]
    for d in range(10):
        args += ["--target", f"digit={d}"]
    r = run_cli(*args, timeout=900)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == [f"{d}_000.wav" for d in range(10)]


def test_evaluate_writes_report_plot_and_wavs(tmp_path, fsdd_root):
    out = tmp_path / "eval"
    # --no-outside-judges: tests/test_outside_eval.py runs evaluate with them (about 0.5 s of CPU a clip)
    r = run_cli("evaluate", "--per-class", "1", "--noisy-scales", "3", "--clean-scales", "0.3", "--steps", "8", "--no-outside-judges",
                "--out", str(out), "--data-dir", str(fsdd_root), timeout=900,
                env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["systems"]] == ["unconditional", "noisy@3", "clean@0.3"]
    assert report["judges"]["digit"]["test_accuracy"] >= 0.95
    assert (out / "spectrograms.png").stat().st_size > 1000 and (out / "report.md").exists()
    assert len(list((out / "wavs").rglob("*.wav"))) == 30
    # --no-outside-judges leaves the outside ears out of both reports (tests/test_outside_eval.py runs them)
    assert "outside_judges" not in report and all("outside" not in s for s in report["systems"])
    md = (out / "report.md").read_text()
    assert "outside ASR" not in md and "*real clips*" not in md and "What each judge hears" not in md
    assert default_models_dir().is_dir()
    import mlflow  # the report went to MLflow too, metrics and artifacts

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["speechguide-evaluate"])
    assert len(runs) == 1 and "metrics.noisy_at_3.judge_accuracy" in runs.columns
