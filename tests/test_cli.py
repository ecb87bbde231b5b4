"""The command line as a user runs it: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import run_in_process

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "speechguide", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def test_generate_is_deterministic_for_a_seed(tiny_models_dir, tmp_path, capsys, monkeypatch):
    # In this process (the CLI's entry point, no interpreter start): a run that read any state left by the one
    # before it (a global RNG, a cache) would differ here. The next test runs generate in a real process.
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        code, err = run_in_process(["generate", "--target", "digit=7", "--target", "digit=2", "--num", "2", "--seed", "5",
                                    "--steps", "4", "--out", out, "--models-dir", tiny_models_dir], capsys, monkeypatch)
        assert code == 0, err
        outs.append(out)
    names = sorted(p.name for p in outs[0].glob("*.wav"))
    assert names == ["2_000.wav", "2_001.wav", "7_000.wav", "7_001.wav"]
    for n in names:
        assert (outs[0] / n).read_bytes() == (outs[1] / n).read_bytes()
    other = tmp_path / "c"
    assert run_in_process(["generate", "--target", "digit=7", "--target", "digit=2", "--num", "2", "--seed", "6",
                           "--steps", "4", "--out", other, "--models-dir", tiny_models_dir], capsys, monkeypatch)[0] == 0
    assert (other / "7_000.wav").read_bytes() != (outs[0] / "7_000.wav").read_bytes()
    manifest = json.loads((outs[0] / "manifest.json").read_text())
    assert manifest["request"]["seed"] == 5 and manifest["profile"]["sampler"]["steps"] == 4
    assert len(manifest["samples"]) == 4 and "guide_target_probability" in manifest["samples"][0]["scores"]
    assert manifest["models"]["denoiser"]["version"]


def test_generate_unconditional_names_files_by_sample(tiny_models_dir, tmp_path):
    # No digit target -> sample_{k}.wav is the documented name; with --guide none and a digit target we still
    # name by digit, so check the guide-free path through the manifest instead.
    out = tmp_path / "u"
    r = run_cli("generate", "--target", "digit=1", "--guide", "none", "--num", "1", "--steps", "3", "--out", str(out),
                "--models-dir", str(tiny_models_dir))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "manifest.json").read_text())["models"]["guide"] is None


BAD_ARGS = [
    ["generate", "--target", "digit=7", "--out", "OUT", "--num", "0"],
    ["generate", "--target", "digit=7", "--out", "OUT", "--num", "many"],
    ["generate", "--target", "digit7", "--out", "OUT"],
    ["generate", "--target", "digit=12", "--out", "OUT"],
    ["generate", "--target", "emotion=happy", "--out", "OUT"],
    ["generate", "--target", "digit=7", "--out", "OUT", "--guide", "magic"],
    ["generate", "--target", "digit=7", "--out", "OUT", "--steps", "0"],
    ["generate", "--target", "digit=7", "--out", "OUT", "--scale", "nan"],
    ["generate", "--target", "digit=7", "--out", "OUT", "--scale", "-1"],
    ["generate", "--target", "digit=7", "--out", "OUT", "--sampler", "ddim"],
    ["generate", "--target", "digit=7", "--out", "OUT", "--profile", "does-not-exist.json"],
    ["generate", "--out", "OUT"],
    ["generate", "--target", "digit=7", "--out", "OUT", "--bogus"],
    ["generate", "--target", "digit=7", "--out", "OUT", "--guide-model", "classifier-noisy@production"],  # needs --url
    ["generate", "--target", "digit=7", "--out", "OUT", "--url", "http://127.0.0.1:9", "--profile-name", "production",
     "--profile", "does-not-matter.json"],
    ["train", "wizard", "--out", "x.safetensors"],
    ["train", "classifier", "--out", "x.pt"],
    ["train", "classifier", "--out", "x.safetensors", "--steps", "-3"],
    ["train", "denoiser", "--out", "x.safetensors", "--ema-decay", "1.5"],
    ["evaluate", "--per-class", "0"],
    ["evaluate", "--noisy-scales", "a,b"],
    ["nonsense-command"],
]


@pytest.mark.parametrize("args", BAD_ARGS, ids=[" ".join(a[:3]) + "…" for a in BAD_ARGS])
def test_bad_arguments_exit_2_with_one_line(args, tiny_models_dir, tmp_path, capsys, monkeypatch):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    code, err = run_in_process(args, capsys, monkeypatch, env={"SPEECHGUIDE_MODELS": str(tiny_models_dir)})
    assert code == 2, (code, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("speechguide: error:"), err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("args", [BAD_ARGS[3], BAD_ARGS[-1]], ids=["bad label", "unknown command"])
def test_bad_arguments_in_a_real_process(args, tiny_models_dir, tmp_path):
    r = run_cli(*[str(tmp_path / "out") if a == "OUT" else a for a in args], env={"SPEECHGUIDE_MODELS": str(tiny_models_dir)})
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("speechguide: error:"), r.stderr


def test_mismatched_model_dir_is_refused_in_one_line(tiny_models_dir, tmp_path, spec):
    import dataclasses
    import shutil

    from guidance.data import DIGITS
    from guidance.models import ClassifierConfig, LogMelClassifier, save_model
    from guidance.models.checkpoint import config_dict

    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_models_dir, mixed)
    cfg = ClassifierConfig(channels=(8, 16), emb_dim=16, noise_conditioned=True)
    save_model(mixed / "classifier-noisy.safetensors", LogMelClassifier(cfg), "classifier", config_dict(cfg),
               dataclasses.replace(spec, n_mels=80), DIGITS, "digit")
    r = run_cli("generate", "--target", "digit=3", "--out", str(tmp_path / "o"), "--models-dir", str(mixed))
    assert r.returncode == 2
    assert "n_mels" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_help_on_every_command(capsys):
    from speechguide.cli import main

    for cmd in ("train", "generate", "evaluate"):
        capsys.readouterr()
        assert main([cmd, "--help"]) == 0
        assert "Usage" in capsys.readouterr().out
