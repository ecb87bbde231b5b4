"""One process at a time compiles librosa's numba kernels.

librosa compiles numba kernels on first use (pYIN, the phase vocoder behind pitch shifting) and caches
them beside its sources. Processes that compile the same kernels at the same moment on a cold cache can
leave it inconsistent: seen with two F0-head labelling workers, after which every pYIN call in that venv
died with a segmentation fault. So each process makes its first call of each such librosa function under
a machine-wide file lock; a process that waited finds the kernels cached and only loads them.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock

LOCK_PATH = Path(tempfile.gettempdir()) / "speechguide-librosa-kernels.lock"
_used: set[str] = set()


@contextmanager
def first_use(name: str) -> Iterator[None]:
    """Run the body under the lock the first time this process uses librosa's `name`, freely afterwards."""
    if name in _used:
        yield
        return
    with FileLock(str(LOCK_PATH)):
        yield
    _used.add(name)
