"""The single-backbone generator (Makarov & Gerkmann 2026, "Repurposing a Speech Classifier for Guided
Diffusion-Based Speech Generation").

A frozen, noise-conditioned log-Mel classifier is the backbone of the denoiser. A small ScoreSubnet reads

* feature taps: the backbone's per-stage feature maps h_k(x, sigma), and
* gradient taps: d/dh_k of the JEM-style marginal log-density log p(x | sigma) ~ logsumexp_y f_y(x, sigma),

normalizes each tap per sample (their scale swings by orders of magnitude with sigma), fuses the two kinds
per scale with a gate, decodes them U-Net-decoder style back to (B, 1, n_mels, frames) and predicts the
denoised signal through EDM preconditioning: D(x, sigma) = c_skip x + c_out F(taps, c_in x, c_noise).
Only the subnet is trained (denoising score matching); the backbone's weights never change.

For conditional generation the same backbone forward serves both the score (through the subnet) and the
classifier guidance gradient grad_x log p(y | x, sigma) (through the head): `SingleBackboneProvider` in
`guidance.guides.single_backbone` answers both calls of the guided denoiser from that one pass.

A subnet model file holds the subnet's weights only, plus a reference (file name and sha256) to its backbone
file; loading verifies the hash and refuses any other backbone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from guidance.diffusion.precond import edm_coefficients
from guidance.files import file_sha256
from guidance.models.classifier import ClassifierConfig, LogMelClassifier, build_classifier
from guidance.models.layers import FiLMResBlock, NoiseEmbedding, group_norm
from guidance.models.model_file import ModelFile, config_dict, from_dict, load_model_file, read_metadata

KIND = "score-subnet"
BACKBONE_BUILDERS = {"classifier": build_classifier}  # the only kind of model file a subnet loads itself


@dataclass(frozen=True)
class ScoreSubnetConfig:
    """Shape of the subnet. `feature_channels` must equal the backbone's stage widths (one tap per stage)."""

    feature_channels: tuple[int, ...] = (16, 32, 64, 128)
    channels: tuple[int, ...] = (16, 32, 64, 96)  # decoder width per scale, full resolution first
    emb_dim: int = 64
    gradient_taps: bool = True
    input_tap: bool = True  # c_in * x added at full resolution: the fine detail the noise prediction needs
    sigma_data: float = 1.0

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.feature_channels):
            raise ValueError(f"need one decoder width per backbone stage: {self.channels} vs {self.feature_channels}")


