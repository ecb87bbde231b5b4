"""The neural vocoder: model files, the vocoder choice, `speechguide vocode`, and what the committed
vocoder does to real speech (measured against Griffin-Lim on the same validation clips)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import soundfile
import torch

from guidance.features import FeatureSpecMismatch, GriffinLimVocoder, LogMel
from guidance.models import save_model
from guidance.models.checkpoint import config_dict
from guidance.models.vocoder import NeuralVocoder, VocoderConfig
from guidance.vocoders import VOCODER_FILE, describe_vocoder, load_vocoder, resynthesize
from tests.test_cli import run_cli


def test_vocoder_file_round_trips(tiny_models_dir, spec):
    vocoder = load_vocoder("neural", spec, tiny_models_dir)
    again = load_vocoder(tiny_models_dir / VOCODER_FILE, spec)
    mel = torch.randn(3, 1, spec.n_mels, spec.frames)
    wave = vocoder(mel)
    assert wave.shape == (3, spec.num_samples) and torch.isfinite(wave).all()
    assert torch.allclose(wave.abs().amax(dim=1), torch.full((3,), 0.9), atol=1e-5)  # peak-normalized like Griffin-Lim
    assert torch.equal(wave, again(mel))
    assert describe_vocoder(vocoder)["kind"] == "neural" and len(describe_vocoder(vocoder)["sha256"]) == 64


def test_vocoder_refuses_another_feature_config(tiny_models_dir, spec, tmp_path):
    other = dataclasses.replace(spec, mean=spec.mean + 1.0)
    with pytest.raises(FeatureSpecMismatch, match="mean"):
        load_vocoder("neural", other, tiny_models_dir)
    cfg = VocoderConfig.for_spec(spec, channels=8, blocks=1)
    path = save_model(tmp_path / "v.safetensors", NeuralVocoder(cfg), "vocoder", config_dict(cfg), other)
    with pytest.raises(FeatureSpecMismatch):
        load_vocoder(path, spec)
    with pytest.raises(FileNotFoundError, match="train vocoder"):
        load_vocoder("neural", spec, tmp_path / "nowhere")


def test_any_length_resynthesis_keeps_the_length(tiny_models_dir, spec):
    wave = 0.1 * torch.randn(spec.num_samples + 3001)
    for choice in ("neural", "griffin-lim"):
        out = resynthesize(wave, load_vocoder(choice, spec, tiny_models_dir))
        assert out.shape == wave.shape and torch.isfinite(out).all()


def test_vocode_cli_keeps_names_and_refuses_non_wavs(tiny_models_dir, fsdd_root, tmp_path):
    clips = sorted((fsdd_root / "recordings").glob("3_jackson_*.wav"))[:2]
    out = tmp_path / "out"
    r = run_cli("vocode", *map(str, clips), "--out", str(out), "--models-dir", str(tiny_models_dir))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(c.name for c in clips)
    for c in clips:
        data, sr = soundfile.read(str(out / c.name))
        original, sr0 = soundfile.read(str(c))
        assert sr == 16000 and abs(len(data) - len(original) * 16000 / sr0) <= 1
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    empty = tmp_path / "empty"
    r = run_cli("vocode", str(clips[0]), str(bad), "--out", str(empty), "--models-dir", str(tiny_models_dir))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "notes.wav" in lines[0], r.stderr
    assert not empty.exists() or not any(empty.iterdir())  # nothing written when one input is bad
    r = run_cli("vocode", str(clips[0]), "--out", str(empty), "--vocoder", "wavenet", "--models-dir", str(tiny_models_dir))
    assert r.returncode == 2 and "--vocoder" in r.stderr


def _log_mel_error(front: LogMel, a: torch.Tensor, b: torch.Tensor) -> float:
    return float((front(a) - front(b)).abs().mean())


def test_committed_vocoder_hears_real_speech_better_than_griffin_lim(spec, fsdd_root):
    """On 30 validation clips, the committed vocoder's round trip stays closer to the original log-Mel
    (what every judge reads) and to its multi-resolution spectra than Griffin-Lim's does."""
    from guidance.data import fsdd_split, list_fsdd, load_waves
    from guidance.pipeline import ModelPaths
    from guidance.vocoder_losses import multi_resolution_stft_loss

    paths = ModelPaths()
    if not paths.path("vocoder").exists():
        pytest.fail("models/vocoder.safetensors is missing (speechguide train vocoder)")
    clips = fsdd_split(list_fsdd(fsdd_root), "val")[::10]
    waves = load_waves(clips, spec)
    front = LogMel(spec)
    neural = load_vocoder("neural", spec, paths.root)(front(waves))
    griffin = GriffinLimVocoder(spec)(front(waves))
    errors = {name: _log_mel_error(front, waves, w) for name, w in (("neural", neural), ("griffin-lim", griffin))}
    stft = {name: float(multi_resolution_stft_loss(w, waves)) for name, w in (("neural", neural), ("griffin-lim", griffin))}
    print(f"log-Mel L1 {errors}, MR-STFT {stft}")
    assert all(math.isfinite(v) for v in [*errors.values(), *stft.values()])
    assert errors["neural"] < errors["griffin-lim"] and stft["neural"] < stft["griffin-lim"]


def test_digital_silence_is_written_as_zeros_and_speech_is_left_alone():
    from guidance.data import as_written
    from guidance.output_level import finish_wave, gate_digital_silence

    rate = 16000
    t = torch.arange(rate) / rate
    tone = 0.5 * torch.sin(2 * torch.pi * 220 * t) * ((t > 0.4) & (t < 0.6))
    residue = 5e-6 * torch.randn(rate, generator=torch.Generator().manual_seed(0))  # below 1 step of 16-bit audio
    wave = tone + residue * (tone == 0)
    gated = gate_digital_silence(wave, rate)
    speech = (t > 0.42) & (t < 0.58)
    assert torch.equal(gated[speech], wave[speech])  # the word itself is never touched
    assert (gated[t < 0.38] == 0).all() and (gated[t > 0.62] == 0).all()
    assert ((wave - gated) ** 2).sum() / (wave**2).sum() < 1e-8  # -80 dB: far below anything audible
    written = as_written(finish_wave(wave.unsqueeze(0), rate), rate)[0]
    assert (written[t < 0.38] == 0).all()  # silence stays exact silence in the 16-bit file
    assert not (as_written(wave.unsqueeze(0) / wave.abs().max() * 0.9, rate)[0][t < 0.38] == 0).all()  # without the gate it would not
    finished = finish_wave(torch.stack([wave, 3 * wave]), rate)
    assert torch.allclose(finished.abs().amax(-1), torch.tensor([0.9, 0.9]))
