"""The single-backbone generator: the backbone stays frozen while the subnet trains, its shared-pass guide
gradient is the true gradient, model files carry only the subnet and refuse any other backbone."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from guidance.data import DIGITS
from guidance.diffusion import EDMLoss
from guidance.features import FeatureSpec
from guidance.guides import ClassifierGuide, GuidedDenoiser, GuideSettings, GuideTerm
from guidance.models import ClassifierConfig, LogMelClassifier, load_model, save_model
from guidance.models.checkpoint import MODEL_BUILDERS, config_dict
from guidance.guides.engine import GradientCall
from guidance.guides.single_backbone import SingleBackboneProvider, shares_backbone
from guidance.models.score_subnet import (
    ScoreSubnet,
    ScoreSubnetConfig,
    SingleBackboneModel,
    load_score_subnet,
)

TINY_CLS = ClassifierConfig(channels=(4, 8), emb_dim=8, noise_conditioned=True, dropout=0.0)
TINY_SUB = ScoreSubnetConfig(feature_channels=(4, 8), channels=(4, 8), emb_dim=8)
SPEC = FeatureSpec(mean=-7.2, std=5.8)


def _backbone_file(path: Path, seed: int = 1) -> Path:
    torch.manual_seed(seed)
    return save_model(path, LogMelClassifier(TINY_CLS), "classifier", config_dict(TINY_CLS), SPEC, DIGITS, "digit")


def _model(tmp_path: Path, dtype: torch.dtype = torch.float32) -> SingleBackboneModel:
    model = SingleBackboneModel.from_backbone_file(_backbone_file(tmp_path / "backbone.safetensors"), TINY_SUB)
    with torch.no_grad():  # the zero-initialised output layer would make D trivially linear in x
        for p in model.subnet.out.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.to(dtype)


def test_registered_kind_and_small_subnet():
    assert "score-subnet" in MODEL_BUILDERS
    unet_trainable = 1_239_793  # the committed U-Net denoiser's parameter count
    subnet = ScoreSubnet(ScoreSubnetConfig())
    assert sum(p.numel() for p in subnet.parameters()) <= 0.4 * unet_trainable


def test_training_steps_leave_the_backbone_bit_identical(tmp_path):
    torch.manual_seed(0)
    model = _model(tmp_path)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt = torch.optim.Adam(model.subnet.parameters(), lr=1e-2)
    loss_fn = EDMLoss()
    y = torch.randn(4, 1, 16, 16)
    model.train()
    assert not model.backbone.training  # dropout etc. off: the taps are a fixed function of (x, sigma)
    for step in range(3):
        loss = loss_fn(model, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            assert all(p.grad is None for p in model.backbone.parameters())
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.subnet.parameters())
        opt.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_subnet_trainer_freezes_backbone_and_trains_only_the_subnet(tmp_path):
    """The training role's own step, on a few fake clips: backbone unchanged, subnet changed."""
    from guidance.data import FeatureSet
    from guidance.training import TRAIN_DEFAULTS, _ScoreSubnetTrainer

    path = _backbone_file(tmp_path / "backbone.safetensors")
    cfg = dataclasses.replace(TRAIN_DEFAULTS["score-subnet"], steps=2, batch_size=4, backbone=str(path), digits=(0, 1))
    g = torch.Generator().manual_seed(0)
    data = FeatureSet(torch.randn(12, 1, 16, 16, generator=g), torch.arange(12) % 3, torch.zeros(12, dtype=torch.long), torch.zeros(12, dtype=torch.long))
    trainer = _ScoreSubnetTrainer("score-subnet", cfg, SPEC, data, data, torch.device("cpu"), g, -2.0, TINY_SUB, None)
    assert len(trainer.x) == 8 and trainer.card_extra["digits"] == [0, 1]
    backbone = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    subnet = {k: v.clone() for k, v in trainer.model.subnet.state_dict().items()}
    trainer.step_count = 300  # past the warm-up, so the step has a non-zero learning rate
    for _ in range(2):
        trainer.step()
    assert all(torch.equal(backbone[k], v) for k, v in trainer.model.backbone.state_dict().items())
    assert any(not torch.equal(subnet[k], v) for k, v in trainer.model.subnet.state_dict().items())
    assert {id(p) for g in trainer.opt.param_groups for p in g["params"]} == {id(p) for p in trainer.model.subnet.parameters()}
    assert "mse_unseen_sigma1" in trainer.evaluate()


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 16, generator=g, dtype=torch.float64) * 2
    sigma = torch.tensor([0.7, 2.0], dtype=torch.float64)
    return x, sigma, torch.tensor([3, 8]), torch.randn(x.shape, generator=g, dtype=torch.float64)