def rms_normalize(t: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Divide each sample by its root-mean-square: taps keep their pattern, lose their sigma-dependent scale."""
    rms = t.pow(2).flatten(1).mean(1).sqrt().clamp_min(eps)
    return t / rms.view(-1, *([1] * (t.dim() - 1)))


class GatedTapFusion(nn.Module):
    """One scale: project the feature tap and the gradient tap, then add the gradient tap through a
    per-pixel, noise-dependent gate (the subnet learns where and when the gradient is informative)."""

    def __init__(self, c_tap: int, c_out: int, emb_dim: int, gradient_taps: bool) -> None:
        super().__init__()
        self.feature = nn.Conv2d(c_tap, c_out, 1)
        self.gradient = nn.Conv2d(c_tap, c_out, 1) if gradient_taps else None
        self.gate = nn.Conv2d(2 * c_out, c_out, 1) if gradient_taps else None
        self.gate_bias = nn.Linear(emb_dim, c_out) if gradient_taps else None

    def forward(self, feature: torch.Tensor, gradient: torch.Tensor | None, emb: torch.Tensor) -> torch.Tensor:
        a = self.feature(rms_normalize(feature))
        if self.gradient is None or gradient is None:
            return a
        b = self.gradient(rms_normalize(gradient))
        gate = torch.sigmoid(self.gate(torch.cat([a, b], dim=1)) + self.gate_bias(emb)[:, :, None, None])
        return a + gate * b


class ScoreSubnet(nn.Module):
    """F(taps, c_in x, c_noise): taps fused per scale, decoded coarse to fine with FiLM residual blocks."""

    def __init__(self, config: ScoreSubnetConfig = ScoreSubnetConfig()) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.embed = NoiseEmbedding(config.emb_dim)
        self.fuse = nn.ModuleList(
            GatedTapFusion(c_tap, c, config.emb_dim, config.gradient_taps) for c_tap, c in zip(config.feature_channels, ch)
        )
        self.input_proj = nn.Conv2d(1, ch[0], 3, padding=1) if config.input_tap else None
        self.blocks = nn.ModuleList()
        for k in range(len(ch) - 1, -1, -1):  # coarsest first
            c_in = ch[k] if k == len(ch) - 1 else ch[k + 1] + ch[k]
            self.blocks.append(FiLMResBlock(c_in, ch[k], config.emb_dim))
        self.out = nn.Sequential(group_norm(ch[0]), nn.SiLU(), nn.Conv2d(ch[0], 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # starts as D = c_skip x, as the U-Net does
        nn.init.zeros_(self.out[-1].bias)

    def forward(
        self, features: list[torch.Tensor], gradients: list[torch.Tensor] | None, x_in: torch.Tensor, c_noise: torch.Tensor
    ) -> torch.Tensor:
        emb = self.embed(c_noise)
        grads = gradients if gradients is not None else [None] * len(features)
        fused = [fuse(f, g, emb) for fuse, f, g in zip(self.fuse, features, grads)]
        if self.input_proj is not None:
            fused[0] = fused[0] + self.input_proj(x_in)
        h = None
        for block, k in zip(self.blocks, range(len(fused) - 1, -1, -1)):
            if h is None:
                h = block(fused[k], emb)
            else:
                up = nn.functional.interpolate(h, size=fused[k].shape[-2:], mode="nearest")
                h = block(torch.cat([up, fused[k]], dim=1), emb)
        return self.out(h)


@dataclass
class BackboneTaps:
    """One backbone pass: logits, feature taps, gradient taps (all detached), and the live graph when kept."""

    logits: torch.Tensor
    features: list[torch.Tensor]
    gradients: list[torch.Tensor] | None


def per_sample_sigma(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, device=x.device).to(x.dtype).reshape(-1)
    return sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma


class SingleBackboneModel(nn.Module):
    """Frozen backbone + trainable subnet, exposed as a Denoiser: D(x, sigma) -> x0_hat.

    `backbone_ref` ({"file", "sha256", "config"}) names the backbone file the subnet was trained on; it is
    what a model file stores instead of the backbone's weights.
    """

    def __init__(self, backbone: LogMelClassifier, subnet: ScoreSubnet, backbone_ref: dict | None = None) -> None:
        super().__init__()
        if not backbone.config.noise_conditioned:
            raise ValueError("the ScoreSubnet backbone must be a noise-conditioned classifier")
        if tuple(backbone.config.channels) != tuple(subnet.config.feature_channels):
            raise ValueError(
                f"subnet expects backbone stages {subnet.config.feature_channels}, backbone has {backbone.config.channels}"
            )
        self.backbone = backbone.eval().requires_grad_(False)
        self.subnet = subnet
        self.backbone_ref = dict(backbone_ref or {})
        self.sigma_data = subnet.config.sigma_data

    @classmethod
    def from_backbone_file(cls, path: Path, config: ScoreSubnetConfig | None = None, device: torch.device | str = "cpu") -> "SingleBackboneModel":
        """A fresh subnet on the classifier stored at `path` (the reference records its name and hash)."""
        mf = load_model_file(path, BACKBONE_BUILDERS, kind="classifier", device=device)
        backbone = mf.model
        cfg = config or ScoreSubnetConfig(feature_channels=tuple(backbone.config.channels), sigma_data=backbone.config.sigma_data)
        ref = {"file": Path(path).name, "sha256": file_sha256(Path(path)), "config": mf.config}
        return cls(backbone, ScoreSubnet(cfg), ref).to(device)

    def network_config(self) -> dict:
        """What a model file's metadata stores: the subnet's config and the backbone reference."""
        return {"subnet": config_dict(self.subnet.config), "backbone": self.backbone_ref}

    def train(self, mode: bool = True) -> "SingleBackboneModel":
        """Only the subnet ever trains: the backbone stays in eval mode (its head dropout would perturb the taps)."""
        super().train(mode)
        self.backbone.eval()
        return self

    # --- one backbone pass --------------------------------------------------------------------------------

    def backbone_graph(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, object]:
        """Backbone forward with autograd on: (x leaf, ClassifierOutput). The x leaf makes the graph exist
        although every backbone weight is frozen."""
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_(True)
            return x_leaf, self.backbone.forward_with_features(x_leaf, sigma)

    def taps_from(self, out, retain_graph: bool = False) -> BackboneTaps:
        """Feature taps and gradient taps d logsumexp_y f_y / d h_k from a backbone pass."""
        gradients = None
        if self.subnet.config.gradient_taps:
            with torch.enable_grad():
                lse = torch.logsumexp(out.logits, dim=1)
                gradients = [g.detach() for g in torch.autograd.grad(lse.sum(), out.features, retain_graph=retain_graph)]
        return BackboneTaps(out.logits.detach(), [f.detach() for f in out.features], gradients)

    def taps(self, x: torch.Tensor, sigma: torch.Tensor) -> BackboneTaps:
        _, out = self.backbone_graph(x, per_sample_sigma(sigma, x))
        return self.taps_from(out)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, taps: BackboneTaps) -> torch.Tensor:
        """D = c_skip x + c_out F(taps, c_in x, c_noise) (EDM preconditioning, Karras et al. 2022 Table 1)."""
        sigma = per_sample_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        view = (-1, 1, 1, 1)
        f = self.subnet(taps.features, taps.gradients, c_in.view(view) * x, c_noise)
        return c_skip.view(view) * x + c_out.view(view) * f

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = per_sample_sigma(sigma, x)
        return self.denoise(x, sigma, self.taps(x, sigma))

    # --- model files ------------------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Only the subnet's weights go into a model file; the backbone is referenced, never copied."""
        return self.subnet.state_dict()

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], path: Path, spec=None) -> None:
        """Load the subnet's weights and the referenced backbone, found next to `path` (else in
        $SPEECHGUIDE_MODELS), after checking its sha256."""
        self.subnet.load_state_dict(tensors)
        backbone = resolve_backbone(self.backbone_ref, Path(path))
        self.attach_backbone(backbone, Path(path), spec)

    def attach_backbone(self, backbone_path: Path, subnet_path: Path | None = None, spec=None) -> None:
        """Load the backbone weights from `backbone_path`, refusing a file whose hash differs from the reference."""
        expected = self.backbone_ref.get("sha256")
        actual = file_sha256(backbone_path)
        if actual != expected:
            owner = f"{subnet_path}" if subnet_path else "this ScoreSubnet"
            raise ValueError(
                f"backbone mismatch: {owner} was trained on {self.backbone_ref.get('file')} with sha256 {str(expected)[:16]}..., "
                f"but {backbone_path} has sha256 {actual[:16]}...; refusing to run the subnet on another backbone"
            )
        mf = load_model_file(backbone_path, BACKBONE_BUILDERS, expected_spec=spec, kind="classifier")
        self.backbone.load_state_dict(mf.model.state_dict())
        self.backbone.eval().requires_grad_(False)


