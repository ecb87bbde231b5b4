"""Training the F0 head (`guidance.models.f0_head`) that the harmonic vocoder reads its F0 from.

Labels come from pYIN (`guidance.pitch_tracker`) on training clips pitch-shifted by a random amount in
`shift_st` (librosa's phase-vocoder shift), so the head sees voices well below and above the speakers'
own: the harmonic vocoder exists for low voices, and FSDD's six speakers alone span little of that
range. pYIN also judges pitch guidance; the labels come from training clips only, and the outside judges
(ASR, DNSMOS) check the vocoder on validation clips (bench/pitch_f0_head.py), so nothing is fitted to a
judge's test cases.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from guidance.data import fsdd_split, list_fsdd, load_wave
from guidance.features import FeatureSpec, LogMel, fit_length
from guidance.models.checkpoint import config_dict, save_model
from guidance.models.f0_head import F0Head, F0HeadConfig
from guidance.librosa_kernels import first_use
from guidance.pitch_tracker import TRACKER_HOP_S, at_tracker_rate, pyin_contour
from guidance.run_log import OpenRun, no_run

Progress = Callable[[int, int, str], None]
POOL_FROM_CLIPS = 64  # fewer clips are labelled in this process: starting workers (torch imports) costs more


@dataclass(frozen=True)
class F0HeadTrainConfig:
    clips: int = 1200
    val_clips: int = 120
    shift_st: tuple[float, float] = (-5.0, 3.0)
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    input_noise: float = 0.05  # on the normalized log-Mel: generated log-Mels are not exactly clean ones
    seed: int = 0


def pitch_shifted(wave: torch.Tensor, rate: int, semitones: float) -> torch.Tensor:
    """A recording shifted by `semitones` at the same length and rate (librosa's phase-vocoder shift)."""
    import librosa

    if semitones == 0:
        return wave
    with first_use("pitch_shift"):
        return torch.from_numpy(librosa.effects.pitch_shift(wave.numpy(), sr=rate, n_steps=semitones)).float()


def _labelled_clip(job: tuple[str, float, int, int]) -> tuple[torch.Tensor, np.ndarray]:
    """One shifted training clip and pYIN's F0 contour of it (0 where unvoiced)."""
    path, st, rate, samples = job
    wave = fit_length(pitch_shifted(load_wave(path, rate), rate, st), samples)
    f0, voiced = pyin_contour(at_tracker_rate(wave, rate))
    return wave, np.where(voiced, np.nan_to_num(f0), 0.0)


def frame_labels(f0: np.ndarray, head: F0Head, frames: int, spec: FeatureSpec) -> np.ndarray:
    """pYIN's contour (every TRACKER_HOP_S) on the log-Mel's frames (hop_length apart, both centred):
    each frame's F0 bin, or the unvoiced class."""
    grid = np.arange(frames) * spec.hop_length / spec.sample_rate / TRACKER_HOP_S
    f = f0[np.clip(np.round(grid).astype(int), 0, len(f0) - 1)]
    y = np.full(frames, head.config.bins)
    voiced = f > 0
    y[voiced] = head.bin_of(torch.from_numpy(f[voiced])).numpy()
    return y


def labelled_set(spec: FeatureSpec, data_root: Path, split: str, clips: int, cfg: F0HeadTrainConfig, head: F0Head) -> tuple[torch.Tensor, torch.Tensor]:
    """`clips` clips of `split`, each shifted by a random amount in `cfg.shift_st`: normalized log-Mels
    (N, M, T) and per-frame labels (N, T), pYIN's, computed in worker processes (pYIN is the slow part)."""
    pool_of = fsdd_split(list_fsdd(data_root), split)
    rng = np.random.default_rng([cfg.seed, len(split)])
    chosen = rng.choice(len(pool_of), min(clips, len(pool_of)), replace=False)
    jobs = [(str(pool_of[i].path), float(rng.uniform(*cfg.shift_st)), spec.sample_rate, spec.num_samples) for i in chosen]
    if len(jobs) < POOL_FROM_CLIPS:
        data = [_labelled_clip(job) for job in jobs]
    else:
        with get_context("spawn").Pool(max(1, min(4, os.cpu_count() or 1))) as pool:
            data = pool.map(_labelled_clip, jobs, chunksize=8)
    mels = LogMel(spec)(torch.stack([w for w, _ in data]))[:, 0]
    labels = torch.tensor(np.stack([frame_labels(f0, head, mels.shape[-1], spec) for _, f0 in data]))
    return mels, labels


@torch.no_grad()
def frame_scores(head: F0Head, mels: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Voicing agreement with pYIN over all frames, and the share of frames both call voiced whose F0
    lies within 1 semitone (4 bins) of pYIN's."""
    logits = head(mels)
    unvoiced = head.config.bins
    said = logits.argmax(1)
    said_voiced, truly_voiced = said < unvoiced, labels < unvoiced
    both = said_voiced & truly_voiced
    f0_bins = logits[:, :unvoiced].argmax(1)
    return {
        "val_voicing_accuracy": round(float((said_voiced == truly_voiced).float().mean()), 4),
        "val_within_1st": round(float(((f0_bins - labels).abs() <= 4)[both].float().mean()) if bool(both.any()) else 0.0, 4),
    }


def train_f0_head(spec: FeatureSpec, data_root: Path, cfg: F0HeadTrainConfig = F0HeadTrainConfig(), progress: Progress | None = None) -> tuple[F0Head, dict]:
    """Label `cfg.clips` shifted training clips (and `cfg.val_clips` validation ones) with pYIN, then train
    the head; returns it (frozen) and its card with the validation frame scores."""
    say = progress or (lambda *_: None)
    torch.manual_seed(cfg.seed)
    head = F0Head(F0HeadConfig(n_mels=spec.n_mels))
    started = time.perf_counter()
    say(0, cfg.steps, f"labelling {cfg.clips} + {cfg.val_clips} shifted clips with pYIN")
    mels, labels = labelled_set(spec, data_root, "train", cfg.clips, cfg, head)
    val_mels, val_labels = labelled_set(spec, data_root, "val", cfg.val_clips, cfg, head)
    label_s = time.perf_counter() - started
    voiced_share = float((labels < head.config.bins).float().mean())
    opt = torch.optim.AdamW(head.parameters(), cfg.lr, weight_decay=1e-4)
    started = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, len(mels), (cfg.batch_size,))
        x = mels[idx] + cfg.input_noise * torch.randn_like(mels[idx])
        loss = F.cross_entropy(head(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.steps:
            say(step, cfg.steps, f"loss {loss.item():.3f}")
    head.eval()
    card = {
        **frame_scores(head, val_mels, val_labels),
        "train_clips": len(mels), "val_clips": len(val_mels), "train_shift_st": list(cfg.shift_st), "train_voiced_frames": round(voiced_share, 3),
        "label_seconds": round(label_s), "train_seconds": round(time.perf_counter() - started), "final_loss": round(loss.item(), 4),
        "train_config": asdict(cfg) | {"shift_st": list(cfg.shift_st)},
    }
    return head.requires_grad_(False), card


def fit_f0_head(
    spec: FeatureSpec, out: Path, data_root: Path, cfg: F0HeadTrainConfig = F0HeadTrainConfig(),
    tracker: OpenRun | None = None, progress: Progress | None = None,
) -> tuple[Path, dict]:
    """Train the F0 head and save it as a model file (kind "f0-head"); logged to `tracker` when given."""
    open_run = tracker or no_run
    with open_run("speechguide-train", "train-f0-head", {"role": "f0-head", **asdict(cfg)}) as run:
        head, card = train_f0_head(spec, data_root, cfg, progress)
        run.log_metrics({k: v for k, v in card.items() if k.startswith("val_") or k == "final_loss"})
        path = save_model(out, head, "f0-head", config_dict(head.config), spec, card=card)
        run.log_artifact(path)
    return path, card
