"""Files on disk: the one content hash the project uses for model files, weights and references."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Union

CHUNK = 1 << 20


def file_sha256(path: Union[str, Path]) -> str:
    """The SHA-256 of a file's bytes as 64 hex digits (read in 1 MiB chunks: model files can be large).

    Callers that show a short version (manifests, Serve responses) take a prefix of it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
