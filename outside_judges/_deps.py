"""Imports of the judges' third-party packages, with errors that say what to install.

The judges are optional extras of the project's evaluation: a missing package should say which
PyPI package brings it back, not surface as a bare ModuleNotFoundError deep in a decoder.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingJudgeDependency(ImportError):
    """A package that an outside judge needs is not installed."""


def require(module: str, package: str, why: str) -> ModuleType:
    """Import `module`, or raise `MissingJudgeDependency` naming the PyPI `package` to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingJudgeDependency(
            f"{why} needs the PyPI package {package!r} (import {module!r} failed: {exc}); "
            f"install it with `pip install {package}` or reinstall speechguide (`pip install -e .`)"
        ) from exc
