"""Training loops for every model the project ships: denoiser, clean and noise-conditioned
classifiers, judges. Each loop is seeded, shows a progress bar, logs to the tracker it is given (the CLI
passes MLflow's, `mlops.tracking.tracked_run`; none by default) and writes one safetensors model file
with its feature spec and a model card of measured figures.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch

from guidance.data import DIGITS, FSDD_SPEAKERS, FeatureSet, fsdd_features, fsdd_vocoded_features
from guidance.device import pick_device
from guidance.diffusion import EDMLoss, EDMPrecond
from guidance.diffusion.schedule import SIGMA_MAX, SIGMA_MIN
from guidance.features import FeatureSpec
from guidance.models import (
    ClassifierConfig,
    JudgeConfig,
    LogMelClassifier,
    TDNNJudge,
    UNet,
    UNetConfig,
    count_parameters,
    load_model,
    save_model,
)
from guidance.models.checkpoint import config_dict
from guidance.run_log import OpenRun, no_run
from guidance.train_common import Batches, update_ema

ModelRole = Literal["denoiser", "classifier", "noisy-classifier", "judge", "score-subnet", "vocoder"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; `TRAIN_DEFAULTS` holds the defaults per model role."""

    steps: int
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    ema_decay: float = 0.0
    eval_every: int = 250
    max_shift: int = 6
    gain_db: float = 6.0
    feature_noise: float = 0.0
    spec_mask: bool = False
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    task: Literal["digit", "speaker"] = "digit"
    backbone: str | None = None  # score-subnet: the frozen noise-conditioned classifier file
    digits: tuple[int, ...] | None = None  # score-subnet: the digits its training data is limited to (None: all)
    vocoders: tuple[str, ...] = ("griffin-lim",)  # judges: whose round trips of the training clips they also hear
    models_dir: str | None = None  # judges: where the neural vocoder file is read from (default: models/)


