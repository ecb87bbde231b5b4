"""Composite targets: one guide term per guide, each with its own settings and weight, through the library
and the command line (its entry point run in the test process; real reference WAVs from FSDD)."""

from __future__ import annotations

import json

import pytest
import torch

from guidance.guides import GuidanceProfile, GuidedDenoiser, GuideSettings
from guidance.guides.base import Guide
from guidance.pipeline import build_guide_terms


class _Linear(Guide):
    """log p = <x, direction> for a fixed direction: its gradient is known exactly."""

    def __init__(self, name: str, direction: torch.Tensor) -> None:
        self.name, self.direction, self.labels = name, direction, ["a"]

    def log_prob(self, inp, sigma, target, temperature):
        return (inp * self.direction).flatten(1).sum(1) / temperature


def test_build_guide_terms_gives_each_guide_its_settings_and_weight():
    a, b = _Linear("digit", torch.ones(1, 1, 2, 2)), _Linear("speaker", -torch.ones(1, 1, 2, 2))
    b.default_settings = GuideSettings(scale=0.5, norm_scaling=True, sigma_hi=10)
    profile = GuidanceProfile(guide=GuideSettings(scale=3.0))
    targets = {"digit": torch.zeros(2, dtype=torch.long), "speaker": torch.zeros(2, dtype=torch.long)}
    terms = build_guide_terms(targets, {"digit": a, "speaker": b}, profile, {"speaker": 2.0})
    assert [(t.guide.name, t.settings.scale, t.weight) for t in terms] == [("digit", 3.0, 1.0), ("speaker", 0.5, 2.0)]
    # a profile's per_guide entry wins over the guide kind's default; weight 0 drops the term
    profile = profile.model_copy(update={"per_guide": {"speaker": GuideSettings(scale=0.1)}})
    terms = build_guide_terms(targets, {"digit": a, "speaker": b}, profile, {"digit": 0.0})
    assert [(t.guide.name, t.settings.scale) for t in terms] == [("speaker", 0.1)]
    with pytest.raises(KeyError, match="emotion"):
        build_guide_terms({"emotion": targets["digit"]}, {"digit": a}, profile)
    # the guided denoiser sums weighted terms: plain guidance adds w * scale * sigma^2 * grad for each
    profile = GuidanceProfile(guide=GuideSettings(scale=1.0), per_guide={"speaker": GuideSettings(scale=1.0)})
    terms = build_guide_terms(targets, {"digit": a, "speaker": b}, profile, {"speaker": 3.0})
    x = torch.zeros(2, 1, 2, 2)
    out = GuidedDenoiser(lambda x, s: torch.zeros_like(x), terms)(x, torch.tensor(2.0))
    assert torch.allclose(out, torch.full_like(x, 4.0 * (1 - 3)))


@pytest.mark.slow
def test_generate_composite_writes_wavs_and_both_scores(tiny_models_dir, fsdd_root, tmp_path, capsys, monkeypatch):
    import shutil

    from cli_run import run_in_process

    from guidance.pipeline import ModelPaths

    ref = fsdd_root / "recordings" / "4_theo_0.wav"
    out = tmp_path / "c"
    models = shutil.copytree(tiny_models_dir, tmp_path / "models")  # plus the committed word-spectra table
    shutil.copy(ModelPaths().path("word_spectra"), models / "word-spectra.safetensors")
    code, err = run_in_process(["generate", "--target", "digit=7", "--target", f"speaker={ref}", "--weight", "speaker=2", "--num", "2",
                                "--steps", "3", "--seed", "1", "--out", out, "--models-dir", models], capsys, monkeypatch)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.wav")) == ["7_000.wav", "7_001.wav"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["request"]["weights"] == {"digit": 1.0, "speaker": 2.0}
    assert manifest["request"]["voice_guide"] == "stats"  # the default voice guide
    assert manifest["models"]["speaker_guide"]["name"] == "reference-spectral-statistics"
    assert manifest["models"]["speaker_guide"]["word_spectra"] is True  # the reference is retargeted to digit 7
    assert manifest["profile"]["per_guide"]["speaker"]["norm_scaling"] is True
    assert manifest["profile"]["guide"]["scale"] == 20.0  # the composite's digit scale when --scale is not given
    for s in manifest["samples"]:
        assert [t["guide"] for t in s["targets"]] == ["digit", "speaker"]
        assert 0 <= s["scores"]["guide_target_probability"] <= 1
        assert s["scores"]["speaker_stats_distance"] >= 0 and -1 <= s["scores"]["speaker_cosine_wav"] <= 1
    # speaker only, with the encoder guide: files are named by sample
    out2 = tmp_path / "s"
    code, err = run_in_process(["generate", "--target", f"speaker={ref}", "--voice-guide", "encoder", "--num", "1", "--steps", "2",
                                "--out", out2, "--models-dir", tiny_models_dir], capsys, monkeypatch)
    assert code == 0, err
    assert [p.name for p in out2.glob("*.wav")] == ["sample_000.wav"]
    manifest = json.loads((out2 / "manifest.json").read_text())
    assert manifest["models"]["guide"] is None and manifest["models"]["speaker_guide"]["name"] == "resemblyzer-voice-encoder"
    assert -1 <= manifest["samples"][0]["scores"]["speaker_cosine"] <= 1


@pytest.mark.parametrize(
    "args, says",
    [
        (["--target", "speaker=MISSING.wav"], "does not exist"),
        (["--target", "speaker=README.md"], "not a readable WAV"),
        (["--target", "digit=7", "--weight", "speaker=2"], "no --target names the guide 'speaker'"),
        (["--target", "digit=7", "--target", "speaker=README.md", "--weight", "speaker=-1"], "--weight must look like"),
        (["--target", "speaker=README.md", "--voice-guide", "nope"], "--voice-guide must be one of stats, encoder"),
    ],
)
def test_bad_composite_requests_exit_2_with_one_line(args, says, tmp_path, capsys, monkeypatch):
    from cli_run import run_in_process

    code, err = run_in_process(["generate", *args, "--out", tmp_path / "o"], capsys, monkeypatch)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and says in err, err
    assert not (tmp_path / "o").exists()
