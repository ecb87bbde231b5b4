"""What each word adds to a clip's long-term spectral statistics, as a model file.

Not trained by gradient: `fit` averages `guidance.spectral_stats.word_offsets` over the training
split's clips of every speaker, so no speaker is singled out. The statistics voice guide uses it to
let a reference saying one digit stand for its speaker saying another (`VoiceStatsGuide.for_word`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from guidance.spectral_stats import DEFAULT_FRAME_SHARPNESS, word_offsets


@dataclass(frozen=True)
class WordSpectraConfig:
    words: int = 10
    n_mels: int = 64
    frame_sharpness: float = DEFAULT_FRAME_SHARPNESS


class WordSpectra(torch.nn.Module):
    """A (words, 2, n_mels) table of offsets: per word, its mean and spread curves minus the mean over words."""

    def __init__(self, config: WordSpectraConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("offsets", torch.zeros(config.words, 2, config.n_mels))

    @classmethod
    def fit(cls, mels: torch.Tensor, words: torch.Tensor, num_words: int, frame_sharpness: float = DEFAULT_FRAME_SHARPNESS) -> "WordSpectra":
        model = cls(WordSpectraConfig(words=num_words, n_mels=mels.shape[-2], frame_sharpness=frame_sharpness))
        with torch.no_grad():
            model.offsets.copy_(word_offsets(mels, words, num_words, frame_sharpness))
        return model

    def network_config(self) -> dict:
        return asdict(self.config)
