"""Model files carry their feature config; a mismatched one is refused with a clear error."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from guidance.features import FeatureSpec, FeatureSpecMismatch
from guidance.models import ClassifierConfig, LogMelClassifier, load_model, read_metadata, save_model
from guidance.models.checkpoint import config_dict


def _save(path, spec):
    cfg = ClassifierConfig(channels=(4, 8), emb_dim=8)
    return save_model(path, LogMelClassifier(cfg), "classifier", config_dict(cfg), spec, [str(d) for d in range(10)], "digit", {"note": "t"})


def test_round_trip_preserves_weights_and_metadata(tmp_path):
    spec = FeatureSpec(mean=-7.2, std=5.8)
    torch.manual_seed(0)
    path = _save(tmp_path / "c.safetensors", spec)
    loaded = load_model(path, expected_spec=spec)
    assert loaded.spec == spec and loaded.labels[7] == "7" and loaded.card == {"note": "t"}
    x = torch.randn(2, 1, 64, 64)
    ref = LogMelClassifier(ClassifierConfig(channels=(4, 8), emb_dim=8))
    ref.load_state_dict(loaded.model.state_dict())
    torch.testing.assert_close(loaded.model(x), ref.eval()(x))
    assert read_metadata(path)["feature_spec"]["n_mels"] == 64
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("change", [{"n_mels": 80}, {"hop_length": 128}, {"sample_rate": 8000}, {"mean": 0.0}])
def test_mismatched_feature_config_is_refused(tmp_path, change):
    spec = FeatureSpec(mean=-7.2, std=5.8)
    path = _save(tmp_path / "c.safetensors", dataclasses.replace(spec, **change))
    field = next(iter(change))
    with pytest.raises(FeatureSpecMismatch, match=field):
        load_model(path, expected_spec=spec)


def test_not_a_model_file_is_refused(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"definitely not safetensors")
    with pytest.raises(ValueError, match="not a safetensors"):
        load_model(bad)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")


def test_wrong_kind_is_refused(tmp_path):
    path = _save(tmp_path / "c.safetensors", FeatureSpec())
    with pytest.raises(ValueError, match="expected 'judge'"):
        load_model(path, kind="judge")
