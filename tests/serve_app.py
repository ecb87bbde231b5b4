"""Running Serve apps in tests: one local Ray cluster with Serve started, shared by the modules that deploy
apps on it one after another (tests/test_parity.py, test_serve.py, test_serve_registry.py).

Starting a 2-CPU Ray cluster, Serve's controller and proxy and shutting them down again costs about 20 s
on a 2-core machine; each module paid it. Now each module deploys its apps on the shared cluster
(`SharedServeCluster.app`, the same `deploy` that `serve run CONFIG.yaml` goes through) and deletes them
when it ends; conftest.py keeps the modules together and stops the cluster after the last one, before
any other module starts a cluster of its own. The benches start a cluster per app (`serve.launch.running_app`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from serve.launch import free_port

__all__ = ["SharedServeCluster"]

# What the replicas of every module need in their environment: Ray's workers inherit the raylet's, that is the
# driver's when the cluster started, not what a later module sets. No network for Hugging Face guides (test_parity);
# the registry's model cache (test_serve_registry) goes to a temporary directory of the cluster's own.
WORKER_ENV = {"HF_HUB_OFFLINE": "1"}


class SharedServeCluster:
    """A local 2-CPU Ray cluster with Serve's proxy on a free loopback port, started on first use."""

    def __init__(self) -> None:
        self.port: Optional[int] = None
        self.metrics_port: Optional[int] = None
        self.registry_cache: Optional[Path] = None

    @property
    def running(self) -> bool:
        return self.port is not None

    def start(self) -> "SharedServeCluster":
        if self.running:
            return self
        import ray
        from ray.serve._private import api as serve_private

        self.registry_cache = Path(tempfile.mkdtemp(prefix="registry-cache-"))
        env = {**WORKER_ENV, "SPEECHGUIDE_REGISTRY_CACHE": str(self.registry_cache)}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self.metrics_port = free_port()
            ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="serve", log_to_driver=False,
                     _metrics_export_port=self.metrics_port)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        port = free_port()
        serve_private.serve_start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="EveryNode")
        self.port = port
        return self

    @property
    def url(self) -> str:
        assert self.port is not None, "the shared cluster is not running"
        return f"http://127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def app(self, config_path: str | Path, timeout_s: float = 240, **prepare_kwargs) -> Iterator[str]:
        """Deploy `config_path` (with `prepare_config` overrides) on the cluster, yield its base URL, delete its apps."""
        from ray import serve

        from serve.launch import deploy, prepare_config

        self.start()
        config = prepare_config(config_path, port=self.port, **prepare_kwargs)
        try:
            deploy(config, timeout_s=timeout_s)
            yield self.url
        finally:
            for application in config.applications:
                with contextlib.suppress(Exception):
                    serve.delete(application.name)

    def stop(self) -> None:
        if not self.running:
            return
        import shutil

        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.port = self.metrics_port = None
            if self.registry_cache is not None:
                shutil.rmtree(self.registry_cache, ignore_errors=True)
