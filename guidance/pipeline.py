"""From a request (targets, guide kind, profile, seed) to log-Mels, audio and guide scores.

This is the in-process generator the CLI uses; the Serve app drives the same pieces step by step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from guidance.device import pick_device
from guidance.diffusion import init_state, sampler_step
from guidance.diffusion.precond import Denoiser
from guidance.features import FeatureSpec, Vocoder
from guidance.finite import nonfinite_rows
from guidance.guides import ClassifierGuide, Guide, GuidanceProfile, GuidedDenoiser
from guidance.models import ModelFile, load_model
from guidance.guides.kinds import CLASSIFIER_GUIDE_KINDS, GUIDE_KIND_TABLE
from guidance.guides.single_backbone import SingleBackboneProvider
from guidance.plan import Plan, Target, build_guide_terms, guide_settings, make_noise  # noqa: F401 (re-exported)
from guidance.models.score_subnet import SingleBackboneModel, load_score_subnet
from guidance.vocoders import DEFAULT_VOCODER, VOCODER_FILE, describe_vocoder, load_vocoder, vocode_batched

GUIDE_KINDS: tuple[str, ...] = (*GUIDE_KIND_TABLE, "none")  # hf: a Hugging Face classifier the caller puts in ModelSet.guides
GuideKind = Literal[GUIDE_KINDS]  # type: ignore[valid-type]
MODELS_ENV = "SPEECHGUIDE_MODELS"


def default_models_dir() -> Path:
    """$SPEECHGUIDE_MODELS, else the committed `models/` next to the package."""
    return Path(os.environ.get(MODELS_ENV) or Path(__file__).resolve().parents[1] / "models")


@dataclass(frozen=True)
class ModelPaths:
    """Where each committed demo model lives (file names inside the models directory)."""

    root: Path = field(default_factory=default_models_dir)
    denoiser: str = "denoiser-unet.safetensors"
    noisy_classifier: str = "classifier-noisy.safetensors"
    clean_classifier: str = "classifier-clean.safetensors"
    judge_digit: str = "judge-digit.safetensors"
    judge_speaker: str = "judge-speaker.safetensors"
    score_subnet: str = "score-subnet-all.safetensors"
    word_spectra: str = "word-spectra.safetensors"
    vocoder: str = VOCODER_FILE

    def path(self, name: str) -> Path:
        return self.root / getattr(self, name)


@dataclass
class ModelSet:
    """The denoiser, the guides that can steer it and the vocoder, all checked against one feature spec."""

    denoiser: ModelFile
    guides: dict[str, ClassifierGuide]  # guide kind ("noisy", "clean") -> digit guide
    spec: FeatureSpec
    device: torch.device
    vocoder: Vocoder

    @classmethod
    def load(
        cls, paths: ModelPaths | None = None, device: str | torch.device | None = None, vocoder: str | Path = DEFAULT_VOCODER
    ) -> "ModelSet":
        """`vocoder`: "neural" (the models directory's vocoder file), "griffin-lim", or a vocoder file."""
        paths = paths or ModelPaths()
        dev = pick_device(str(device) if device else None)
        denoiser = load_model(paths.path("denoiser"), kind="denoiser-unet", device=dev)
        spec = denoiser.spec
        guides = {
            kind: ClassifierGuide.from_file(load_model(paths.path(GUIDE_KIND_TABLE[kind].model), spec, "classifier", dev))
            for kind in CLASSIFIER_GUIDE_KINDS
        }
        return cls(denoiser, guides, spec, dev, load_vocoder(vocoder, spec, paths.root, dev))

    @classmethod
    def from_score_subnet(
        cls,
        path: Path,
        device: str | torch.device | None = None,
        backbone: Path | None = None,
        vocoder: str | Path = DEFAULT_VOCODER,
    ) -> "ModelSet":
        """The single-backbone generator: the ScoreSubnet is the denoiser and its own frozen backbone the
        "noisy" digit guide (so guided sampling shares one backbone pass per step). A neural vocoder is
        read from the subnet file's directory."""
        dev = pick_device(str(device) if device else None)
        subnet = load_score_subnet(Path(path), backbone=backbone, device=dev)
        subnet.model.requires_grad_(False)
        guide = ClassifierGuide(subnet.model.backbone, subnet.labels, subnet.task or "digit")
        return cls(subnet, {"noisy": guide}, subnet.spec, dev, load_vocoder(vocoder, subnet.spec, Path(path).parent, dev))

    def describe(self) -> dict:
        return {
            "denoiser": {"name": self.denoiser.name, "kind": self.denoiser.kind, "card": self.denoiser.card},
            **{
                f"guide_{k}": {"name": g.name, "labels": g.labels, "noise_conditioned": g.needs_sigma}
                for k, g in self.guides.items()
            },
            "vocoder": describe_vocoder(self.vocoder),
        }


Targets = torch.Tensor | dict[str, torch.Tensor]  # digit class indices, or guide name -> (B,) label indices


def guided_denoiser(
    models: ModelSet,
    kind: GuideKind,
    targets: Targets,
    profile: GuidanceProfile,
    extra_guides: dict[str, Guide] | None = None,
    weights: dict[str, float] | None = None,
) -> Denoiser:
    """The denoiser to sample with: plain D, or D wrapped with the chosen digit guide (`kind`) and any
    `extra_guides` (e.g. {"speaker": VoiceGuide}) for which `targets` (a dict) has labels."""
    named = dict(targets) if isinstance(targets, dict) else {"digit": targets}
    guides: dict[str, Guide] = {**({"digit": models.guides[kind]} if kind != "none" else {}), **(extra_guides or {})}
    if kind == "none":
        named.pop("digit", None)
    terms = build_guide_terms(named, guides, profile, weights, models.device)
    if not terms:
        return models.denoiser.model
    if isinstance(models.denoiser.model, SingleBackboneModel):  # score and guide from one backbone pass
        return GuidedDenoiser(models.denoiser.model, terms, SingleBackboneProvider(models.denoiser.model))
    return GuidedDenoiser(models.denoiser.model, terms)


def sample_mels(
    models: ModelSet,
    kind: GuideKind,
    targets: torch.Tensor,
    profile: GuidanceProfile,
    noise: torch.Tensor,
    seed: int = 0,
    batch_size: int = 50,
    on_batch: Callable[[int], None] | None = None,
    extra_guides: dict[str, Guide] | None = None,
    weights: dict[str, float] | None = None,
    allow_nonfinite: bool = False,
) -> torch.Tensor:
    """Sample one log-Mel per row of `noise`, row i steered towards class `targets[i]` (or, for a dict
    of guide name -> labels, towards every named guide's label at once; see `guided_denoiser`).

    A batch that goes non-finite raises `NonFiniteError` naming the step and sigma; with
    `allow_nonfinite` its rows come back as they are (NaN included) for a caller that scores the
    finite ones and counts the others."""
    if kind not in GUIDE_KINDS:
        raise ValueError(f"guide kind must be one of {GUIDE_KINDS}, got {kind!r}")
    config = profile.sampler.to_config()
    out = []
    for start in range(0, len(noise), batch_size):
        rows = slice(start, start + batch_size)
        batch = {k: v[rows] for k, v in targets.items()} if isinstance(targets, dict) else targets[rows]
        denoiser = guided_denoiser(models, kind, batch, profile, extra_guides, weights)
        state = init_state(noise[rows].to(models.device), config, seed=seed + start)
        with torch.no_grad():  # guides enable autograd where they need it; otherwise every step's graph is kept
            while not state.done:
                state = sampler_step(denoiser, state, config, allow_nonfinite)
        out.append(state.x.detach().cpu())
        if on_batch:
            on_batch(len(out[-1]))
    return torch.cat(out) if out else torch.empty(0, 1, models.spec.n_mels, models.spec.frames)


def sample_plan(
    models: ModelSet,
    plan: Plan,
    extra_guides: dict[str, Guide] | None = None,
    batch_size: int = 50,
    rows: slice | None = None,
    on_batch: Callable[[int], None] | None = None,
    allow_nonfinite: bool = False,
) -> torch.Tensor:
    """Sample a request's plan in-process: its noise, its guide terms (the digit guide of its kind from the
    model set, `extra_guides` for the others: {"speaker": voice guide, "pitch": pitch guide}), its profile,
    its weights and its seed. Every in-process door samples through here: `generate`, evaluate,
    evaluate-voice, evaluate-pitch, Tune and the default picker.

    `rows`: only rows [start, stop) of the plan, sampled exactly as they are within the whole (their own
    noise rows, batch seeds counted from `start`): how a Tune trial scores a plan batch by batch."""
    noise, named, start = plan.noise(models.spec), plan.named, 0
    if rows is not None:
        noise, named, start = noise[rows], {k: v[rows] for k, v in named.items()}, rows.start or 0
    return sample_mels(
        models, plan.digit_kind, named, plan.profile, noise, seed=plan.seed + start, batch_size=batch_size, on_batch=on_batch,
        extra_guides=extra_guides, weights=plan.weights, allow_nonfinite=allow_nonfinite,
    )


def vocode(mels: torch.Tensor, vocoder: Vocoder, batch_size: int = 64) -> torch.Tensor:
    """Waveforms (N, samples) of log-Mels through the model set's vocoder (`ModelSet.vocoder`)."""
    return vocode_batched(vocoder, mels, batch_size)


def vocode_finite(mels: torch.Tensor, vocoder: Vocoder, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(waves, ok): audio for every row of `mels`, silent where a row could not be vocoded, and (N,)
    bool `ok`, False for those rows.

    A row is left out when its log-Mel is non-finite (never handed to the vocoder) or when its audio
    comes out non-finite (a finite but huge log-Mel overflows exp in Griffin-Lim). Callers that score
    batches hear such rows as the silence a WAV file would carry, and count them.
    """
    ok = ~nonfinite_rows(mels)
    waves = torch.zeros(len(mels), vocoder.spec.num_samples)
    if bool(ok.any()):
        waves[ok] = vocode(mels[ok], vocoder, batch_size)
    ok &= ~nonfinite_rows(waves)
    waves[~ok] = 0.0
    return waves, ok
