"""A model host inside the ingress replica, called as its deployment handle would be (`args.colocate: ingress`).

On a small machine every process that only forwards tensors costs cores the models need: the
ingress replica then computes the steps itself. Its calls keep the handle's shape
(`host.answer_many.remote(rounds)`), so the ingress drives one code path whether the host is a
deployment or this object; the forward runs in the host's worker thread (`_Coalescer`), so the
replica's event loop keeps accepting requests and merging their steps while torch computes.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Awaitable


class _LocalMethod:
    def __init__(self, method: Any) -> None:
        self._method = method

    def remote(self, *args: Any) -> Awaitable[Any]:
        """The method's result as an awaitable, like a `DeploymentResponse` (sync methods answer at once)."""
        if inspect.iscoroutinefunction(self._method):
            return asyncio.ensure_future(self._method(*args))
        future = asyncio.get_running_loop().create_future()
        try:
            future.set_result(self._method(*args))
        except Exception as exc:  # the caller sees it when it awaits, as with a handle
            future.set_exception(exc)
        return future


class LocalHandle:
    """An in-process object with a deployment handle's calling convention (`handle.method.remote(...)`)."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> _LocalMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _LocalMethod(getattr(self.target, name))

    def options(self, **_: Any) -> "LocalHandle":
        raise ValueError("an in-process model host serves its own models only (no multiplexed registry models)")
