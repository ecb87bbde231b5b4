"""Start Ray, deploy a checked Serve config file, wait until it runs: one path for CLI, tests and bench.

Deploying a config goes the way `serve run CONFIG.yaml` goes (Serve's controller applies the
whole file: `args`, per-deployment options, `user_config`), so what the tests and the benchmark
exercise is exactly what `serve run` / `serve deploy` would run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

import ray
from ray import serve

from serve.config import check_config, load_config_file, with_overrides

# Where `speechguide serve`'s local cluster exports its Prometheus metrics (Ray's and the app's, serve.metrics).
DEFAULT_METRICS_PORT = 8080


def connect_ray(num_cpus: Optional[int] = None, metrics_export_port: Optional[int] = None) -> str:
    """Join $RAY_ADDRESS when set; otherwise start a private local cluster (no dashboard) that exports
    its metrics on `metrics_export_port` (None: a port Ray picks).

    `address="local"` never attaches to some other local cluster by accident.
    """
    if ray.is_initialized():
        return "existing"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace="serve", log_to_driver=False)
        return address
    ray.init(
        address="local", num_cpus=num_cpus, include_dashboard=False, namespace="serve", log_to_driver=False,
        _metrics_export_port=metrics_export_port,
    )
    return "local"


def prepare_config(
    path: str | Path,
    models_dir: Optional[str | Path] = None,
    host: Optional[str] = None,
    port: Optional[int] = None,
    user_config: Optional[dict] = None,
    deployments: Optional[dict[str, dict]] = None,
    args: Optional[dict] = None,
):
    """Load, override and check a config file; returns Ray's `ServeDeploySchema` (ValueError if bad)."""
    data = with_overrides(load_config_file(path), models_dir, host, port, user_config, deployments, args)
    return check_config(data)


def deploy(config, timeout_s: float = 180.0) -> None:
    """Apply a checked config on the connected cluster and wait until every app is RUNNING."""
    from ray.serve._private import api as serve_private  # what `serve run CONFIG.yaml` itself calls

    client = serve_private.serve_start(
        http_options=config.http_options.model_dump(),
        proxy_location=config.proxy_location,
        grpc_options=config.grpc_options.model_dump(),
    )
    client.deploy_apps(config, _blocking=False)
    wait_running([app.name for app in config.applications], timeout_s)


def wait_running(app_names: list[str], timeout_s: float = 180.0) -> None:
    """Poll `serve.status()` until every named app is RUNNING; raise with its message if it fails."""
    deadline = time.monotonic() + timeout_s
    last = {}
    while time.monotonic() < deadline:
        apps = serve.status().applications
        last = {n: apps[n].status if n in apps else "NOT_STARTED" for n in app_names}
        if all(s == "RUNNING" for s in last.values()):
            return
        failed = [n for n in app_names if n in apps and apps[n].status == "DEPLOY_FAILED"]
        if failed:
            raise RuntimeError(f"Serve app {failed[0]!r} failed to deploy: {apps[failed[0]].message[:2000]}")
        time.sleep(0.5)
    raise TimeoutError(f"Serve apps not running after {timeout_s:.0f} s: {last}")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(
    config_path: Path, timeout_s: float = 240, metrics_export_port: Optional[int] = None, **prepare_kwargs
) -> Iterator[str]:
    """Start a local 2-CPU Ray cluster, deploy `config_path` (with `prepare_config` overrides) on a free
    port and yield its base URL; shut Serve and Ray down afterwards, whatever happened (tests, benches).
    The cluster's Prometheus endpoint is http://127.0.0.1:`metrics_export_port`/metrics (None: a port Ray picks)."""
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, namespace="serve", log_to_driver=False,
        _metrics_export_port=metrics_export_port,
    )
    try:
        port = free_port()
        deploy(prepare_config(config_path, port=port, **prepare_kwargs), timeout_s=timeout_s)
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
