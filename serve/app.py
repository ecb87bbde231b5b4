"""The Serve application: ingress + denoiser + classifier, built from typed arguments.

`serve run serve.app:app` runs it with defaults (the models directory from
`guidance.pipeline.default_models_dir()`); `serve run serve/config.yaml` and `serve deploy`
call `build_app(args)` with the config file's `args:` and apply its per-deployment settings.
With `args.generator: score-subnet` (`serve run serve/config-fused.yaml`) the app is the ingress
and one `Fused` deployment (the single-backbone generator: one call and one backbone pass per step); with
`args.colocate` (`serve run serve/config-colocated.yaml`) one `ModelHost` deployment answers as both the
denoiser and the classifier; with `args.colocate: ingress` (`serve run serve/config-ingress.yaml`) each
ingress replica hosts the models itself (a ModelHost, or the Fused generator with score-subnet) and the app
has no model deployments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ray.serve import Application

from guidance.pipeline import default_models_dir
from serve.config import AppArgs
from serve.deployments import Classifier, Denoiser, Fused, ModelHost
from serve.ingress import SpeechIngress


def build_app(args: Optional[dict] = None) -> Application:
    """Bind the deployments of `args.generator`; `args` follows `serve.config.AppArgs` (unknown keys refused)."""
    parsed = AppArgs.model_validate(args or {})
    models_dir = str(Path(parsed.models_dir).resolve() if parsed.models_dir else default_models_dir().resolve())
    parsed = parsed.model_copy(update={"models_dir": models_dir})
    registry_uri = None
    if parsed.registry is not None:  # resolved here, where the app is built: replicas run elsewhere
        from mlops.tracking import default_tracking_uri

        registry_uri = parsed.registry.tracking_uri or default_tracking_uri()
        parsed = parsed.model_copy(update={"registry": parsed.registry.model_copy(update={"tracking_uri": registry_uri})})
    tuning = parsed.tuning.model_dump() if parsed.tuning else None
    if parsed.colocate == "ingress":  # each ingress replica builds its own model host (serve.local_host)
        return SpeechIngress.bind(None, None, parsed.model_dump(mode="json"))
    if parsed.generator == "score-subnet":
        fused = Fused.options(user_config=tuning) if tuning is not None else Fused
        return SpeechIngress.bind(None, None, parsed.model_dump(mode="json"), fused.bind(models_dir, parsed.score_subnet, parsed.device, tuning))
    hf_guides = {k: v.model_dump() for k, v in parsed.hf_guides.items()}
    if parsed.colocate:  # one deployment answers both roles
        host = ModelHost.options(user_config=tuning) if tuning is not None else ModelHost
        bound = host.bind(models_dir, parsed.device, tuning, hf_guides, parsed.vocoder)
        return SpeechIngress.bind(bound, bound, parsed.model_dump(mode="json"))
    denoiser, classifier = Denoiser, Classifier
    if tuning is not None:  # a config file's per-deployment user_config still wins over this default
        denoiser = Denoiser.options(user_config=tuning)
        classifier = Classifier.options(user_config=tuning)
    return SpeechIngress.bind(
        denoiser.bind(models_dir, parsed.device, tuning, registry_uri),
        classifier.bind(models_dir, parsed.device, tuning, registry_uri, hf_guides, parsed.vocoder),
        parsed.model_dump(mode="json"),
    )


app = build_app({})
