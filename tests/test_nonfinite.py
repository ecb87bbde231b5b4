"""Non-finite values never crash a process: metrics refuse them with NonFiniteError, the sampler names
the step and sigma where x went NaN, evaluation reports such samples instead of dying, the CLI ends in
one line, the Serve ingress answers a JSON 500.

Checks that would hand a NaN to LAPACK on a regression (which kills the process with SIGSEGV rather
than raising) run in a child interpreter, so a regression fails an assertion instead of killing pytest.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from guidance.diffusion import SamplerConfig, sample
from guidance.finite import NonFiniteError, require_finite
from test_cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def run_isolated(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run Python `code` in a fresh interpreter with tests/ importable."""
    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


# ---- metrics -----------------------------------------------------------------------------------


def test_frechet_distance_refuses_a_nan_feature_instead_of_crashing():
    r = run_isolated(
        """
        import torch
        from guidance.finite import NonFiniteError
        from guidance.metrics import frechet_distance

        real, fake = torch.randn(20, 8), torch.randn(20, 8)
        fake[3, 2] = float("nan")
        try:
            frechet_distance(real, fake)
        except NonFiniteError as exc:
            print("refused:", exc)
        """
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])  # killed by a signal (SIGSEGV, SIGABRT) before the guard
    assert "refused: Frechet distance: the generated features has 1 non-finite value" in r.stdout


def test_require_finite_says_what_and_how_many():
    x = torch.tensor([1.0, float("inf"), float("nan"), 2.0])
    with pytest.raises(NonFiniteError, match=r"judge embeddings has 2 non-finite value\(s\) \(NaN or inf\) out of 4") as info:
        require_finite(x, "judge embeddings")
    assert isinstance(info.value, ValueError) and (info.value.count, info.value.total) == (2, 4)
    assert require_finite(torch.arange(3), "integers") is not None


# ---- evaluation --------------------------------------------------------------------------------

NAN_ROWS = (3, 7)  # with one sample per digit: the samples of '3' and '7'


class SilenceExceptRows(torch.nn.Module):
    """A denoiser that predicts the all-zero log-Mel, except NaN for the rows in `rows`."""

    def __init__(self, rows: tuple[int, ...]) -> None:
        super().__init__()
        self.rows = list(rows)
        self.scale = torch.nn.Parameter(torch.zeros(()))  # a parameter, so cost accounting has something to count

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = self.scale * x
        rows = [r for r in self.rows if r < len(x)]
        if rows:
            out = out.clone()
            out[rows] = float("nan")
        return out


def evaluate_with_nan_rows(models_dir: str, out: str, fsdd: str) -> None:
    """Run the evaluation protocol with `SilenceExceptRows` as the denoiser (called in a child process)."""
    from guidance.evaluation import EvalConfig, evaluate
    from guidance.models import load_model
    from guidance.pipeline import ModelPaths, ModelSet

    torch.set_num_threads(2)
    models = ModelSet.load(ModelPaths(root=Path(models_dir)), "cpu")
    models.denoiser.model = SilenceExceptRows(NAN_ROWS)
    judge = load_model(Path(models_dir) / "judge-digit.safetensors", kind="judge")
    cfg = EvalConfig(per_class=1, noisy_scales=[], clean_scales=[], steps=2, split="val")
    evaluate(models, judge, None, cfg, Path(out), data_root=fsdd)


