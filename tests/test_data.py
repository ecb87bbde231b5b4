"""FSDD splits (test takes never reach training), feature caching, and the SC09 loader on a tiny tree."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import guidance.data as data
from guidance.data import SplitRule, clip_features, fsdd_features, fsdd_split, list_fsdd, resolve_fsdd_root, sc09_clips, sc09_waves
from guidance.features import FeatureSpec, GriffinLimVocoder, LogMel


def test_official_split_sizes(fsdd_root):
    clips = list_fsdd(fsdd_root)
    assert len(clips) == 3000
    sizes = {s: len(fsdd_split(clips, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 2400, "val": 300, "test": 300}
    assert {c.take for c in fsdd_split(clips, "test")} == set(range(5))
    assert min(c.take for c in fsdd_split(clips, "train")) == 10


def test_features_shape_and_normalisation(fsdd_root, spec, tmp_path):
    fs = fsdd_features("val", spec, root=fsdd_root, cache_dir=tmp_path)
    assert fs.mels.shape == (300, 1, spec.n_mels, spec.frames)
    assert bool((fs.takes >= 5).all() and (fs.takes <= 9).all())
    assert abs(fs.mels.mean().item()) < 0.3 and 0.7 < fs.mels.std().item() < 1.3
    again = fsdd_features("val", spec, root=fsdd_root, cache_dir=tmp_path)  # from the cache
    torch.testing.assert_close(again.mels, fs.mels)
    assert len(list(tmp_path.glob("fsdd-val-*.pt"))) == 1


def test_feature_extraction_reads_only_the_split_it_is_asked_for(fsdd_root, spec, tmp_path, monkeypatch):
    read: list[Path] = []
    real_load = data.load_wave

    def recording_load(path, sample_rate):
        read.append(Path(path))
        return real_load(path, sample_rate)

    monkeypatch.setattr(data, "load_wave", recording_load)
    fsdd_features("val", spec, root=fsdd_root, cache_dir=tmp_path)  # val: 300 clips to read, where train has 2400
    assert len(read) == 300 and {int(p.stem.split("_")[2]) for p in read} == {5, 6, 7, 8, 9}


@pytest.mark.parametrize("role", ["denoiser", "classifier", "noisy-classifier", "judge"])
def test_no_test_take_reaches_training(role, fsdd_root, spec, tmp_path, monkeypatch):
    """Train every role for one step (and its one validation) and record the takes of every split it asks for."""
    import guidance.training as training
    from guidance.training import TRAIN_DEFAULTS, train

    seen: list[tuple[str, torch.Tensor]] = []

    def recording(split, spec, root=None, **kwargs):
        clips = fsdd_split(list_fsdd(resolve_fsdd_root(root)), split)
        seen.append((split, torch.tensor([c.take for c in clips])))  # every take of the split training asked for
        # a few of that split's own clips to train on (one step needs rows, not 2400 of them; vocoded sets are
        # swapped for clean ones too: same clips, faster)
        few = clips[:: len(clips) // 8][:8]
        return clip_features(few, spec)

    monkeypatch.setattr(training, "fsdd_features", recording)
    monkeypatch.setattr(training, "fsdd_vocoded_features", recording)
    cfg = dataclasses.replace(TRAIN_DEFAULTS[role], steps=1, batch_size=4, eval_every=1)
    train(role, spec, tmp_path / f"{role}.safetensors", cfg, data_root=str(fsdd_root))
    assert seen, "training used no data at all"
    assert {split for split, _ in seen} <= {"train", "val"}
    assert min(int(t.min()) for _, t in seen) >= 5


def test_split_rule_never_moves_test_takes():
    rule = SplitRule()
    assert [rule.split_of(t) for t in (0, 4, 5, 9, 10, 49)] == ["test", "test", "val", "val", "train", "train"]


def test_missing_fsdd_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHGUIDE_FSDD_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SPEECHGUIDE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="SPEECHGUIDE_FSDD_DIR"):
        resolve_fsdd_root()


def test_env_var_points_at_local_copy(fsdd_root, monkeypatch):
    monkeypatch.setenv("SPEECHGUIDE_FSDD_DIR", str(fsdd_root))
    assert resolve_fsdd_root() == fsdd_root


def _tone(path: Path, freq: float, sr: int = 16000, seconds: float = 0.5) -> None:
    t = np.arange(int(sr * seconds)) / sr
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, subtype="PCM_16")


def test_sc09_loader_on_a_tiny_speech_commands_tree(tmp_path):
    base = tmp_path / "SpeechCommands" / "speech_commands_v0.02"
    for i, word in enumerate(["zero", "three", "nine", "dog"]):
        for spk in ("aaaa1111", "bbbb2222"):
            _tone(base / word / f"{spk}_nohash_0.wav", 200 + 50 * i)
    _tone(base / "_background_noise_" / "noise.wav", 100)
    (base / "validation_list.txt").write_text("three/bbbb2222_nohash_0.wav\n")
    (base / "testing_list.txt").write_text("zero/bbbb2222_nohash_0.wav\n")
    everything = sc09_clips(tmp_path)
    assert sorted((d, s) for _, d, s in everything) == [(0, "aaaa1111"), (0, "bbbb2222"), (3, "aaaa1111"), (3, "bbbb2222"), (9, "aaaa1111"), (9, "bbbb2222")]
    assert [(d, s) for _, d, s in sc09_clips(tmp_path, "testing")] == [(0, "bbbb2222")]
    training = sc09_clips(tmp_path, "training")
    assert len(training) == 4 and all(s == "aaaa1111" or d == 9 for _, d, s in training)
    waves, digits = sc09_waves(tmp_path, FeatureSpec(), "validation")
    assert waves.shape == (1, FeatureSpec().num_samples) and digits.tolist() == [3]
    with pytest.raises(FileNotFoundError):
        sc09_clips(tmp_path / "empty")


def test_vocoder_round_trip_keeps_the_spectrum(fsdd_root, spec):
    fs = fsdd_features("test", spec, root=fsdd_root)
    mels = fs.mels[:8]
    wave = GriffinLimVocoder(spec)(mels)
    assert wave.shape == (8, spec.num_samples) and bool(wave.abs().max() <= 1.0)
    again = LogMel(spec)(wave)
    # Round trip error in normalized log-Mel units, well below the spread of the features (std 1).
    assert (again - mels).abs().mean().item() < 0.35
    torch.testing.assert_close(GriffinLimVocoder(spec)(mels), wave)  # seeded: same audio every time


def test_as_written_is_exactly_what_write_wav_stores(tmp_path):
    from guidance.data import as_written, write_wav
    import soundfile

    gen = torch.Generator().manual_seed(0)
    waves = torch.randn(3, 800, generator=gen) * 0.5
    waves[0, :10] = 3.0  # beyond full scale: clipped
    waves[1, :400] = torch.randn(400) * 1e-5  # below one 16-bit step: rounds to 0 or one step
    heard = as_written(waves, 8000)
    for i, wave in enumerate(waves):
        write_wav(tmp_path / f"{i}.wav", wave, 8000)
        stored, rate = soundfile.read(str(tmp_path / f"{i}.wav"), dtype="float32")
        assert rate == 8000 and torch.equal(heard[i], torch.from_numpy(stored))
    assert heard.abs().max() <= 1.0 and set((heard[1, :400] * 32768).round().abs().unique().tolist()) <= {0.0, 1.0, 2.0}  # a few steps at most
    assert not list(tmp_path.glob("*.partial"))