def single_backbone(model: SingleBackboneModel, terms: list[GuideTerm]) -> GuidedDenoiser:
    """The guided denoiser with the single-backbone model as its provider (one backbone pass per call)."""
    return GuidedDenoiser(model, terms, SingleBackboneProvider(model))


@pytest.mark.parametrize("settings", [GuideSettings(scale=1.0), GuideSettings(scale=2.0, temperature=2.5)])
def test_shared_pass_guide_gradient_matches_finite_differences(tmp_path, settings):
    model = _model(tmp_path, torch.float64).eval()
    x, sigma, target, direction = _inputs()
    guide = ClassifierGuide(model.backbone, DIGITS)
    term = GuideTerm(guide, target, settings)
    guided = single_backbone(model, [term])
    assert shares_backbone(model, GradientCall(0, term, x, sigma, "x_t", x))
    delta = guided(x, sigma) - model(x, sigma).detach()
    grad = delta / (settings.scale * sigma.view(-1, 1, 1, 1) ** 2)  # delta = scale * sigma^2 * grad log p(y|x)

    temperature = settings.temperature_at(sigma)

    def objective(z: torch.Tensor) -> float:
        return float(guide.log_prob(z, sigma, target, temperature).sum())

    eps = 1e-6
    numeric = (objective(x + eps * direction) - objective(x - eps * direction)) / (2 * eps)
    analytic = float((grad * direction).sum())
    assert math.isclose(analytic, numeric, rel_tol=1e-5, abs_tol=1e-8), (analytic, numeric)


@pytest.mark.parametrize(
    "settings",
    [GuideSettings(scale=3.0), GuideSettings(scale=0.4, norm_scaling=True), GuideSettings(scale=2.0, sigma_lo=1.0, sigma_hi=5.0)],
)
def test_single_backbone_equals_two_pass_guided_denoiser(tmp_path, settings):
    """Sharing the backbone pass changes the cost, never the result."""
    model = _model(tmp_path, torch.float64).eval()
    x, sigma, target, _ = _inputs()
    term = GuideTerm(ClassifierGuide(model.backbone, DIGITS), target, settings)
    torch.testing.assert_close(single_backbone(model, [term])(x, sigma), GuidedDenoiser(model, [term])(x, sigma))


def test_one_backbone_forward_per_guided_call(tmp_path):
    model = _model(tmp_path).eval()
    calls = []
    model.backbone.stem.register_forward_hook(lambda *a: calls.append(1))  # the first layer of every backbone pass
    x, sigma, target, _ = _inputs()
    term = GuideTerm(ClassifierGuide(model.backbone, DIGITS), target, GuideSettings(scale=3.0))
    single_backbone(model, [term])(x.float(), sigma.float())
    assert len(calls) == 1
    calls.clear()
    GuidedDenoiser(model, [term])(x.float(), sigma.float())
    assert len(calls) == 2


def test_model_file_holds_only_the_subnet_and_round_trips(tmp_path):
    model = _model(tmp_path).eval()
    path = save_model(tmp_path / "subnet.safetensors", model, "score-subnet", model.network_config(), SPEC, DIGITS, "digit")
    from safetensors.torch import load_file

    assert set(load_file(str(path))) == set(model.subnet.state_dict())
    loaded = load_model(path, expected_spec=SPEC, kind="score-subnet").model
    x, sigma, _, _ = _inputs()
    torch.testing.assert_close(loaded(x.float(), sigma.float()), model(x.float(), sigma.float()))