@pytest.mark.slow
def test_evaluation_reports_nonfinite_samples_instead_of_crashing(tiny_models_dir, tmp_path, fsdd_root):
    out = tmp_path / "eval"
    r = run_isolated(
        f"from test_nonfinite import evaluate_with_nan_rows\n"
        f"evaluate_with_nan_rows({str(tiny_models_dir)!r}, {str(out)!r}, {str(fsdd_root)!r})\n"
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    text = (out / "report.json").read_text()
    assert "NaN" not in text  # strict JSON: non-finite figures are null
    report = json.loads(text)
    (system,) = report["systems"]
    assert system["name"] == "unconditional" and system["nonfinite_samples"] == len(NAN_ROWS)
    assert system["fd"] is None and system["inception_score"] is None and system["am_score"] is None
    assert 0 <= system["judge_accuracy"] <= 1 - len(NAN_ROWS) / 10  # the non-finite samples count as misses
    assert report["fd_floor_train_vs_test"] is not None  # the real-clip floors stay finite figures
    assert "## Non-finite samples" in (out / "report.md").read_text() and "- unconditional: 2 of 10" in (out / "report.md").read_text()
    wavs = out / "wavs" / "unconditional"
    assert (wavs / "0_000.wav").exists() and not (wavs / "3_000.wav").exists() and not (wavs / "7_000.wav").exists()


def tune_batch_with_nan_rows(models_dir: str, fsdd: str) -> None:
    """Score one Tune batch with `SilenceExceptRows` as the denoiser; print its metrics (in a child process)."""
    from tune.evaluator import ProfileEvaluator, base_profile, load_models, val_reference
    from tune.settings import TuneSettings

    torch.set_num_threads(2)
    settings = TuneSettings(guide="noisy", per_class=2, batch_per_class=2, steps_min=2, steps_max=2, base_steps=2,
                            mlflow=False, models_dir=models_dir, data_dir=fsdd)
    models, judge = load_models(settings, "cpu")
    models.denoiser.model = SilenceExceptRows(NAN_ROWS)
    evaluator = ProfileEvaluator(settings, models, judge, val_reference(settings, models, judge))
    result = next(evaluator.run(base_profile(settings)))
    print(json.dumps(result.metrics))


@pytest.mark.slow
def test_tune_trial_scores_blown_up_samples_as_silence_and_flags_them(tiny_models_dir, fsdd_root):
    r = run_isolated(
        f"from test_nonfinite import tune_batch_with_nan_rows\n"
        f"tune_batch_with_nan_rows({str(tiny_models_dir)!r}, {str(fsdd_root)!r})\n"
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert metrics["samples"] == 20 and metrics["nonfinite_samples"] == len(NAN_ROWS)
    assert all(math.isfinite(metrics[k]) for k in ("objective", "judge_accuracy", "fd"))


@pytest.mark.parametrize("choice", ["griffin-lim", "neural"])
def test_vocoder_refuses_a_nan_log_mel_and_vocode_finite_leaves_that_row_silent(spec, tiny_models_dir, choice):
    from guidance.pipeline import vocode_finite
    from guidance.vocoders import load_vocoder

    vocoder = load_vocoder(choice, spec, tiny_models_dir)
    mels = torch.zeros(3, 1, spec.n_mels, spec.frames)
    mels[1, 0, 5, 5] = float("nan")
    with pytest.raises(NonFiniteError, match="the log-Mel given to the vocoder has 1 non-finite value"):
        vocoder(mels)
    waves, ok = vocode_finite(mels, vocoder)
    assert ok.tolist() == [True, False, True] and bool(torch.isfinite(waves).all())
    assert waves[1].abs().max() == 0 and waves[0].abs().max() > 0


# ---- the sampler -------------------------------------------------------------------------------


def _nan_below(sigma_limit: float, row: int):
    """A denoiser (shrink towards 0) whose output for one row is NaN once sigma drops below `sigma_limit`."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = x / (1 + sigma.view(-1, 1, 1, 1) ** 2)
        if float(sigma.max()) < sigma_limit:
            out[row] = float("nan")
        return out

    return denoise


@pytest.mark.parametrize("kind", ["euler", "heun"])
def test_sampler_names_the_step_and_sigma_where_x_went_nan(kind):
    config = SamplerConfig(steps=8, kind=kind)
    sigmas = config.sigmas()
    first_bad = int((sigmas[:-1] < 5.0).nonzero()[0])  # the first step that evaluates D below sigma 5 ...
    if kind == "heun":  # ... which for Heun is the step before: its correction evaluates D at its end
        first_bad = int((sigmas[1:-1] < 5.0).nonzero()[0])
    with pytest.raises(NonFiniteError) as info:
        sample(_nan_below(5.0, row=1), torch.randn(3, 1, 4, 4), config)
    err = info.value
    assert err.step == first_bad and err.sigma == pytest.approx(float(sigmas[first_bad]))
    assert f"step index {first_bad} of 8 (sigma {float(sigmas[first_bad]):.4g})" in str(err)
    assert "1 of 3 sample(s)" in str(err)
    # whoever scores whole batches can keep the finite rows
    x = sample(_nan_below(5.0, row=1), torch.randn(3, 1, 4, 4), config, allow_nonfinite=True)
    assert torch.isnan(x[1]).all() and torch.isfinite(x[[0, 2]]).all()


# ---- the command line --------------------------------------------------------------------------


def _with_nan_weight(tiny_models_dir: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the tiny models in which model file `name` holds one NaN weight (as a diverged training
    run would leave it), written and read back through the real model-file code."""
    from guidance.models import load_model, save_model

    directory = tmp_path / f"nan-{name}"
    shutil.copytree(tiny_models_dir, directory)
    path = directory / f"{name}.safetensors"
    loaded = load_model(path)
    with torch.no_grad():
        next(loaded.model.parameters()).view(-1)[0] = float("nan")
    save_model(path, loaded.model, loaded.kind, loaded.config, loaded.spec, loaded.labels, loaded.task)
    return directory


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith("speechguide: error: "), lines[0]
    return lines[0]


def test_generate_with_a_nan_model_exits_1_with_one_line_and_writes_nothing(tiny_models_dir, tmp_path):
    models = _with_nan_weight(tiny_models_dir, tmp_path, "denoiser-unet")
    out = tmp_path / "out"
    r = run_cli("generate", "--target", "digit=3", "--num", "2", "--steps", "3", "--out", str(out), "--models-dir", str(models))
    line = _one_error_line(r)
    assert line.startswith("speechguide: error: sampling became non-finite at step index 0 of 3 (sigma 80)"), line
    assert not out.exists()


def test_calibrate_with_a_nan_model_exits_1_with_one_line_and_writes_nothing(tiny_models_dir, tmp_path):
    models = _with_nan_weight(tiny_models_dir, tmp_path, "denoiser-unet")
    out = tmp_path / "cal"
    r = run_cli("calibrate", "--models-dir", str(models), "--bins", "2", "--max-clips", "4", "--draws", "1",
                "--no-progress", "--no-mlflow", "--out", str(out))
    line = _one_error_line(r)
    assert "calibration bin 0 (sigma 0.002 to 0.4): the denoiser's x0_hat has" in line, line
    assert not out.exists()


@pytest.mark.slow
def test_evaluate_with_a_nan_judge_exits_1_with_one_line_and_writes_nothing(tiny_models_dir, tmp_path):
    models = _with_nan_weight(tiny_models_dir, tmp_path, "judge-digit")
    out = tmp_path / "eval"
    r = run_cli("evaluate", "--models-dir", str(models), "--per-class", "1", "--steps", "2", "--noisy-scales", "1",
                "--clean-scales", "0.1", "--split", "val", "--no-mlflow", "--out", str(out))
    line = _one_error_line(r)
    assert "digit judge judge-digit: its embeddings of real val clips has" in line, line
    assert not out.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Serve's own, on import
def test_split_sampler_raises_the_same_error():
    from serve.steps import drive_sampler

    config = SamplerConfig(steps=8)
    denoise = _nan_below(5.0, row=0)

    async def remote(x, sigma):
        return denoise(x, sigma)

    with pytest.raises(NonFiniteError) as remote_err:
        asyncio.run(drive_sampler(torch.randn(2, 1, 4, 4), config, 0, None, remote, None))
    with pytest.raises(NonFiniteError) as local_err:
        sample(denoise, torch.randn(2, 1, 4, 4), config)
    assert (remote_err.value.step, remote_err.value.sigma) == (local_err.value.step, local_err.value.sigma)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_serve_answers_a_json_500_naming_step_and_sigma():
    from serve.ingress import _nonfinite

    with pytest.raises(NonFiniteError) as info:
        sample(_nan_below(5.0, row=0), torch.randn(1, 1, 4, 4), SamplerConfig(steps=8))
    response = asyncio.run(_nonfinite(None, info.value))
    body = json.loads(response.body)
    assert response.status_code == 500
    assert body["step"] == info.value.step and body["sigma"] == pytest.approx(info.value.sigma)
    assert body["detail"].startswith("generation failed: sampling became non-finite at step index")


def test_client_error_carries_the_servers_detail(monkeypatch):
    import httpx

    from serve import client

    detail = "generation failed: sampling became non-finite at step index 0 of 3 (sigma 80): 1 of 1 sample(s)"

    def post(url: str, **_: object) -> httpx.Response:  # the app's answer, without starting the app
        return httpx.Response(500, json={"detail": detail, "step": 0, "sigma": 80.0}, request=httpx.Request("POST", url))

    monkeypatch.setattr(client.httpx, "post", post)
    with pytest.raises(httpx.HTTPStatusError, match=r"/v1/generate failed \(500\): generation failed: sampling became non-finite"):
        client.generate_remote("http://127.0.0.1:9", {"targets": []})
