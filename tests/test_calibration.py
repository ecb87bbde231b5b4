"""Calibration across noise levels: the temperature fit, cross-fitted figures, the calibrated
profile as the guided denoiser uses it, and `speechguide calibrate` as a user runs it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from guidance.calibration import CalibrationResult, ece, fit_temperature, nll, sigma_edges
from guidance.calibration.noise_levels import BinResult, BinSamples, calibrated_profile, fit_bin, _folds
from guidance.calibration.temperature import reliability
from guidance.guides import DEFAULT_PROFILES, GuidanceProfile, GuidedDenoiser, GuideTerm
from guidance.guides.base import Guide

ROOT = Path(__file__).resolve().parents[1]


def _synthetic(n: int, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that are calibrated by construction (labels drawn from their own softmax)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=gen) * 2.0
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=gen).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("factor", [3.0, 0.4])
def test_fit_recovers_the_temperature_and_lowers_ece(factor):
    logits, labels = _synthetic(6000)
    distorted = logits * factor  # factor > 1: overconfident; < 1: underconfident
    t = fit_temperature(distorted, labels)
    assert t == pytest.approx(factor, rel=0.15)
    assert (t > 1) == (factor > 1)
    assert ece(distorted, labels, t) < 0.5 * ece(distorted, labels)
    assert nll(distorted, labels, t) < nll(distorted, labels)
    grid = [math.exp(v) for v in torch.linspace(math.log(0.05), math.log(100), 400).tolist()]
    brute = min(grid, key=lambda g: nll(distorted, labels, g))
    assert nll(distorted, labels, t) <= nll(distorted, labels, brute) + 1e-9


def test_reliability_counts_every_sample_and_matches_confidence():
    logits, labels = _synthetic(500)
    rel = reliability(logits, labels, 1.0, n_bins=10)
    assert sum(rel.count) == 500
    conf = torch.softmax(logits, 1).max(1).values
    weighted = sum(c * n for c, n in zip(rel.confidence, rel.count) if n) / 500
    assert weighted == pytest.approx(float(conf.mean()), rel=1e-6)


def test_cross_fitted_bin_scores_each_fold_with_the_other_folds_temperature():
    logits, labels = _synthetic(2000, seed=1)
    n_clips = 1000
    clip = torch.arange(n_clips).repeat(2)
    samples = BinSamples(torch.ones(2000), clip, labels, logits * 3.0, None, torch.zeros(1), torch.zeros(1))
    fold = _folds(n_clips, seed=0)
    assert set(fold.tolist()) == {0, 1} and abs(int(fold.sum()) - n_clips // 2) <= 1
    t, t_fold, held = fit_bin(samples, fold)
    assert all(tf > 1.5 for tf in t_fold) and t > 1.5
    assert held["ece_after"] < 0.5 * ece(logits * 3.0, labels)
    # the held-out NLL is what each fold scores at the *other* fold's temperature
    f = fold[clip]
    expect = (
        nll(logits[f == 0] * 3.0, labels[f == 0], t_fold[1]) * int((f == 0).sum())
        + nll(logits[f == 1] * 3.0, labels[f == 1], t_fold[0]) * int((f == 1).sum())
    ) / 2000
    assert held["nll_after"] == pytest.approx(expect, rel=1e-9)


def _result(accuracies: list[float], temps: list[float]) -> CalibrationResult:
    edges = sigma_edges(0.002, 80.0, len(temps))
    res = CalibrationResult(config={}, edges=edges, chance=0.1)
    rel = reliability(torch.zeros(2, 10), torch.zeros(2, dtype=torch.long))
    for k, (a, t) in enumerate(zip(accuracies, temps)):
        res.bins.append(BinResult(edges[k], edges[k + 1], math.sqrt(edges[k] * edges[k + 1]), 600, a, a > 0.14, t, [t, t],
                                  1.0, 0.9, 0.1, 0.05, None, None, None, rel, rel))
    return res


class _RecordingGuide(Guide):
    """A differentiable toy guide that records the temperatures the guided denoiser hands it."""

    name, labels = "digit", [str(d) for d in range(10)]

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def log_prob(self, inp, sigma, target, temperature):
        self.seen.append(temperature.detach().clone())
        logits = inp.flatten(1)[:, :10] / temperature.view(-1, 1)
        return torch.log_softmax(logits, 1).gather(1, target.view(-1, 1)).squeeze(1)


def test_calibrated_profile_round_trips_and_the_guided_denoiser_uses_bin_temperatures(tmp_path):
    temps = [0.8, 1.0, 1.5, 2.5, 6.0]
    res = _result([0.99, 0.97, 0.8, 0.3, 0.1], temps)
    base = DEFAULT_PROFILES["clean"]
    prof = calibrated_profile(base, res)
    loaded = GuidanceProfile.load(prof.save(tmp_path / "p.json"))
    assert loaded == prof and loaded.guide.temperatures == temps and loaded.guide.sigma_hi == base.guide.sigma_hi
    assert loaded.with_guide(scale=0.7).guide.temperatures == temps  # evaluate's --clean-scales keep them
    # window variant: off above the highest bin clearly above chance (bin 3, accuracy 0.3)
    windowed = calibrated_profile(base, res, window=True)
    assert windowed.guide.sigma_hi == pytest.approx(res.edges[4]) and windowed.guide.temperatures == temps
    floored = calibrated_profile(base, CalibrationResult.from_dict(json.loads(json.dumps(res.to_dict()))), min_temperature=1.0)
    assert floored.guide.temperatures == [1.0, 1.0, 1.5, 2.5, 6.0]

    guide = _RecordingGuide()
    settings = loaded.guide.model_copy(update={"sigma_hi": 80.0})
    centers = torch.tensor([b.sigma_center for b in res.bins])
    x = torch.randn(len(centers), 1, 4, 4)
    guided = GuidedDenoiser(lambda x, s: 0.5 * x, [GuideTerm(guide, torch.arange(len(centers)) % 10, settings)])
    guided(x, centers)
    assert torch.allclose(guide.seen[-1], torch.tensor(temps))


def test_calibrate_cli_writes_profile_report_and_plots(tiny_models_dir, tmp_path):
    out = tmp_path / "cal"
    r = _run("calibrate", "--models-dir", str(tiny_models_dir), "--bins", "3", "--max-clips", "24", "--draws", "1",
             "--batch-size", "12", "--no-mlflow", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "ETA" not in r.stdout and "━" not in r.stdout  # stdout is no terminal here: no progress bar in logs
    data = json.loads((out / "calibration.json").read_text())
    assert len(data["bins"]) == 3 and data["split"] == "val" and data["clips"] == 24
    for b in data["bins"]:
        assert b["n"] == 24 and 0 < b["temperature"] <= 100 and 0 <= b["ece_after"] <= 1
        assert b["grad_cosine"] is not None and -1 <= b["grad_cosine"] <= 1
    prof = GuidanceProfile.load(out / "profile.json")
    assert prof.guide.temperatures == [b["temperature"] for b in data["bins"]]
    assert prof.guide.temperature_sigma_edges == pytest.approx(data["edges"])
    for name in ("reliability.png", "sigma-curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 5000
    rows = [ln for ln in (out / "calibration.md").read_text().splitlines() if ln.startswith("| ")]
    assert len(rows) == 1 + 3  # the header and one row per sigma bin


BAD = [
    ["calibrate", "--bins", "0"],
    ["calibrate", "--split", "test"],
    ["calibrate", "--sigma-min", "5", "--sigma-max", "1"],
    ["calibrate", "--draws", "0"],
    ["calibrate", "--min-temperature", "0"],
    ["calibrate", "--base-profile", "missing.json"],
    ["calibrate", "--classifier", "missing.safetensors"],
]


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speechguide", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a[1:3]) for a in BAD])
def test_calibrate_bad_arguments_exit_2_with_one_line(args, tiny_models_dir, tmp_path, capsys, monkeypatch):
    from cli_run import run_in_process

    code, err = run_in_process([*args, "--out", tmp_path / "o", "--no-mlflow"], capsys, monkeypatch, env={"SPEECHGUIDE_MODELS": str(tiny_models_dir)})
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("speechguide: error:"), err
    assert not (tmp_path / "o").exists()