TRAIN_DEFAULTS: dict[str, TrainConfig] = {
    # The committed U-Net: 8000 steps at batch 128 took 414 s on an H200 shared with three other runs
    # (several CPU-hours on 2 cores). Validation MSE at sigma 1: 0.0125 (4000 steps at batch 32: 0.0156).
    "denoiser": TrainConfig(steps=8000, batch_size=128, lr=1e-3, ema_decay=0.9995, max_shift=4, gain_db=3.0, eval_every=500),
    "classifier": TrainConfig(steps=1500, lr=2e-3, weight_decay=1e-4, feature_noise=0.1, seed=1),
    "noisy-classifier": TrainConfig(steps=3000, lr=2e-3, weight_decay=1e-4, seed=2, eval_every=500),
    "judge": TrainConfig(steps=2000, lr=2e-3, weight_decay=1e-4, feature_noise=0.1, spec_mask=True, seed=1234),
    # As many steps as the U-Net denoiser, so FD compares at equal optimisation steps (~50 CPU-minutes).
    "score-subnet": TrainConfig(steps=4000, lr=2e-3, ema_decay=0.998, max_shift=4, gain_db=3.0, eval_every=250, seed=5),
    # Waveform augmentation: random crops at any sample offset, gain_db downwards only, feature_noise the largest
    # noise level. ~0.2 s per step on one CPU thread (run with OMP_NUM_THREADS=1 on a shared 2-core machine).
    "vocoder": TrainConfig(steps=14000, batch_size=16, lr=1e-3, weight_decay=1e-4, ema_decay=0.999, gain_db=12.0, feature_noise=0.1, eval_every=1000, seed=7),
}


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, floor: float) -> torch.Tensor:
    """Random time shift (filled with silence), gain, feature noise and optional SpecAugment masks."""
    b = x.shape[0]
    if cfg.max_shift:
        shifts = torch.randint(-cfg.max_shift, cfg.max_shift + 1, (b,), generator=gen)
        out = torch.full_like(x, floor)
        for i, s in enumerate(shifts.tolist()):
            if s >= 0:
                out[i, ..., s:] = x[i, ..., : x.shape[-1] - s]
            else:
                out[i, ..., :s] = x[i, ..., -s:]
        x = out
    if cfg.gain_db:
        gain = (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * cfg.gain_db
        x = torch.maximum(x + gain * _log_db, torch.full_like(x, floor))
    if cfg.feature_noise:
        x = x + cfg.feature_noise * torch.randn(x.shape, generator=gen)
    if cfg.spec_mask:
        for i in range(b):
            f0 = int(torch.randint(0, x.shape[2] - 8, (1,), generator=gen))
            t0 = int(torch.randint(0, x.shape[3] - 8, (1,), generator=gen))
            x[i, :, f0 : f0 + int(torch.randint(0, 8, (1,), generator=gen))] = floor
            x[i, :, :, t0 : t0 + int(torch.randint(0, 8, (1,), generator=gen))] = floor
    return x


_log_db = math.log(10) / 10  # one dB of power in natural-log units, before normalisation


def log_uniform_sigma(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return torch.exp(torch.rand(n, generator=gen) * (math.log(hi) - math.log(lo)) + math.log(lo))


@dataclass
class TrainResult:
    path: Path
    card: dict
    run_id: str | None


def _labels_for(task: str) -> list[str]:
    return DIGITS if task == "digit" else FSDD_SPEAKERS


def _targets(data: FeatureSet, task: str) -> torch.Tensor:
    return data.digits if task == "digit" else data.speakers


@torch.no_grad()
def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        correct += (fn(x[i : i + batch]).argmax(-1).cpu() == y[i : i + batch]).sum().item()
    return correct / max(len(x), 1)


def train(
    role: ModelRole,
    spec: FeatureSpec,
    out: Path,
    cfg: TrainConfig | None = None,
    data_root: str | None = None,
    tracker: OpenRun | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    network_config: object | None = None,
) -> TrainResult:
    """Train one model on the FSDD training split (validation takes for model selection) and save it.

    `tracker` opens the run that params, metrics and the model file are logged to (none: not logged);
    `progress(step, steps, status)` is told about every step (the CLI draws a bar with it)."""
    cfg = cfg or TRAIN_DEFAULTS[role]
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = pick_device()
    train_set = fsdd_features("train", spec, root=data_root)
    val_set = fsdd_features("val", spec, root=data_root)
    floor = (math.log(spec.log_floor) - spec.mean) / spec.std
    builders = {
        "denoiser": _denoiser_trainer,
        "classifier": _classifier_trainer,
        "noisy-classifier": _classifier_trainer,
        "judge": _judge_trainer,
        "score-subnet": _score_subnet_trainer,
        "vocoder": _vocoder_trainer,
    }
    trainer = builders[role](role, cfg, spec, train_set, val_set, device, gen, floor, network_config, data_root)
    params = {"role": role, **dataclasses.asdict(cfg), "network": trainer.network_config, "device": str(device)}
    started = time.time()
    open_run = tracker or no_run
    with open_run("speechguide-train", f"train-{role}", params) as run:
        metrics: dict[str, float] = {}
        for step in range(1, cfg.steps + 1):
            loss = trainer.step()
            if step % 25 == 0:
                run.log_metrics({"train_loss": loss}, step=step)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                metrics = trainer.evaluate()
                run.log_metrics(metrics, step=step)
                if step < cfg.steps:  # a checkpoint at every evaluation: an interrupted run leaves a usable model
                    partial = {**_card(role, cfg, device, started, trainer, metrics), "train_steps": step, "partial": True}
                    save_model(out, trainer.final_model(), trainer.kind, trainer.network_config, spec, trainer.labels, trainer.task, partial)
            if progress is not None:
                progress(step, cfg.steps, f"loss {loss:.4f} " + " ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        model = trainer.final_model()
        card = _card(role, cfg, device, started, trainer, metrics)
        path = save_model(out, model, trainer.kind, trainer.network_config, spec, trainer.labels, trainer.task, card)
        run.log_metrics({"parameters": card["parameters"], "train_seconds": card["train_seconds"]})
        run.log_artifact(path)
        return TrainResult(path, card, run.run_id)


def _card(role: str, cfg: TrainConfig, device: torch.device, started: float, trainer, metrics: dict) -> dict:
    """The model card stored in the model file: how it was trained and what it measured."""
    return {
        "role": role,
        "train_steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "train_seconds": round(time.time() - started, 1),
        "device": str(device),
        "parameters": count_parameters(trainer.final_model()),
        "data": "FSDD training takes 10-49 (validation takes 5-9 held out, test takes 0-4 never used)",
        **{f"val_{k}": round(v, 4) for k, v in metrics.items()},
        **getattr(trainer, "card_extra", {}),
    }


class _DenoiserTrainer:
    kind, labels, task = "denoiser-unet", [], "denoiser"

    def __init__(self, role, cfg, spec, train_set, val_set, device, gen, floor, network_config, data_root) -> None:
        net_cfg = network_config or UNetConfig()
        self.network_config = {**config_dict(net_cfg), "sigma_data": 1.0}
        self.model = EDMPrecond(UNet(net_cfg), sigma_data=1.0).to(device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.loss = EDMLoss(sigma_data=1.0)
        self.cfg, self.gen, self.floor, self.device = cfg, gen, floor, device
        self.x, self.val = train_set.mels, val_set.mels
        self.batches = Batches(len(self.x), cfg.batch_size, gen)
        self.step_count = 0

    def step(self) -> float:
        self.model.train()
        x = augment(self.x[self.batches.next()].clone(), self.cfg, self.gen, self.floor).to(self.device)
        loss = self.loss(self.model, x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.step_count += 1
        warm = min(1.0, self.step_count / 200)
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr * warm
        self.opt.step()
        update_ema(self.ema, self.model, self.step_count, self.cfg.ema_decay)
        return loss.item()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation denoising error (per-element MSE of x0_hat) of the EMA model at fixed sigmas."""
        gen = torch.Generator().manual_seed(0)
        val = self.val[:256].to(self.device)
        out = {}
        for sigma in (0.1, 1.0, 10.0):
            noise = torch.randn(val.shape, generator=gen).to(self.device)
            d = self.ema(val + sigma * noise, torch.full((len(val),), sigma, device=self.device))
            out[f"mse_sigma{sigma:g}"] = ((d - val) ** 2).mean().item()
        return out

    def final_model(self) -> torch.nn.Module:
        return self.ema


class _ClassifierTrainer:
    kind = "classifier"

    def __init__(self, role, cfg, spec, train_set, val_set, device, gen, floor, network_config, data_root) -> None:
        self.noisy = role == "noisy-classifier"
        self.task = cfg.task
        self.labels = _labels_for(cfg.task)
        net_cfg = network_config or self.default_network(spec)
        self.network_config = config_dict(net_cfg)
        self.model = self.build(net_cfg).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=cfg.lr, total_steps=cfg.steps)
        self.cfg, self.gen, self.floor, self.device = cfg, gen, floor, device
        self.x, self.y = self.training_data(train_set, spec, data_root)
        self.val_x, self.val_y = val_set.mels, _targets(val_set, cfg.task)
        self.batches = Batches(len(self.x), cfg.batch_size, gen)

    def default_network(self, spec: FeatureSpec) -> ClassifierConfig:
        return ClassifierConfig(num_classes=len(self.labels), noise_conditioned=self.noisy)

    def build(self, net_cfg) -> torch.nn.Module:
        return LogMelClassifier(net_cfg)

    def training_data(self, train_set: FeatureSet, spec: FeatureSpec, data_root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        return train_set.mels, _targets(train_set, self.task)

    def step(self) -> float:
        self.model.train()
        idx = self.batches.next()
        x = augment(self.x[idx].clone(), self.cfg, self.gen, self.floor)
        sigma = None
        if self.noisy:
            sigma = log_uniform_sigma(len(x), self.cfg.sigma_min, self.cfg.sigma_max, self.gen)
            x = x + sigma.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=self.gen)
            sigma = sigma.to(self.device)
        logits = self.model(x.to(self.device), sigma) if self.noisy else self.model(x.to(self.device))
        loss = torch.nn.functional.cross_entropy(logits, self.y[idx].to(self.device), label_smoothing=0.05)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return loss.item()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        if not self.noisy:
            return {"accuracy": accuracy(lambda x: self.model(x.to(self.device)), self.val_x, self.val_y)}
        gen = torch.Generator().manual_seed(0)
        out = {}
        for sigma in (0.01, 0.5, 2.0, 10.0):
            noisy = self.val_x + sigma * torch.randn(self.val_x.shape, generator=gen)
            fn = lambda x: self.model(x.to(self.device), torch.full((len(x),), sigma, device=self.device))  # noqa: E731
            out[f"accuracy_sigma{sigma:g}"] = accuracy(fn, noisy, self.val_y)
        return out

    def final_model(self) -> torch.nn.Module:
        return self.model


class _JudgeTrainer(_ClassifierTrainer):
    """Judges also see vocoder round trips of the training clips (Griffin-Lim, and the neural vocoder
    when `cfg.vocoders` names it), so that they hear vocoded speech (what every generated sample is)
    as well as the original recordings, whichever vocoder wrote it."""

    kind = "judge"

    def default_network(self, spec: FeatureSpec) -> JudgeConfig:
        return JudgeConfig(num_classes=len(self.labels), n_mels=spec.n_mels)

    def build(self, net_cfg) -> torch.nn.Module:
        return TDNNJudge(net_cfg)

    def training_data(self, train_set: FeatureSet, spec: FeatureSpec, data_root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        from guidance.vocoders import describe_vocoder, load_vocoder

        sets, heard = [train_set], []
        for choice in self.cfg.vocoders:
            vocoder = load_vocoder(choice, spec, Path(self.cfg.models_dir) if self.cfg.models_dir else _default_models_dir())
            sets.append(fsdd_vocoded_features("train", spec, root=data_root, vocoder=vocoder))
            heard.append(describe_vocoder(vocoder))
        self.card_extra = {"vocoders_heard": heard}
        return torch.cat([s.mels for s in sets]), torch.cat([_targets(s, self.task) for s in sets])


class _ScoreSubnetTrainer(_DenoiserTrainer):
    """Denoising score matching of a ScoreSubnet on a frozen backbone: the denoiser's loop (EDM loss,
    warm-up, clipping, EMA) with only the subnet's parameters in the optimizer, and the training data
    optionally limited to a few digits (the regimes of Makarov & Gerkmann 2026)."""

    kind, task = "score-subnet", "digit"

    def __init__(self, role, cfg, spec, train_set, val_set, device, gen, floor, network_config, data_root) -> None:
        from guidance.models.score_subnet import ScoreSubnetConfig, SingleBackboneModel

        if not cfg.backbone:
            raise ValueError("training a score-subnet needs a backbone classifier file")
        backbone = load_model(Path(cfg.backbone), expected_spec=spec, kind="classifier", device=device)
        self.labels = backbone.labels
        subnet_cfg = network_config or ScoreSubnetConfig(
            feature_channels=tuple(backbone.model.config.channels), sigma_data=backbone.model.config.sigma_data
        )
        self.model = SingleBackboneModel.from_backbone_file(Path(cfg.backbone), subnet_cfg, device)
        self.network_config = self.model.network_config()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.subnet.parameters(), lr=cfg.lr)
        self.loss = EDMLoss(sigma_data=self.model.sigma_data)
        self.cfg, self.gen, self.floor, self.device = cfg, gen, floor, device
        digits = sorted(set(cfg.digits)) if cfg.digits else list(range(len(DIGITS)))
        seen = torch.isin(train_set.digits, torch.tensor(digits))
        val_seen = torch.isin(val_set.digits, torch.tensor(digits))
        self.x, self.val, self.val_unseen = train_set.mels[seen], val_set.mels[val_seen], val_set.mels[~val_seen]
        self.batches = Batches(len(self.x), cfg.batch_size, gen)
        self.step_count = 0
        self.card_extra = {
            "digits": digits,
            "train_clips": int(len(self.x)),
            "backbone": {k: v for k, v in self.model.backbone_ref.items() if k != "config"},
            "trainable_parameters": count_parameters(self.model.subnet),
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The denoiser's validation MSE on the digits it trains on, plus sigma 1 on the digits it never sees."""
        out = super().evaluate()
        if len(self.val_unseen):
            gen = torch.Generator().manual_seed(0)
            val = self.val_unseen[:256].to(self.device)
            noise = torch.randn(val.shape, generator=gen).to(self.device)
            d = self.ema(val + noise, torch.ones(len(val), device=self.device))
            out["mse_unseen_sigma1"] = ((d - val) ** 2).mean().item()
        return out


_denoiser_trainer = _DenoiserTrainer
_score_subnet_trainer = _ScoreSubnetTrainer
_classifier_trainer = _ClassifierTrainer
_judge_trainer = _JudgeTrainer


def _default_models_dir() -> Path:
    from guidance.pipeline import default_models_dir  # lazy: the pipeline is not needed to train most models

    return default_models_dir()


def _vocoder_trainer(*args):
    from guidance.vocoder_training import VocoderTrainer  # lazy: only the vocoder role needs it

    return VocoderTrainer(*args)


def fit_word_spectra(spec: FeatureSpec, out: Path, data_root: str | None = None) -> Path:
    """Measure what each digit adds to the spectral statistics, over the training split (all speakers) and save it."""
    from guidance.models.word_spectra import WordSpectra

    train_set = fsdd_features("train", spec, root=data_root)
    model = WordSpectra.fit(train_set.mels, train_set.digits, len(DIGITS))
    card = {
        "data": f"FSDD train split, {len(train_set.mels)} clips of all speakers (test takes 0-4 never used)",
        "fitted": "per-digit mean of the spectral statistics minus the mean over digits; no optimisation",
        "train_steps": 0,
    }
    return save_model(out, model, "word-spectra", model.network_config(), spec, list(DIGITS), "digit", card)
