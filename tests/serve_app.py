"""One way for tests to run the Serve app on a real local Ray cluster and tear it down again."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(config_path: Path, timeout_s: float = 240, **prepare_kwargs) -> Iterator[str]:
    """Start a local Ray cluster, deploy `config_path` (with `prepare_config` overrides) on a free
    port and yield its base URL; shut Serve and Ray down afterwards, whatever happened."""
    import ray
    from ray import serve

    from serve.launch import deploy, prepare_config

    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="serve", log_to_driver=False)
    try:
        port = free_port()
        deploy(prepare_config(config_path, port=port, **prepare_kwargs), timeout_s=timeout_s)
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
