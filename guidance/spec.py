"""The project's feature spec: default front end with normalisation measured on FSDD's training split."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from guidance.data import fsdd_split, list_fsdd, resolve_fsdd_root
from guidance.features import FeatureSpec


@lru_cache(maxsize=4)
def project_spec(root: str | os.PathLike | None = None) -> FeatureSpec:
    """`FeatureSpec()` with mean/std fitted on the FSDD training takes (deterministic, rounded)."""
    from guidance.data import fit_normalization

    clips = fsdd_split(list_fsdd(resolve_fsdd_root(root)), "train")
    return fit_normalization(clips, FeatureSpec())
