"""Scores one guidance profile on the validation split in batches (no Ray).

The trial and the driver's baseline both use it, so the default profile and every tuned profile
see exactly the same noise, the same targets and the same scoring. Batch `b` holds
`batch_per_class` samples of every digit; sample `i` always starts from row `i` of one noise
tensor drawn from the sweep's seed (common random numbers across trials). A sample that guidance
blew up (its log-Mel or its audio non-finite) is never handed to the vocoder or the judge as NaN: it
is heard as silence, as its WAV file would play, and counted in the `nonfinite_samples` metric, so
the trial scores it as the failure it is (Optuna learns to avoid such profiles) and the sweep's
table flags the trial.

When `outside_asr_weight` is not 0, an outside recognizer (`outside_judges`' PocketSphinx digit ASR)
also hears every vocoded sample, as written to a WAV (blown-up samples: silence, which it never
takes for a digit), and the accumulator weighs how often it hears the requested digit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Protocol, Sequence

import torch

from guidance.data import DIGITS, fsdd_features
from guidance.guides import DEFAULT_PROFILES, GuidanceProfile
from guidance.metrics import hear, judge_outputs
from guidance.models import ModelFile, load_model
from guidance.generate import digit_guide_of
from guidance.pipeline import ModelPaths, ModelSet, sample_plan, vocode_finite
from guidance.plan import Plan, plan_request, targets_for
from tune.objective import ObjectiveAccumulator, ObjectiveWeights, ValReference
from tune.settings import TuneSettings


def base_profile(settings: TuneSettings) -> GuidanceProfile:
    """The profile the sweep starts from and compares against, at the baseline's step count."""
    profile = GuidanceProfile.load(settings.profile) if settings.profile else DEFAULT_PROFILES[settings.guide]
    return profile.with_sampler(steps=settings.base_steps)


def load_models(settings: TuneSettings, device: Optional[str] = None) -> tuple[ModelSet, ModelFile]:
    paths = ModelPaths(root=Path(settings.models_dir)) if settings.models_dir else ModelPaths()
    models = ModelSet.load(paths, device)
    judge = load_model(paths.path("judge_digit"), models.spec, "judge", models.device)
    return models, judge


def val_reference(settings: TuneSettings, models: ModelSet, judge: ModelFile) -> ValReference:
    """The judge's embeddings of the real validation clips (takes 5-9; never the test split)."""
    val = fsdd_features("val", models.spec, root=settings.data_dir)
    emb, _ = judge_outputs(judge.model, val.mels)
    return ValReference.from_judge_outputs(emb, val.digits)


def weights(settings: TuneSettings) -> ObjectiveWeights:
    return ObjectiveWeights(settings.accuracy_weight, settings.fd_weight, settings.diversity_weight, settings.outside_asr_weight)


class DigitHearing(Protocol):
    """What the objective needs of an outside recognizer (`outside_judges.DigitRecognizer` is one)."""

    def recognize_many(self, waves: torch.Tensor, sample_rate: int) -> Sequence[Optional[int]]: ...


def outside_recognizer(settings: TuneSettings) -> Optional[DigitHearing]:
    """The outside digit recognizer when the objective weighs it, else None (nothing imported)."""
    if not settings.outside_asr_weight:
        return None
    from outside_judges.report import default_recognizer

    return default_recognizer()


def outside_verdicts(recognizer: DigitHearing, waves: torch.Tensor, sample_rate: int, targets: torch.Tensor) -> torch.Tensor:
    """Per sample: whether the recognizer heard the target digit (no answer is a miss)."""
    said = recognizer.recognize_many(waves, sample_rate)
    return torch.tensor([s is not None and int(s) == int(t) for s, t in zip(said, targets.tolist())])


@dataclass
class BatchResult:
    index: int  # 1-based number of batches scored so far
    metrics: dict[str, float]
    mels: torch.Tensor
    waves: torch.Tensor
    targets: torch.Tensor


class ProfileEvaluator:
    """Generates and scores a profile batch by batch, optionally resuming after `start` batches."""

    def __init__(
        self, settings: TuneSettings, models: ModelSet, judge: ModelFile, reference: ValReference, recognizer: Optional[DigitHearing] = None
    ) -> None:
        self.settings, self.models, self.judge = settings, models, judge
        self.recognizer = recognizer if recognizer is not None else outside_recognizer(settings)
        self.accumulator = ObjectiveAccumulator(reference, weights(settings))
        self.batch_size = settings.batch_per_class * len(DIGITS)

    def plan(self, profile: GuidanceProfile) -> Plan:
        """The sweep's request under `profile`: every digit in turn, `per_class` rounds (so every batch holds
        every digit), noise drawn from the sweep's seed: the same rows for every trial."""
        targets = targets_for("digit", DIGITS) * self.settings.per_class
        return plan_request(targets, 1, self.settings.seed, profile, digit_guide_of(self.models, self.settings.guide),
                            digit_kind=self.settings.guide, scale_set=True)

    def run(self, profile: GuidanceProfile, start: int = 0) -> Iterator[BatchResult]:
        spec = self.models.spec
        plan = self.plan(profile)
        targets = plan.named["digit"]
        for b in range(start, self.settings.batches):
            rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
            began = time.perf_counter()
            mels = sample_plan(self.models, plan, rows=rows, batch_size=self.batch_size, allow_nonfinite=True)
            waves, ok = vocode_finite(mels, self.models.vocoder)  # blown-up samples come back silent, flagged in `ok`
            heard = waves.clamp(-1.0, 1.0)  # what a WAV file holds
            emb, logits = judge_outputs(self.judge.model, hear(heard, spec))
            outside = None
            if self.settings.outside_asr_weight:
                outside = outside_verdicts(self.recognizer, heard, spec.sample_rate, targets[rows])
            metrics = self.accumulator.add(emb, logits, targets[rows], nonfinite=int((~ok).sum()), outside=outside)
            metrics["batch_seconds"] = time.perf_counter() - began
            yield BatchResult(b + 1, metrics, mels, waves, targets[rows])


def score_profile(
    settings: TuneSettings, profile: GuidanceProfile, models=None, judge=None, reference=None, recognizer: Optional[DigitHearing] = None
) -> dict[str, float]:
    """All batches of one profile, in process: the final metrics (used for the baseline)."""
    if models is None or judge is None:
        models, judge = load_models(settings)
    reference = reference or val_reference(settings, models, judge)
    last: dict[str, float] = {}
    total = 0.0
    for result in ProfileEvaluator(settings, models, judge, reference, recognizer).run(profile):
        total += result.metrics["batch_seconds"]
        last = result.metrics
    return {**last, "trial_seconds": total}
