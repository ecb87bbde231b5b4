"""Long-term spectral statistics of log-Mels: what the statistics voice guide matches, and what a spoken word adds to them.

`spectral_statistics` summarises a clip by two curves over Mel bands: the long-term average spectrum
(LTAS: each band's mean over frames, loud frames weighted more) and the per-band spread (the weighted
standard deviation). A one-word clip's curves mix the speaker (timbre, channel) with the word's
phonemes. `word_offsets` measures the word's part: each word's mean curves over many speakers minus
the mean over words, so a reference saying one word can stand for its speaker saying another.
"""

from __future__ import annotations

import torch

DEFAULT_FRAME_SHARPNESS = 0.5


def spectral_statistics(mels: torch.Tensor, frame_sharpness: float = DEFAULT_FRAME_SHARPNESS) -> torch.Tensor:
    """(B, 1, M, T) normalized log-Mels -> (B, 2, M): per-band weighted mean and standard deviation over frames.

    Frame weights are softmax(frame_sharpness * mean loudness of the frame), held constant under
    differentiation so the gradient reshapes the spectrum rather than moving which frames count.
    """
    m = mels.flatten(1, -2) if mels.dim() == 4 else mels  # (B, M, T)
    weights = torch.softmax(frame_sharpness * m.mean(1, keepdim=True).detach(), dim=-1)
    mean = (m * weights).sum(-1)
    spread = (((m - mean.unsqueeze(-1)) ** 2) * weights).sum(-1).clamp_min(1e-6).sqrt()
    return torch.stack([mean, spread], dim=1)


def word_offsets(mels: torch.Tensor, words: torch.Tensor, num_words: int, frame_sharpness: float = DEFAULT_FRAME_SHARPNESS) -> torch.Tensor:
    """(num_words, 2, M): each word's mean statistics minus the mean over words (every word weighs the same).

    Averaged over all the speakers of `mels`, so the speakers cancel and the word remains.
    """
    stats = spectral_statistics(mels, frame_sharpness)
    missing = [w for w in range(num_words) if not bool((words == w).any())]
    if missing:
        raise ValueError(f"no clips of word(s) {missing} to measure their spectra from")
    per_word = torch.stack([stats[words == w].mean(0) for w in range(num_words)])
    return per_word - per_word.mean(0, keepdim=True)
