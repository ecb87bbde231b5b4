"""The fused single-backbone app: a ScoreSubnet served by ONE deployment that returns the guided x0_hat.

The step math (`serve.fused`) is checked against the in-process single-backbone provider without a cluster,
merged batches included. The fused app itself (serve/config-fused.yaml, a tiny subnet on the tiny
noise-conditioned classifier) runs over real HTTP in tests/test_parity.py, on the one Serve instance
that the parity matrix starts, so CI starts one cluster for both.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from guidance.guides import DEFAULT_PROFILES, GuideSettings
from guidance.pipeline import ModelSet, make_noise, sample_mels
from serve.fused import FusedCall, fused_answerer, fused_batch
from serve.steps import GuidePlan, drive_sampler, to_wire

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

def make_subnet(directory: Path) -> Path:
    """A tiny ScoreSubnet on the noise-conditioned classifier in `directory` (random, but not the
    zero-initialised output layer: D must depend on the taps for a comparison to mean anything)."""
    from guidance.data import DIGITS
    from guidance.features import FeatureSpec
    from guidance.models import read_metadata, save_model
    from guidance.models.score_subnet import ScoreSubnetConfig, SingleBackboneModel

    backbone = directory / "classifier-noisy.safetensors"
    meta = read_metadata(backbone)
    cfg = ScoreSubnetConfig(feature_channels=tuple(meta["config"]["channels"]), channels=(8, 16), emb_dim=8)
    torch.manual_seed(0)
    model = SingleBackboneModel.from_backbone_file(backbone, cfg)
    with torch.no_grad():
        for p in model.subnet.out.parameters():
            p.add_(0.05 * torch.randn_like(p))
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    return save_model(directory / "score-subnet-all.safetensors", model, "score-subnet", model.network_config(), spec, DIGITS, "digit")


@pytest.fixture(scope="module")
def subnet_dir(tiny_models_dir, tmp_path_factory) -> Path:
    """The tiny models plus a tiny ScoreSubnet on their noise-conditioned classifier."""
    directory = tmp_path_factory.mktemp("fused-models")
    for f in tiny_models_dir.glob("*.safetensors"):
        shutil.copy(f, directory / f.name)
    make_subnet(directory)
    return directory


@pytest.fixture(scope="module")
def subnet_models(subnet_dir) -> ModelSet:
    return ModelSet.from_score_subnet(subnet_dir / "score-subnet-all.safetensors", "cpu")


# ---- the fused step without a cluster -----------------------------------------------------------------


def test_fused_sampler_equals_in_process_guided_single_backbone(subnet_models):
    """One request driven through `fused_batch` samples what the in-process single-backbone provider samples."""
    models = subnet_models
    profile = DEFAULT_PROFILES["noisy"].with_sampler(steps=4)
    labels = torch.tensor([7, 2])
    noise = make_noise(2, models.spec, 5)
    expected = sample_mels(models, "noisy", labels, profile, noise, seed=5)
    unguided = sample_mels(models, "none", labels, profile, noise, seed=5)

    async def step(call: FusedCall):
        return fused_batch(models.denoiser.model, models.guides["noisy"], [call], models.device)[0]

    plan = GuidePlan("noisy", labels, profile.settings_for("digit"), True)
    got, run = asyncio.run(drive_sampler(noise, profile.sampler.to_config(), 5, plan, None, None, fused_answerer(step)))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert (got - unguided).abs().max() > 1e-3  # guidance changed the sample: the comparison is not vacuous
    assert run.guide_calls == run.denoiser_calls == 7 and run.last_guide_prob.shape == (2,)


def test_merged_batch_gives_each_call_its_own_result(subnet_models):
    """Calls at different sigmas, guided (plain, norm-scaled, windowed, smoothed) and unguided, in one
    backbone pass: each equals the same call run alone."""
    models = subnet_models
    g = torch.Generator().manual_seed(1)
    settings = [GuideSettings(scale=3.0), GuideSettings(scale=0.4, norm_scaling=True), None,
                GuideSettings(scale=2.0, sigma_lo=1.0, sigma_hi=5.0), GuideSettings(scale=1.0, smoothing=0.1, temperature=2.0)]
    calls = []
    for i, s in enumerate(settings):
        n = 1 + i % 2
        x = torch.randn(n, 1, models.spec.n_mels, models.spec.frames, generator=g) * 2
        sigma = torch.tensor([0.3 + 2 * i] * n)
        target = torch.tensor([(3 * i + k) % 10 for k in range(n)])
        calls.append(FusedCall(to_wire(x), to_wire(sigma), to_wire(target) if s else None, s.model_dump_json() if s else None))
    merged = fused_batch(models.denoiser.model, models.guides["noisy"], calls, models.device)
    for call, result in zip(calls, merged):
        alone = fused_batch(models.denoiser.model, models.guides["noisy"], [call], models.device)[0]
        np.testing.assert_allclose(result.denoised, alone.denoised, rtol=1e-4, atol=1e-5)
        assert (result.grad is None) == (alone.grad is None)
        if result.grad is not None:
            np.testing.assert_allclose(result.grad, alone.grad, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(result.log_prob, alone.log_prob, rtol=1e-4, atol=1e-6)
    # a gradient for every call that asked (the sigma window is the engine's business, not the deployment's)
    assert [r.grad is not None for r in merged] == [True, True, False, True, True]


# ---- the config variant -------------------------------------------------------------------------------


def test_fused_config_file_is_checked_strictly():
    from serve.config import DEFAULT_CONFIG_PATH, FUSED_CONFIG_PATH, check_config, load_config_file

    data = load_config_file(FUSED_CONFIG_PATH)
    schema = check_config(data)
    app = schema.applications[0]
    assert {d.name for d in app.deployments} == {"SpeechIngress", "Fused"} and data["applications"][0]["args"]["generator"] == "score-subnet"
    fused = next(d for d in app.deployments if d.name == "Fused")
    assert fused.max_ongoing_requests > fused.user_config["max_batch_size"] and fused.max_queued_requests > 0
    typo = copy.deepcopy(data)
    typo["applications"][0]["args"]["score_subnett"] = "x.safetensors"
    with pytest.raises(ValueError, match="score_subnett"):
        check_config(typo)
    typo = copy.deepcopy(data)
    typo["applications"][0]["deployments"][1]["user_config"]["max_batch"] = 4
    with pytest.raises(ValueError, match="max_batch"):
        check_config(typo)
    mixed = load_config_file(DEFAULT_CONFIG_PATH)
    mixed["applications"][0]["args"]["generator"] = "score-subnet"  # the split app's deployments listed
    with pytest.raises(ValueError, match="no Denoiser deployment"):
        check_config(mixed)
    for bad in ({"generator": "unet", "score_subnet": "score-subnet-3.safetensors"}, {"generator": "score-subnet", "score_subnet": "../x.safetensors"},
                {"generator": "gan"}):
        wrong = copy.deepcopy(data)
        wrong["applications"][0]["args"].update(bad)
        with pytest.raises(ValueError):
            check_config(wrong)
