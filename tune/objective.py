"""How a guidance profile is scored during tuning, from validation data only.

Generated log-Mels are vocoded and re-analysed before the digit judge hears them (as
`guidance.evaluation` does). Three measures, and optionally a fourth, accumulate as batches arrive:

- `judge_accuracy`: the judge hears the requested digit;
- `fd`: Frechet distance between the judge embeddings of the samples and of the real validation clips;
- `diversity`: mean pairwise embedding distance between samples of the same digit, divided by the
  same figure for real validation clips (1 = as varied as real speech; 0 = one sample repeated);
- `outside_asr_accuracy` (when its weight is not 0): an outside recognizer (`outside_judges`'
  PocketSphinx digit ASR, trained by nobody here) hears the requested digit in the vocoded waveform.
  The project's judge reads only the log-Mel of the re-analysed audio; this term rewards profiles whose
  audio a general English recognizer also understands, so guidance cannot win by pleasing our judge
  alone.

Scalar objective (maximised): `accuracy_weight * judge_accuracy - fd_weight * fd
+ diversity_weight * min(diversity, 1) + outside_asr_weight * outside_asr_accuracy`; the defaults
(1, 0.002, 0.1) let accuracy lead, make an FD of 100 cost 0.2 (guidance that wrecks the samples
reaches FD in the hundreds), and reward diversity up to the real data's level only. `ObjectiveWeights`
leaves the outside term off (0); `tune.settings.TuneSettings` turns it on at 1, as much as the judge's
accuracy. The multi-objective mode hands the measures to Optuna separately (max, min, max, and max for
the outside accuracy when its weight is not 0).

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
OUTSIDE_METRIC = "outside_asr_accuracy"


@dataclass(frozen=True)
class ObjectiveWeights:
    accuracy: float = 1.0
    fd: float = 0.002
    diversity: float = 0.1
    outside_asr: float = 0.0  # 0: the outside recognizer is not consulted

    def combine(self, judge_accuracy: float, fd: float, diversity: float, outside_asr_accuracy: float | None = None) -> float:
        div = 0.0 if diversity != diversity else min(diversity, 1.0)  # NaN (too few samples) counts as 0
        value = self.accuracy * judge_accuracy - self.fd * fd + self.diversity * div
        if self.outside_asr:
            if outside_asr_accuracy is None:
                raise ValueError("the objective weighs the outside recognizer's accuracy, but none was given")
            value += self.outside_asr * outside_asr_accuracy
        return value

    def multi_objectives(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(metrics, modes) of the multi-objective mode: the outside accuracy joins when it is weighed."""
        if self.outside_asr:
            return (*MULTI_METRICS, OUTSIDE_METRIC), (*MULTI_MODES, "max")
        return MULTI_METRICS, MULTI_MODES


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
        self.outside: list[torch.Tensor] = []  # per sample: 1.0 when the outside recognizer heard the target
        self.nonfinite = 0

    def add(
        self, emb: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, nonfinite: int = 0, outside: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Score one more batch; `nonfinite`: how many of its samples blew up (heard as silence);
        `outside`: per sample, whether the outside recognizer heard the target (needed when it is weighed)."""
        if outside is None and self.weights.outside_asr:
            raise ValueError("the objective weighs the outside recognizer's accuracy: give `outside` for every batch")
        if outside is not None and len(outside) != len(targets):
            raise ValueError(f"{len(outside)} outside verdicts for {len(targets)} samples")
        self.emb.append(emb.float().cpu())
        self.logits.append(logits.float().cpu())
        self.targets.append(targets.long().cpu())
        if outside is not None:
            self.outside.append(outside.float().cpu())
        self.nonfinite += nonfinite
        return self.metrics()

    def metrics(self) -> dict[str, float]:
        emb, logits, targets = torch.cat(self.emb), torch.cat(self.logits), torch.cat(self.targets)
        acc = accuracy(logits, targets)
        fd = frechet_distance(self.reference.embeddings, emb)
        diversity = within_class_spread(emb, targets) / self.reference.spread
        outside = float(torch.cat(self.outside).mean()) if self.outside else None
        out = {
            "objective": self.weights.combine(acc, fd, diversity, outside),
            "judge_accuracy": acc,
            "fd": fd,
            "diversity": diversity,
            "samples": float(len(targets)),
            "nonfinite_samples": float(self.nonfinite),
        }
        if outside is not None:
            out[OUTSIDE_METRIC] = outside
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint (a resumed trial continues from the batches it already scored)."""
        return {"emb": torch.cat(self.emb), "logits": torch.cat(self.logits), "targets": torch.cat(self.targets),
                "nonfinite": torch.tensor(self.nonfinite),
                "outside": torch.cat(self.outside) if self.outside else torch.zeros(0)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.emb, self.logits, self.targets = [state["emb"]], [state["logits"]], [state["targets"]]
        self.nonfinite = int(state.get("nonfinite", 0))  # checkpoints written before the count existed have none
        outside = state.get("outside")
        self.outside = [outside.float()] if outside is not None and len(outside) else []
        if self.weights.outside_asr and sum(len(o) for o in self.outside) != len(state["targets"]):
            raise ValueError("the checkpoint has no outside recognizer verdicts for the batches it scored")
