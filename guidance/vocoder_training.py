"""Training the neural vocoder on FSDD's training waveforms (the `vocoder` role of `guidance.training.train`).

Each step takes real training clips, augments the waveform (a random shift, so words sit anywhere on
the hop grid, and a random gain), computes the project's normalized log-Mel from it, adds a little
feature noise (generated log-Mels are never exactly real ones), and asks the vocoder for the waveform
back. Losses: `guidance.vocoder_losses`.
"""

from __future__ import annotations

import copy

import torch

from guidance.data import FeatureSet, fsdd_split, list_fsdd, load_waves, resolve_fsdd_root
from guidance.features import FeatureSpec, LogMel
from guidance.models.checkpoint import config_dict
from guidance.models.vocoder import NeuralVocoder, VocoderConfig
from guidance.train_common import Batches, update_ema
from guidance.vocoder_losses import log_magnitude_loss, multi_resolution_stft_loss, phase_loss

SEGMENT_FRAMES = 32  # training crops: half a clip (the network is convolutional, so whole clips work at inference)
MAGNITUDE_WEIGHT = 1.0  # log-magnitude L1 of the predicted spectrum
MEL_WEIGHT = 1.0  # log-Mel L1 in normalized units
PHASE_WEIGHT = 1.0  # instantaneous phase + group delay + instantaneous frequency, radians
VAL_CLIPS = 64


def target_spectrum(wave: torch.Tensor, config: VocoderConfig) -> torch.Tensor:
    """The complex STFT the vocoder should predict: the feature front end's own (n_fft, hop, Hann, centred)."""
    window = torch.hann_window(config.n_fft, device=wave.device)
    return torch.stft(wave, config.n_fft, config.hop_length, window=window, center=True, return_complex=True)


class VocoderTrainer:
    """Plugs into `guidance.training.train`: step(), evaluate(), final_model() and the model-file fields."""

    kind, labels, task = "vocoder", [], "vocoder"

    def __init__(self, role, cfg, spec: FeatureSpec, train_set: FeatureSet, val_set: FeatureSet, device, gen, floor, network_config, data_root) -> None:
        net_cfg = network_config or VocoderConfig.for_spec(spec)
        self.network_config = config_dict(net_cfg)
        self.model = NeuralVocoder(net_cfg).to(device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(0.8, 0.99), weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.03)
        self.cfg, self.gen, self.device, self.spec = cfg, gen, device, spec
        self.front = LogMel(spec).to(device)
        clips = list_fsdd(resolve_fsdd_root(data_root))
        self.waves = load_waves(fsdd_split(clips, "train"), spec)
        self.val_waves = load_waves(fsdd_split(clips, "val"), spec)[:: max(1, len(val_set) // VAL_CLIPS)][:VAL_CLIPS]  # whole clips
        self.batches = Batches(len(self.waves), cfg.batch_size, gen)
        self.step_count = 0
        self.card_extra = {"train_clips": int(len(self.waves)), "losses": "MR-STFT + log-magnitude L1 + log-Mel L1 + anti-wrapped phase"}

    def augmented(self, idx: torch.Tensor) -> torch.Tensor:
        """A random `SEGMENT_FRAMES` crop of each clip, at any sample offset (so words sit anywhere on the
        hop grid), its gain lowered by up to `gain_db`."""
        waves = self.waves[idx]
        length = SEGMENT_FRAMES * self.spec.hop_length
        starts = torch.randint(0, waves.shape[1] - length + 1, (len(idx),), generator=self.gen).tolist()
        out = torch.stack([w[s : s + length] for w, s in zip(waves, starts)])
        gain_db = torch.rand(len(idx), 1, generator=self.gen) * self.cfg.gain_db
        return out * 10 ** (-gain_db / 20)

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        return self.front.any_length(wave)

    def losses(self, model: NeuralVocoder, wave: torch.Tensor, mel: torch.Tensor, noisy_mel: torch.Tensor) -> dict[str, torch.Tensor]:
        spectrum = model.spectrum(noisy_mel)
        target = target_spectrum(wave, model.config)
        pred = model.waveform(spectrum, length=wave.shape[-1])
        return {
            "stft": multi_resolution_stft_loss(pred, wave),
            "magnitude": log_magnitude_loss(spectrum, target),
            "mel": (self.features(pred) - mel).abs().mean(),
            "phase": phase_loss(spectrum, target),
        }

    def step(self) -> float:
        self.model.train()
        wave = self.augmented(self.batches.next()).to(self.device)
        with torch.no_grad():
            mel = self.features(wave)
            level = torch.rand(len(wave), 1, 1, 1, generator=self.gen).to(self.device) * self.cfg.feature_noise
            noisy = mel + level * torch.randn(mel.shape, generator=self.gen).to(self.device)
        parts = self.losses(self.model, wave, mel, noisy)
        loss = parts["stft"] + MAGNITUDE_WEIGHT * parts["magnitude"] + MEL_WEIGHT * parts["mel"] + PHASE_WEIGHT * parts["phase"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.step_count += 1
        update_ema(self.ema, self.model, self.step_count, self.cfg.ema_decay)
        return loss.item()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The EMA model's losses on fixed validation clips, without augmentation."""
        wave = self.val_waves.to(self.device)
        mel = self.features(wave)
        return {k: v.item() for k, v in self.losses(self.ema, wave, mel, mel).items()}

    def final_model(self) -> torch.nn.Module:
        return self.ema
