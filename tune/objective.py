"""How a guidance profile is scored during tuning, from validation data only.

Generated log-Mels are vocoded and re-analysed before the digit judge hears them (as
`guidance.evaluation` does). Three measures accumulate as batches arrive:

- `judge_accuracy`: the judge hears the requested digit;
- `fd`: Frechet distance between the judge embeddings of the samples and of the real validation clips;
- `diversity`: mean pairwise embedding distance between samples of the same digit, divided by the
  same figure for real validation clips (1 = as varied as real speech; 0 = one sample repeated).

Scalar objective (maximised): `accuracy_weight * judge_accuracy - fd_weight * fd
+ diversity_weight * min(diversity, 1)`; the defaults (1, 0.002, 0.1) let accuracy lead, make an FD
of 100 cost 0.2 (guidance that wrecks the samples reaches FD in the hundreds), and reward diversity
up to the real data's level only. The multi-objective mode hands the three measures to Optuna
separately (max, min, max).

`nonfinite_samples` counts the samples so far whose log-Mel or audio was NaN/inf (heard as silence,
see `tune.evaluator`); it flags the trial without changing how the objective is computed. Judge
outputs that are themselves non-finite make `frechet_distance` raise `NonFiniteError`: the trial
fails as a trial (Ray records it as errored) and the sweep goes on with the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from guidance.metrics import accuracy, frechet_distance

MULTI_METRICS: tuple[str, ...] = ("judge_accuracy", "fd", "diversity")
MULTI_MODES: tuple[str, ...] = ("max", "min", "max")


@dataclass(frozen=True)
class ObjectiveWeights:
    accuracy: float = 1.0
    fd: float = 0.002
    diversity: float = 0.1

    def combine(self, judge_accuracy: float, fd: float, diversity: float) -> float:
        div = 0.0 if diversity != diversity else min(diversity, 1.0)  # NaN (too few samples) counts as 0
        return self.accuracy * judge_accuracy - self.fd * fd + self.diversity * div


def within_class_spread(emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise L2 distance between embeddings sharing a label, averaged over labels (NaN if none)."""
    spreads = [torch.pdist(emb[labels == c].double()).mean() for c in labels.unique() if int((labels == c).sum()) >= 2]
    return float(torch.stack(spreads).mean()) if spreads else float("nan")


@dataclass
class ValReference:
    """What generated samples are compared with: the judge's view of the real validation clips."""

    embeddings: torch.Tensor
    spread: float

    @classmethod
    def from_judge_outputs(cls, embeddings: torch.Tensor, digits: torch.Tensor) -> "ValReference":
        return cls(embeddings.float(), within_class_spread(embeddings, digits))


class ObjectiveAccumulator:
    """Accumulates judge outputs batch by batch; `metrics()` scores everything seen so far."""

    def __init__(self, reference: ValReference, weights: ObjectiveWeights = ObjectiveWeights()) -> None:
        self.reference, self.weights = reference, weights
        self.emb: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.nonfinite = 0

    def add(self, emb: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, nonfinite: int = 0) -> dict[str, float]:
        """Score one more batch; `nonfinite`: how many of its samples blew up (heard as silence)."""
        self.emb.append(emb.float().cpu())
        self.logits.append(logits.float().cpu())
        self.targets.append(targets.long().cpu())
        self.nonfinite += nonfinite
        return self.metrics()

    def metrics(self) -> dict[str, float]:
        emb, logits, targets = torch.cat(self.emb), torch.cat(self.logits), torch.cat(self.targets)
        acc = accuracy(logits, targets)
        fd = frechet_distance(self.reference.embeddings, emb)
        diversity = within_class_spread(emb, targets) / self.reference.spread
        return {
            "objective": self.weights.combine(acc, fd, diversity),
            "judge_accuracy": acc,
            "fd": fd,
            "diversity": diversity,
            "samples": float(len(targets)),
            "nonfinite_samples": float(self.nonfinite),
        }

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint (a resumed trial continues from the batches it already scored)."""
        return {"emb": torch.cat(self.emb), "logits": torch.cat(self.logits), "targets": torch.cat(self.targets),
                "nonfinite": torch.tensor(self.nonfinite)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.emb, self.logits, self.targets = [state["emb"]], [state["logits"]], [state["targets"]]
        self.nonfinite = int(state.get("nonfinite", 0))  # checkpoints written before the count existed have none
