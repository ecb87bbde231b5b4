"""Generation runs on CUDA when present and on the CPU otherwise, with no code change."""

from __future__ import annotations

import pytest
import torch

from guidance.device import pick_device
from guidance.guides import DEFAULT_PROFILES
from guidance.pipeline import ModelPaths, ModelSet, make_noise, sample_mels


def test_pick_device_prefers_cuda_only_when_available(monkeypatch):
    monkeypatch.delenv("SPEECHGUIDE_DEVICE", raising=False)
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("SPEECHGUIDE_DEVICE", "cpu")
    assert pick_device().type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")


def test_noise_is_the_same_whatever_the_device(spec):
    a, b = make_noise(4, spec, seed=11), make_noise(4, spec, seed=11)
    assert torch.equal(a, b) and a.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_and_cpu_generate_the_same_samples(tiny_models_dir):
    profile = DEFAULT_PROFILES["noisy"].with_sampler(steps=4)
    targets = torch.tensor([3, 7])
    outs = {}
    for device in ("cpu", "cuda"):
        models = ModelSet.load(ModelPaths(root=tiny_models_dir), device)
        noise = make_noise(2, models.spec, seed=0)
        outs[device] = sample_mels(models, "noisy", targets, profile, noise)
    torch.testing.assert_close(outs["cuda"], outs["cpu"], atol=1e-3, rtol=1e-3)
