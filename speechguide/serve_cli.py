"""`speechguide serve`: run the Ray Serve app from its config file, on a local cluster or $RAY_ADDRESS.

Kept apart from `speechguide.cli` so that the main command line never imports Ray; `register`
adds the command to the CLI's typer app.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from speechguide.common import fail

REQUIRED_MODELS = ("denoiser", "noisy_classifier", "clean_classifier")


def _effective_models_dir(models_dir: Optional[Path], config: dict) -> Path:
    from guidance.pipeline import default_models_dir
    from serve.config import APP_BUILDER

    if models_dir is not None:
        return models_dir
    for app in config.get("applications") or []:
        if app.get("import_path") == APP_BUILDER and (app.get("args") or {}).get("models_dir"):
            return Path(app["args"]["models_dir"])
    return default_models_dir()


def _check_models_dir(root: Path) -> None:
    """Refuse to start when a model the app loads is missing: say which, not a replica traceback."""
    from guidance.models import read_metadata
    from guidance.pipeline import ModelPaths

    if not root.is_dir():
        fail(f"models directory {root} does not exist")
    paths = ModelPaths(root=root)
    for name in REQUIRED_MODELS:
        path = paths.path(name)
        if not path.is_file():
            fail(f"models directory {root} lacks {path.name} (train it with `make models`, or pass --models-dir)")
        try:
            read_metadata(path)
        except ValueError as exc:
            fail(str(exc))


def sigterm_as_interrupt() -> None:
    """Stop on SIGTERM as on Ctrl-C. `docker stop`, Kubernetes and systemd send SIGTERM; Ray's own handler
    (installed by ray.init) printed a crash-style stack dump and skipped Serve's shutdown."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def register(app: typer.Typer) -> None:
    """Add the `serve` command to `app`."""

    @app.command("serve")
    def serve_command(
        config: Optional[Path] = typer.Option(None, "--config", help="Serve config file (default: serve/config.yaml)."),
        models_dir: Optional[Path] = typer.Option(
            None, "--models-dir", envvar="SPEECHGUIDE_MODELS", help="Directory of model files (default: the config's, else models/)."
        ),
        host: str = typer.Option(
            "127.0.0.1", "--host",
            help="Address the HTTP proxy binds (loopback by default). Any other address needs an API token in $SPEECHGUIDE_API_TOKEN.",
        ),
        port: int = typer.Option(8000, "--port", help="HTTP port."),
        metrics_port: Optional[int] = typer.Option(
            None, "--metrics-port", help="Port of the local cluster's Prometheus endpoint, /metrics (default 8080); ignored with RAY_ADDRESS."
        ),
        blocking: bool = typer.Option(
            True, "--blocking/--no-blocking", help="Stay in the foreground until Ctrl-C (--no-blocking needs RAY_ADDRESS)."
        ),
    ) -> None:
        """Serve POST /v1/generate, GET /v1/models and GET /healthz over HTTP with Ray Serve.

        Starts a local Ray cluster unless RAY_ADDRESS names one to join.
        """
        from serve.auth import AuthConfigError
        from serve.config import DEFAULT_CONFIG_PATH, check_config, check_http_auth, load_config_file, with_overrides

        from serve.launch import DEFAULT_METRICS_PORT

        metrics_port = DEFAULT_METRICS_PORT if metrics_port is None else metrics_port
        for name, value in (("--port", port), ("--metrics-port", metrics_port)):
            if not 1 <= value <= 65535:
                fail(f"{name} must be between 1 and 65535, got {value}")
        if metrics_port == port:
            fail(f"--metrics-port must differ from --port ({port})")
        if not host.strip():
            fail("--host must not be empty")
        if not blocking and not os.environ.get("RAY_ADDRESS"):
            fail("--no-blocking needs a cluster that outlives this command: set RAY_ADDRESS (a local cluster stops with it)")
        config_path = config or DEFAULT_CONFIG_PATH
        try:
            raw = load_config_file(config_path)
        except (FileNotFoundError, ValueError) as exc:
            fail(f"--config: {exc}")
        root = _effective_models_dir(models_dir, raw).resolve()
        _check_models_dir(root)
        try:
            schema = check_config(with_overrides(raw, models_dir=root, host=host, port=port))
        except ValueError as exc:
            fail(f"--config {config_path}: {exc}")
        if not os.environ.get("RAY_ADDRESS"):  # a local cluster's replicas see this environment; a remote one's check their own
            try:
                check_http_auth(schema)
            except AuthConfigError as exc:
                fail(f"--host {host}: {exc}")

        from ray import serve

        from serve.launch import connect_ray, deploy

        where = connect_ray(metrics_export_port=metrics_port)
        typer.echo(f"Ray: {'started a local cluster' if where == 'local' else 'joined ' + where}; deploying {config_path} ...")
        try:
            deploy(schema)
        except (RuntimeError, TimeoutError) as exc:
            typer.echo(f"speechguide: error: {exc}", err=True)
            raise typer.Exit(1)
        typer.echo(f"serving on http://{host}:{port}  (POST /v1/generate, GET /v1/models, GET /healthz; models: {root})")
        typer.echo(f"playground: http://{host}:{port}/   API reference: http://{host}:{port}/docs")
        if where == "local":
            typer.echo(f"metrics (Prometheus): http://127.0.0.1:{metrics_port}/metrics")
        if not blocking:
            return
        typer.echo("press Ctrl-C to stop")
        sigterm_as_interrupt()
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            typer.echo("stopping", err=True)
            if where == "local":
                serve.shutdown()
        finally:
            sys.stdout.flush()
