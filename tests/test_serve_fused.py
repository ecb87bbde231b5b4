"""The fused single-backbone app: a ScoreSubnet served by ONE deployment that returns the guided x0_hat.

The step math (`serve.fused`) is checked against the in-process the in-process single-backbone provider without a cluster,
merged batches included; then a real local Ray cluster runs serve/config-fused.yaml (a tiny subnet on the
tiny noise-conditioned classifier) and real HTTP requests must come back as the in-process sampler's audio.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
import torch
from serve_app import running_app

from guidance.guides import DEFAULT_PROFILES, GuidanceProfile, GuideSettings
from guidance.pipeline import ModelSet, make_noise, sample_mels, vocode
from serve.fused import FusedCall, fused_answerer, fused_batch
from serve.steps import GuidePlan, drive_sampler, to_wire

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

APP = "speechguide"
# sigma_max 1: the tiny random models' samples stay small enough for Griffin-Lim to give finite audio
# (from sigma 80 they blow up and the WAVs come out silent, which would make any comparison vacuous).
PROFILE = {"name": "fused-test", "sampler": {"sigma_max": 1.0}, "guide": {"scale": 20.0}}  # strong: tiny models, small sigmas
VALID = {"targets": [{"guide": "digit", "label": "7"}], "num_samples": 1, "seed": 3, "steps": 3, "profile": PROFILE}


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


def _in_process(models: ModelSet, label: int, seed: int, steps: int, scale: float | None = None, n: int = 1) -> torch.Tensor:
    profile = GuidanceProfile.model_validate(PROFILE).with_sampler(steps=steps)
    if scale is not None:
        profile = profile.with_guide(scale=scale)
    return sample_mels(models, "noisy", torch.tensor([label] * n), profile, make_noise(n, models.spec, seed), seed=seed)


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


# ---- the app on a real local Ray cluster --------------------------------------------------------------


@pytest.fixture(scope="module")
def fused_url(subnet_dir):
    from serve.config import FUSED_CONFIG_PATH

    with running_app(FUSED_CONFIG_PATH, models_dir=subnet_dir) as url:
        yield url


@pytest.fixture(scope="module")
def client(fused_url):
    with httpx.Client(base_url=fused_url, timeout=120) as c:
        yield c


def _wav_samples(data: bytes) -> np.ndarray:
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    wave, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert rate == 16000 and len(wave) > 0.9 * 16000
    return wave.astype(int)


def _local_wav(models: ModelSet, label: int, seed: int, steps: int, scale: float | None = None) -> np.ndarray:
    """The in-process the in-process single-backbone provider sample, vocoded and encoded as the app does."""
    from serve.ingress import wav_bytes

    mels = _in_process(models, label, seed, steps, scale)
    return _wav_samples(wav_bytes(vocode(mels, models.vocoder).numpy()[0], 16000))


@pytest.mark.slow
def test_fused_app_serves_the_in_process_guided_sample(client, subnet_models):
    r = client.post("/v1/generate", json=VALID, headers={"Accept": "audio/wav"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    served = _wav_samples(r.content)
    err = np.abs(served - _local_wav(subnet_models, 7, 3, 3))
    # Same log-Mels up to float rounding (compared exactly below); Griffin-Lim amplifies rounding to a
    # few LSB at single points (seen: 2 to 6 of 32767).
    assert err.max() <= 64 and err.mean() <= 2, (err.max(), err.mean())
    assert np.abs(served).max() > 1000  # real audio, not a silent file
    assert np.abs(served - _local_wav(subnet_models, 7, 3, 3, scale=0.0)).max() > 20  # guidance reached the audio
    scores = json.loads(r.headers["x-speechguide-scores"])
    assert 0 <= scores["guide_target_probability"] <= 1 and "guide_last_step_probability" in scores


@pytest.mark.slow
def test_concurrent_requests_merge_into_shared_passes_and_keep_their_results(fused_url, subnet_models):
    """Four requests at once (different seeds, digits and step counts, so different sigmas meet in a
    batch; one unguided): each answer is its own in-process sample, and forwards served several calls."""
    from ray import serve

    handle = serve.get_deployment_handle("Fused", app_name=APP)
    handle.reset_stats.remote().result(timeout_s=30)
    payloads = [{**VALID, "seed": 10 + i, "steps": 4 + i, "targets": [{"guide": "digit", "label": str(i)}]} for i in range(4)]
    payloads[3]["guidance_scale"] = 0.0

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=fused_url, timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/generate", json=p) for p in payloads))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    for i, (p, r) in enumerate(zip(payloads, responses)):
        body = r.json()
        served = _wav_samples(base64.b64decode(body["samples"][0]["wav_base64"]))
        local = _local_wav(subnet_models, i, p["seed"], p["steps"], p.get("guidance_scale"))
        # Merged with other rows, a forward rounds differently than alone; the sampler and Griffin-Lim
        # amplify that a little (seen: up to 34 LSB at single sample points, mean 0.3 to 0.52), far below what
        # guidance changes; the log-Mels themselves are compared exactly in the next test.
        err = np.abs(served - local)
        assert err.max() <= 64 and err.mean() <= 2 and np.abs(served).max() > 1000, (i, err.max(), err.mean())
        if i < 3:
            unguided = np.abs(served - _local_wav(subnet_models, i, p["seed"], p["steps"], 0.0)).mean()
            assert unguided > 10 * err.mean() + 0.5, (i, unguided, err.mean())
        calls = 2 * p["steps"] - 1
        assert body["stats"]["denoiser_calls"] == calls
        assert body["stats"]["guide_calls"] == (0 if i == 3 else calls)
        assert body["models"]["generator"] == "score-subnet"
    stats = handle.stats.remote().result(timeout_s=30)
    assert stats["items"] == sum(2 * p["steps"] - 1 for p in payloads) and stats["batches"] < stats["items"], stats


@pytest.mark.slow
def test_deployment_steps_of_concurrent_samplers_equal_in_process(fused_url, subnet_models):
    """Four samplers driven concurrently through the running Fused deployment's handle (their steps
    merged into shared passes) end at the log-Mels the in-process single-backbone provider samples for each, allclose."""
    from ray import serve

    handle = serve.get_deployment_handle("Fused", app_name=APP)
    handle.reset_stats.remote().result(timeout_s=30)
    base = GuidanceProfile.model_validate(PROFILE)
    jobs = [(d, 20 + d, 3 + d, 20.0 if d != 2 else 0.0) for d in range(4)]  # label, seed, steps, scale

    async def step(call: FusedCall):
        return await handle.step.remote(call)

    async def one(label: int, seed: int, steps: int, scale: float) -> torch.Tensor:
        prof = base.with_sampler(steps=steps).with_guide(scale=scale)
        plan = GuidePlan("noisy", torch.tensor([label]), prof.settings_for("digit"), True) if scale > 0 else None
        mels, _ = await drive_sampler(make_noise(1, subnet_models.spec, seed), prof.sampler.to_config(), seed, plan,
                                      None, None, fused_answerer(step))
        return mels

    async def run_all() -> list[torch.Tensor]:
        return await asyncio.gather(*(one(*job) for job in jobs))

    served = asyncio.run(run_all())
    for (label, seed, steps, scale), got in zip(jobs, served):
        torch.testing.assert_close(got, _in_process(subnet_models, label, seed, steps, scale), rtol=1e-4, atol=1e-4)
    stats = handle.stats.remote().result(timeout_s=30)
    assert stats["max_items_per_batch"] >= 2 and stats["batches"] < stats["items"], stats


@pytest.mark.slow
def test_fused_models_and_health(client):
    body = client.get("/v1/models").json()
    assert body["generator"] == "score-subnet"
    (den,) = body["denoisers"]
    assert den["kind"] == "score-subnet" and den["fused"] is True and den["backbone"]["file"] == "classifier-noisy.safetensors"
    assert [g["guide_kind"] for g in body["guides"]] == ["noisy"] and body["guides"][0]["noise_conditioned"]
    assert body["guides"][0]["version"] == den["backbone"]["version"]
    h = client.get("/healthz")
    assert h.status_code == 200 and h.json()["deployments"] == {"Fused": "ok"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "body, status, field",
    [
        ({**VALID, "guide_kind": "clean"}, 422, "guide_kind"),
        ({**VALID, "guide_model": "classifier-clean@production"}, 422, "guide_model"),
        ({**VALID, "targets": [{"guide": "digit", "label": "12"}]}, 404, "targets.0.label"),
        ({**VALID, "steps": 0}, 422, "steps"),
        ({**VALID, "guidance_scale": -1.0}, 422, "guidance_scale"),
    ],
    ids=["clean guide", "registry guide", "unknown label", "steps 0", "negative scale"],
)
def test_fused_bad_input_gets_a_4xx(client, body, status, field):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["detail"]


@pytest.mark.slow
def test_still_serves_after_bad_input(client):
    r = client.post("/v1/generate", json={**VALID, "seed": 9}, headers={"Accept": "audio/wav"})
    assert r.status_code == 200 and r.content[:4] == b"RIFF"


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