def test_wrong_backbone_is_refused(tmp_path):
    model = _model(tmp_path)
    path = save_model(tmp_path / "subnet.safetensors", model, "score-subnet", model.network_config(), SPEC, DIGITS, "digit")
    other = _backbone_file(tmp_path / "other.safetensors", seed=7)
    with pytest.raises(ValueError, match="backbone mismatch"):
        load_score_subnet(path, backbone=other)
    other.replace(tmp_path / "backbone.safetensors")  # same name as the reference, different weights
    with pytest.raises(ValueError, match="backbone mismatch"):
        load_model(path)
    (tmp_path / "backbone.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="backbone"):
        load_model(path)


def _subnet_models_dir(tiny_models_dir: Path, tmp_path: Path) -> Path:
    """The tiny models directory plus a tiny ScoreSubnet on its noise-conditioned classifier."""
    import shutil

    from guidance.models import read_metadata

    directory = tmp_path / "models"
    shutil.copytree(tiny_models_dir, directory)
    backbone = directory / "classifier-noisy.safetensors"
    meta = read_metadata(backbone)
    cfg = ScoreSubnetConfig(feature_channels=tuple(meta["config"]["channels"]), channels=(8, 16), emb_dim=8)
    torch.manual_seed(0)
    model = SingleBackboneModel.from_backbone_file(backbone, cfg)
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    save_model(directory / "score-subnet-all.safetensors", model, "score-subnet", model.network_config(), spec, DIGITS, "digit")
    return directory


def test_generate_with_score_subnet_and_refusals(tiny_models_dir, tmp_path, capsys, monkeypatch):
    import json

    from cli_run import run_in_process

    models = _subnet_models_dir(tiny_models_dir, tmp_path)
    out = tmp_path / "out"
    code, err = run_in_process(["generate", "--generator", "score-subnet", "--target", "digit=3", "--num", "1", "--steps", "3",
                                "--out", out, "--models-dir", models], capsys, monkeypatch)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["request"]["generator"] == "score-subnet" and manifest["models"]["denoiser"]["name"] == "score-subnet-all"
    assert (out / "3_000.wav").stat().st_size > 1000
    _backbone_file(models / "classifier-noisy.safetensors")  # another classifier under the referenced name
    bad = [
        ["--generator", "magic"],
        ["--generator", "score-subnet", "--guide", "clean"],
        ["--subnet", str(models / "score-subnet-all.safetensors")],
        ["--generator", "score-subnet"],  # the backbone beside it no longer matches the recorded hash
    ]
    for extra in bad:
        code, err = run_in_process(["generate", "--target", "digit=3", "--steps", "2", "--out", tmp_path / "bad", "--models-dir", models, *extra], capsys, monkeypatch)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("speechguide: error:"), (extra, err)
    assert "backbone mismatch" in lines[0]


@pytest.mark.slow
def test_evaluation_adds_subnet_systems_with_costs(tiny_models_dir, tmp_path, fsdd_root):
    from guidance.evaluation import EvalConfig, evaluate
    from guidance.models import load_model
    from guidance.pipeline import ModelPaths, ModelSet

    models_dir = _subnet_models_dir(tiny_models_dir, tmp_path)
    models = ModelSet.load(ModelPaths(root=models_dir), "cpu")
    subnet = ModelSet.from_score_subnet(models_dir / "score-subnet-all.safetensors", "cpu")
    judge = load_model(models_dir / "judge-digit.safetensors", kind="judge")
    cfg = EvalConfig(per_class=1, noisy_scales=[3.0], clean_scales=[0.3], subnet_scales=[3.0], steps=2, split="val")
    report = evaluate(models, judge, None, cfg, tmp_path / "eval", data_root=str(fsdd_root), subnets={"all": subnet})
    systems = {s["name"]: s for s in report["systems"]}
    assert list(systems) == ["unconditional", "noisy@3", "clean@0.3", "subnet-uncond", "subnet-guided@3"]
    sub, guided = systems["subnet-uncond"], systems["subnet-guided@3"]
    assert sub["generator"] == "score-subnet" and sub["params_trainable"] < sub["params_total"]
    assert guided["params_total"] == sub["params_total"]  # the guide is the backbone: counted once
    assert guided["macs_per_eval"] > sub["macs_per_eval"] > 0  # the guide's backward pass is counted
    unet, noisy = systems["unconditional"], systems["noisy@3"]
    assert noisy["params_trainable"] == noisy["params_total"] > unet["params_total"]
    assert all(s["peak_memory_mb"] >= 0 and s["seconds_per_sample"] > 0 for s in systems.values())
    assert "## Cost" in (tmp_path / "eval" / "report.md").read_text()


COMMITTED = {"score-subnet-all": None, "score-subnet-3": [0, 1, 2], "score-subnet-1": [0]}


@pytest.mark.parametrize("name", list(COMMITTED))
def test_committed_subnets_reference_the_committed_backbone(name):
    from guidance.models import read_metadata
    from guidance.files import file_sha256
    from guidance.pipeline import ModelPaths

    paths = ModelPaths()
    path = paths.root / f"{name}.safetensors"
    if name != "score-subnet-all" and not path.exists():
        pytest.skip(f"{path.name} not trained")
    meta = read_metadata(path)
    ref = meta["config"]["backbone"]
    assert ref["file"] == paths.noisy_classifier and ref["sha256"] == file_sha256(paths.path("noisy_classifier"))
    assert path.stat().st_size < 4 * 2**20  # subnet weights only
    assert meta["card"]["digits"] == (COMMITTED[name] or list(range(10)))
    assert meta["card"]["trainable_parameters"] <= 0.4 * read_metadata(paths.path("denoiser"))["card"]["parameters"]
    model = load_model(path, kind="score-subnet").model
    x = torch.randn(2, 1, 64, 64)
    assert torch.isfinite(model(x, torch.tensor([0.5, 5.0]))).all()
