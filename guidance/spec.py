"""The project's feature spec: default front end with normalisation measured on FSDD's training split."""

from __future__ import annotations

import json
import os
from functools import lru_cache

from guidance.data import feature_cache_path, fit_normalization, fsdd_split, list_fsdd, resolve_fsdd_root
from guidance.features import FeatureSpec
from guidance.files import private_temp_path


@lru_cache(maxsize=4)
def project_spec(root: str | os.PathLike | None = None) -> FeatureSpec:
    """`FeatureSpec()` with mean/std fitted on the FSDD training takes (deterministic, rounded).

    The fit reads every training clip, so its result is cached on disk next to the feature caches,
    keyed the same way (front end and file list): every `train` run and test session reuses it.
    """
    clips = fsdd_split(list_fsdd(resolve_fsdd_root(root)), "train")
    cache = feature_cache_path("train", FeatureSpec(), clips, "-normalization", None).with_suffix(".json")
    if cache.exists():
        return FeatureSpec.from_dict(json.loads(cache.read_text()))
    spec = fit_normalization(clips, FeatureSpec())
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_temp_path(cache)
    tmp.write_text(spec.to_json())
    tmp.replace(cache)
    return spec
