"""The guide kinds a request can name, in one place: what each reads and where its model comes from.

Pipeline, evaluation, Serve (schemas, ingress, registry watcher) and Tune read this table instead of
spelling the kinds out; each kind's default profile is `DEFAULT_PROFILES[name]`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GuideKind:
    name: str
    model: str | None  # the ModelPaths field of its classifier file; None: the caller supplies the model
    reads: str  # "x_t" (noise-conditioned) or "x0_hat" (a clean classifier on the denoised estimate)
    description: str


GUIDE_KIND_TABLE: dict[str, GuideKind] = {
    "noisy": GuideKind("noisy", "noisy_classifier", "x_t", "noise-conditioned classifier on x_t (the classic baseline)"),
    "clean": GuideKind("clean", "clean_classifier", "x0_hat", "repurposed clean classifier on x0_hat"),
    "hf": GuideKind("hf", None, "x0_hat", "a Hugging Face audio classifier on x0_hat, through a differentiable adapter"),
}
# The kinds whose classifier ships in the models directory (the Classifier deployment's own).
CLASSIFIER_GUIDE_KINDS: tuple[str, ...] = tuple(k for k, v in GUIDE_KIND_TABLE.items() if v.model is not None)
