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


def default_digit_kind(speaker_target: bool, generator: str = "unet") -> str:
    """The digit guide kind a request gets when it names none, chosen on the validation split by the outside
    judges on written WAVs (reports/defaults/val-sweep.md): the clean classifier for digit targets (digit
    accuracy 0.76, DNSMOS OVRL 2.22 against the noisy one's 0.71 / 2.14; 200 samples, noise seed 7); the
    noisy classifier in digit + speaker composites, whose settings were validated with it
    (reports/voice-val-sweep.md), and with the score-subnet generator, whose backbone is that classifier."""
    return "noisy" if speaker_target or generator == "score-subnet" else "clean"