def resolve_backbone(ref: dict, subnet_path: Path) -> Path:
    """The referenced backbone file: beside the subnet file first, then in $SPEECHGUIDE_MODELS."""
    name = ref.get("file")
    if not name:
        raise ValueError(f"{subnet_path} has no backbone reference")
    candidates = [subnet_path.parent / name]
    if os.environ.get("SPEECHGUIDE_MODELS"):
        candidates.append(Path(os.environ["SPEECHGUIDE_MODELS"]) / name)
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"backbone {name} of {subnet_path} not found (looked in {', '.join(str(c.parent) for c in candidates)})")


def build_single_backbone(cfg: dict) -> SingleBackboneModel:
    """MODEL_BUILDERS entry: the architecture from the metadata; weights come from load_checkpoint_state."""
    backbone_cfg = from_dict(ClassifierConfig, dict(cfg["backbone"]["config"]))
    subnet_cfg = from_dict(ScoreSubnetConfig, dict(cfg["subnet"]))
    return SingleBackboneModel(LogMelClassifier(backbone_cfg), ScoreSubnet(subnet_cfg), cfg["backbone"])


def load_score_subnet(path: Path, backbone: Path | None = None, device: torch.device | str = "cpu") -> ModelFile:
    """Load a subnet file; `backbone` overrides where its backbone is looked for (the hash is checked either way)."""
    if backbone is None:
        return load_model_file(path, {KIND: build_single_backbone}, kind=KIND, device=device)
    from safetensors.torch import load_file

    from guidance.features import FeatureSpec

    meta = read_metadata(path)
    if meta["kind"] != KIND:
        raise ValueError(f"{path} holds a {meta['kind']!r} model, expected {KIND!r}")
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    model = build_single_backbone(meta["config"])
    model.subnet.load_state_dict(load_file(str(path)))
    model.attach_backbone(Path(backbone), Path(path), spec)
    model.to(device).eval()
    return ModelFile(model, KIND, meta["config"], spec, meta.get("labels", []), meta.get("task", ""), meta.get("card", {}), Path(path))
