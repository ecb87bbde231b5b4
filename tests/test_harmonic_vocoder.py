"""The harmonic vocoder and its F0 head: the pulse train's pitch, the neural vocoder's phase where the head
hears no voice, model files loaded weights-only, training through the CLI's code path, clear refusals."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from cli_run import run_in_process

from guidance.f0_head_training import F0HeadTrainConfig, fit_f0_head, frame_labels
from guidance.features import FeatureSpecMismatch, LogMel
from guidance.harmonic_vocoder import HarmonicVocoder, pulse_train
from guidance.models import save_model
from guidance.models.checkpoint import config_dict
from guidance.models.f0_head import F0Head, F0HeadConfig
from guidance.pitch_tracker import track
from guidance.vocoders import F0_HEAD_FILE, describe_vocoder, load_vocoder, waveform_route_vocoder
from tests.test_cli import run_cli


def constant_head(spec, hz: float | None) -> F0Head:
    """A head that reads `hz` in every frame (None: unvoiced everywhere), whatever the log-Mel."""
    head = F0Head(F0HeadConfig(n_mels=spec.n_mels, channels=8))
    last = head.net[-1]
    torch.nn.init.zeros_(last.weight)
    bias = torch.full((head.config.bins + 1,), -20.0)
    bias[head.config.bins if hz is None else int(head.bin_of(torch.tensor(hz)))] = 20.0
    last.bias.data.copy_(bias)
    return head.eval().requires_grad_(False)


def with_head(models_dir, tmp_path, spec, head: F0Head):
    target = tmp_path / "models"
    shutil.copytree(models_dir, target)
    save_model(target / F0_HEAD_FILE, head, "f0-head", config_dict(head.config), spec)
    return target


@pytest.mark.parametrize("hz", [90.0, 140.0])
def test_a_pulse_train_has_the_pitch_it_follows(hz):
    rate, hop = 16000, 256
    frames = 63
    wave = pulse_train(torch.full((1, frames), hz), hop, hop * (frames - 1), rate, 50.0)[0]
    heard = track(wave / wave.abs().max() * 0.9, rate)
    assert heard.voiced_fraction > 0.9
    assert abs(12 * math.log2(heard.median_hz / hz)) < 0.3


def test_where_the_head_hears_no_voice_the_neural_vocoder_speaks(tiny_models_dir, spec, tmp_path):
    models_dir = with_head(tiny_models_dir, tmp_path, spec, constant_head(spec, None))
    harmonic, neural = load_vocoder("harmonic", spec, models_dir), load_vocoder("neural", spec, models_dir)
    mel = torch.randn(2, 1, spec.n_mels, spec.frames)
    assert torch.allclose(harmonic(mel), neural(mel), atol=1e-5)
    assert waveform_route_vocoder(harmonic) is harmonic.neural  # guides hear through the neural synthesis
    from guidance.guides.pitch import PitchGuide

    assert PitchGuide(spec, harmonic).route.vocoder is harmonic.neural


@pytest.mark.parametrize("hz", [95.0, 150.0])
def test_where_the_head_hears_a_voice_the_output_has_its_pitch(spec, fsdd_root, hz):
    """The committed vocoder's magnitude of a real clip, the pitch of the head (here a constant one)."""
    from guidance.data import load_wave
    from guidance.pipeline import ModelPaths

    harmonic = HarmonicVocoder(load_vocoder("neural", spec, ModelPaths().root), constant_head(spec, hz), spec)

    clip = sorted((fsdd_root / "recordings").glob("5_george_*.wav"))[0]
    mel = LogMel(spec)(load_wave(clip, spec.sample_rate)[None])
    wave = harmonic(mel)[0]
    assert wave.shape == (spec.num_samples,) and torch.isfinite(wave).all()
    heard = track(wave, spec.sample_rate)
    assert math.isfinite(heard.median_hz) and abs(12 * math.log2(heard.median_hz / hz)) < 0.5


def test_the_harmonic_vocoder_is_described_and_refused_clearly(tiny_models_dir, spec, tmp_path, capsys, monkeypatch):
    with pytest.raises(FileNotFoundError, match="train f0-head"):
        load_vocoder("harmonic", spec, tiny_models_dir)
    head = constant_head(spec, 120.0)
    models_dir = with_head(tiny_models_dir, tmp_path, spec, head)
    description = describe_vocoder(load_vocoder("harmonic", spec, models_dir))
    assert description["kind"] == "harmonic" and description["neural"]["kind"] == "neural"
    assert len(description["f0_head"]["sha256"]) == 64
    import dataclasses

    other = dataclasses.replace(spec, mean=spec.mean + 1.0)
    save_model(models_dir / F0_HEAD_FILE, head, "f0-head", config_dict(head.config), other)
    with pytest.raises(FeatureSpecMismatch):
        load_vocoder("harmonic", spec, models_dir)
    code, err = run_in_process(["generate", "--target", "digit=3", "--vocoder", "harmonic", "--models-dir", tiny_models_dir, "--out", tmp_path / "o"], capsys, monkeypatch)
    assert code == 2 and "train f0-head" in err and not (tmp_path / "o").exists()


