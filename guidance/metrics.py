"""Measures of generated speech in an independent judge's eyes.

FD and IS use torchmetrics' implementations with the judge as the feature extractor (the SC09
convention of DiffWave and SaShiMi: a speech classifier stands in for Inception). mIS and AM
follow their SC09 definitions (Zhou et al. 2018; Gurumurthy et al. 2017).

Distribution measures (FD, IS, mIS, AM) refuse non-finite inputs with `NonFiniteError`: the
Frechet distance hands a covariance to LAPACK, where a NaN can kill the process instead of
raising, and the others would only turn one bad sample into a NaN figure. Accuracies count a
sample whose logits are not finite as a miss: it is not the class asked for.
"""

from __future__ import annotations

import warnings

import torch

from guidance.features import FeatureSpec, LogMel
from guidance.finite import nonfinite_rows, require_finite
from guidance.models.judge import TDNNJudge


class _Precomputed(torch.nn.Module):
    """Feature extractor that passes through features we already computed with the judge."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@torch.no_grad()
def judge_outputs(judge: TDNNJudge, mels: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, logits) of the judge on normalized log-Mels."""
    judge.eval()
    device = next(judge.parameters()).device
    embs, logits = [], []
    for i in range(0, len(mels), batch):
        e = judge.embedding(mels[i : i + batch].to(device))
        embs.append(e.cpu())
        logits.append(judge.head(e).cpu())
    return torch.cat(embs), torch.cat(logits)


@torch.no_grad()
def hear(waves: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """What a judge hears: the log-Mel of the waveform (generated audio goes mel -> vocoder -> mel)."""
    return LogMel(spec)(waves)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FD between two sets of (N, D) features; both must be finite and hold two rows or more,
    since a NaN covariance (from either) can crash the process inside LAPACK's eigvals."""
    for name, feats in (("real", real), ("generated", fake)):
        require_finite(feats, f"Frechet distance: the {name} features")
        if len(feats) < 2:
            raise ValueError(f"Frechet distance needs at least 2 {name} samples for a covariance, got {len(feats)}")
    from torchmetrics.image.fid import FrechetInceptionDistance  # here: torchmetrics takes seconds to import, most callers never need it

    fid = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), reset_real_features=True)
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    return float(fid.compute())


def inception_score(logits: torch.Tensor, splits: int = 1) -> float:
    require_finite(logits, "inception score: the logits")
    from torchmetrics.image.inception import InceptionScore

    with warnings.catch_warnings():  # one split has no spread, and the buffer is small: both warnings are noise here
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=splits)
        metric.update(logits.double())
        mean, _ = metric.compute()
    return float(mean)


def modified_inception_score(probs: torch.Tensor) -> float:
    """mIS = exp(E_{x_i, x_j} [KL(p(y|x_i) || p(y|x_j))]) over pairs with the same predicted class."""
    require_finite(probs, "modified inception score: the probabilities")
    probs = probs.double().clamp_min(1e-12)
    pred = probs.argmax(1)
    kls = []
    for c in pred.unique():
        p = probs[pred == c]
        if len(p) < 2:
            continue
        logp = p.log()
        # KL(p_i || p_j) = sum p_i log p_i - sum p_i log p_j, for all pairs i, j
        kl = (p * logp).sum(1, keepdim=True) - p @ logp.T
        kls.append(kl.mean())
    return float(torch.stack(kls).mean().exp()) if kls else float("nan")


def am_score(probs: torch.Tensor, reference_probs: torch.Tensor) -> float:
    """AM = KL(mean reference p(y) || mean generated p(y)) + E_x[H(p(y|x))]; lower is better."""
    require_finite(probs, "AM score: the probabilities")
    require_finite(reference_probs, "AM score: the reference probabilities")
    p = probs.double().clamp_min(1e-12)
    ref = reference_probs.double().clamp_min(1e-12).mean(0)
    gen = p.mean(0)
    kl = (ref * (ref.log() - gen.log())).sum()
    entropy = -(p * p.log()).sum(1).mean()
    return float(kl + entropy)


def _predictions(logits: torch.Tensor) -> torch.Tensor:
    """argmax per row, -1 where the row is not finite (argmax would pick a NaN's position)."""
    pred = logits.argmax(1)
    return pred.masked_fill(nonfinite_rows(logits), -1) if len(logits) else pred


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose argmax is the target; a row with non-finite logits counts as a miss."""
    return float((_predictions(logits) == targets).double().mean()) if len(targets) else float("nan")


def per_class_accuracy(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[float]:
    """`accuracy` within each target class (NaN for a class with no rows)."""
    pred = _predictions(logits)
    return [float((pred[targets == c] == c).double().mean()) if (targets == c).any() else float("nan") for c in range(num_classes)]
