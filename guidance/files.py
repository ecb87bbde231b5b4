"""Files on disk: the one content hash the project uses for model files, weights and references, and the
private temporary name a shared cache file is written under before its rename."""

from __future__ import annotations

import hashlib
import os
import uuid
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


def private_temp_path(path: Union[str, Path]) -> Path:
    """A temporary name beside `path` that no other process or thread picks.

    Caches are filled by whichever process needs them first; several can do so at once (parallel test
    workers, Tune trials, Serve replicas). Each writes its own temporary file and renames it over `path`, so a
    reader sees one whole file, never two writers' bytes interleaved in one shared temporary."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