def test_labels_put_each_frame_in_its_semitone_bin(spec):
    head = F0Head(F0HeadConfig(n_mels=spec.n_mels, channels=8))
    f0 = torch.zeros(200).numpy()
    f0[20:120] = 100.0  # pYIN's 10 ms grid
    y = frame_labels(f0, head, spec.frames, spec)
    frame_s = spec.hop_length / spec.sample_rate
    voiced_frames = [i for i in range(spec.frames) if 0.2 <= i * frame_s <= 1.19]
    assert set(y[voiced_frames].tolist()) == {int(head.bin_of(torch.tensor(100.0)))}
    assert y[0] == head.config.bins  # unvoiced


def test_a_trained_head_is_saved_loaded_weights_only_and_plays(tiny_models_dir, spec, fsdd_root, tmp_path):
    models_dir = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models_dir)
    cfg = F0HeadTrainConfig(clips=8, val_clips=4, steps=20, batch_size=4)
    path, card = fit_f0_head(spec, models_dir / F0_HEAD_FILE, fsdd_root, cfg)
    assert card["train_clips"] == 8 and 0 <= card["val_voicing_accuracy"] <= 1 and math.isfinite(card["final_loss"])
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:  # plain tensors and JSON metadata, nothing to unpickle
        assert "speechguide" in f.metadata()
    wave = load_vocoder("harmonic", spec, models_dir)(torch.randn(1, 1, spec.n_mels, spec.frames))
    assert wave.shape == (1, spec.num_samples) and torch.isfinite(wave).all()


def test_a_serve_app_can_write_with_the_harmonic_vocoder_and_refuses_unknown_ones():
    from pydantic import ValidationError

    from serve.config import AppArgs

    assert AppArgs(vocoder="harmonic").vocoder == "harmonic"
    with pytest.raises(ValidationError):
        AppArgs(vocoder="pulse")


def test_auto_writes_pitch_requests_with_the_harmonic_vocoder_and_the_rest_with_the_neural_one(tiny_models_dir, spec, tmp_path, capsys, monkeypatch):
    from guidance.vocoders import AutoVocoder, request_vocoder

    mel = torch.randn(1, 1, spec.n_mels, spec.frames)
    bare = load_vocoder("auto", spec, tiny_models_dir)  # no F0 head here: neural for every request
    assert isinstance(bare, AutoVocoder) and request_vocoder(bare, {"digit", "pitch"}) is bare.neural
    models_dir = with_head(tiny_models_dir, tmp_path, spec, constant_head(spec, 120.0))
    auto = load_vocoder("auto", spec, models_dir)
    assert request_vocoder(auto, {"digit", "pitch"}) is auto.harmonic and request_vocoder(auto, {"digit"}) is auto.neural
    assert torch.equal(auto(mel), auto.neural(mel))  # anything that does not ask per request hears the neural vocoder
    assert describe_vocoder(auto)["harmonic"]["kind"] == "harmonic"
    neural = load_vocoder("neural", spec, models_dir)
    assert request_vocoder(neural, {"pitch"}) is neural  # an explicit choice writes every request

    out = tmp_path / "out"
    code, err = run_in_process(["generate", "--target", "pitch=120", "--num", "1", "--steps", "2", "--models-dir", models_dir, "--device", "cpu", "--out", out], capsys, monkeypatch)
    assert code == 0, err
    import json

    assert json.loads((out / "manifest.json").read_text())["models"]["vocoder"]["kind"] == "harmonic"


def test_train_f0_head_refuses_options_of_other_roles(tmp_path):
    r = run_cli("train", "f0-head", "--ema-decay", "0.9", "--out", str(tmp_path / "h.safetensors"), "--no-mlflow")
    assert r.returncode == 2 and "f0-head" in r.stderr and not (tmp_path / "h.safetensors").exists()


def test_first_uses_of_librosa_kernels_take_turns_across_processes(tmp_path):
    """Two processes entering `first_use` at once run its body one after the other (the lock that keeps
    librosa's kernel cache consistent), and a second use in a process does not wait."""
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from guidance.librosa_kernels import first_use\n"
        "with first_use('k'):\n"
        "    start = time.time(); time.sleep(1.0); end = time.time()\n"
        "with first_use('k'):\n"
        "    pass\n"
        "open(sys.argv[1], 'w').write(f'{start} {end}')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"{i}.txt")]) for i in range(2)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    (a0, a1), (b0, b1) = sorted(tuple(map(float, (tmp_path / f"{i}.txt").read_text().split())) for i in range(2))
    assert b0 >= a1  # no overlap
