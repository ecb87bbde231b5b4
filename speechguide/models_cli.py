"""`speechguide models list|register|promote`: the MLflow model registry from the command line.

MLflow is imported inside the commands only, so the main command line stays quick; `register`
adds the group to the CLI's typer app.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from speechguide.common import fail

TRACKING_HELP = "MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory)."


def _quiet_mlflow() -> None:
    """Drop MLflow's progress bars (the registry calls are given --tracking-uri explicitly), and give up on a
    server that does not answer within seconds rather than minutes."""
    from mlops.tracking import fail_fast_http

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    fail_fast_http()


def _registry_failed(exc: Exception) -> None:
    """One line and the exit code: 1 when the registry is unavailable (not the user's input; try again
    later), 2 for anything the user named wrong."""
    from mlops.registry import RegistryUnavailable

    if isinstance(exc, RegistryUnavailable):
        typer.echo(f"speechguide: error: {exc}", err=True)
        raise typer.Exit(1)
    fail(str(exc))


def register(app: typer.Typer) -> None:
    """Add the `models` command group to `app`."""
    models_app = typer.Typer(no_args_is_help=True, help="The MLflow model registry: register, list and promote models and profiles.")
    app.add_typer(models_app, name="models")

    @models_app.command("list")
    def list_command(
        tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    ) -> None:
        """Show every registered model: versions, aliases, kind and content hash."""
        _quiet_mlflow()
        from rich.console import Console
        from rich.table import Table

        from mlops.registry import RegistryError, list_registered
        from mlops.tracking import resolve_tracking_uri

        try:
            models = list_registered(tracking_uri=tracking_uri)
        except RegistryError as exc:
            _registry_failed(exc)
        table = Table(title=f"registered models ({resolve_tracking_uri(tracking_uri)})")
        for col in ("name", "version", "aliases", "kind", "sha256", "details"):
            table.add_column(col)
        for rm in models:
            for v in rm.versions:
                details = " ".join(f"{k.removeprefix('metric.')}={val}" for k, val in sorted(v.tags.items()) if k.startswith("metric."))
                if not details:
                    details = v.tags.get("file", "") or v.tags.get("profile_name", "")
                table.add_row(rm.name, str(v.version), ",".join(v.aliases), v.tags.get("kind", ""), v.tags.get("sha256", "")[:12], details)
        Console(width=160).print(table)
        if not models:
            typer.echo("no registered models yet: `speechguide models register` registers the models directory")

    @models_app.command("register")
    def register_command(
        models_dir: Optional[Path] = typer.Option(
            None, "--models-dir", envvar="SPEECHGUIDE_MODELS", help="Directory of *.safetensors model files (default: models/)."
        ),
        profile: Optional[Path] = typer.Option(None, "--profile", help="Also register this guidance profile (JSON)."),
        profile_name: str = typer.Option("speechguide-profile", "--profile-name", help="Registered model name for --profile."),
        alias: list[str] = typer.Option(["candidate"], "--alias", help="Alias(es) the new versions get (repeatable)."),
        production_if_missing: bool = typer.Option(
            True, "--production-if-missing/--no-production-if-missing",
            help="A model file with no production version yet becomes production at once.",
        ),
        tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    ) -> None:
        """Register every model file of the models directory (and optionally a profile); identical files are not duplicated."""
        _quiet_mlflow()
        from guidance.pipeline import default_models_dir
        from mlops.registry import RegistryError, promote, register_models_dir, register_profile

        root = models_dir or default_models_dir()
        if not root.is_dir():
            fail(f"--models-dir {root} is not a directory")
        for a in alias:
            if not a or a.isdigit() or a == "latest":
                fail(f"--alias {a!r}: an alias must not be empty, a number or 'latest'")
        prof = None
        if profile is not None:
            from pydantic import ValidationError

            from guidance.guides import GuidanceProfile

            try:
                prof = GuidanceProfile.load(profile)
            except (OSError, ValueError, ValidationError) as exc:
                fail(f"--profile {profile}: {' '.join(str(exc).split())[:300]}")
        try:
            for info in register_models_dir(root, aliases=tuple(alias), production_if_missing=production_if_missing, tracking_uri=tracking_uri):
                typer.echo(f"{info.name} version {info.version}  aliases: {', '.join(info.aliases)}")
            if prof is not None:
                aliases = alias or ["candidate"]
                version = register_profile(prof, profile_name, {}, alias=aliases[0], tracking_uri=tracking_uri)
                for a in aliases[1:]:
                    promote(profile_name, version, a, tracking_uri=tracking_uri)
                typer.echo(f"{profile_name} version {version}  aliases: {', '.join(aliases)} (profile {prof.name!r})")
        except RegistryError as exc:
            _registry_failed(exc)

    @models_app.command("promote")
    def promote_command(
        name: str = typer.Argument(..., help="Registered model name, e.g. speechguide-profile or classifier-noisy."),
        source: str = typer.Option("candidate", "--from", help="Alias whose version is promoted."),
        to: str = typer.Option("production", "--to", help="Alias to move."),
        version: Optional[int] = typer.Option(None, "--version", help="Promote this version instead of --from's."),
        tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    ) -> None:
        """Move alias --to (production) to the version --from (candidate) or --version names.

        One write on the registry: the alias moves or it does not. Exit 1 when the registry does not answer
        (run it again once it does; promoting the same version twice changes nothing), 2 for a bad name."""
        _quiet_mlflow()
        from mlops.registry import RegistryError, RegistryUnavailable, promote, resolve

        if version is not None and version < 1:
            fail(f"--version must be at least 1, got {version}")
        try:
            before = None
            try:
                before = resolve(name, to, tracking_uri=tracking_uri).version
            except RegistryUnavailable:
                raise
            except RegistryError:
                pass  # no such alias yet (an unknown model fails below, with its own message)
            got = promote(name, version if version is not None else source, to, tracking_uri=tracking_uri)
        except RegistryError as exc:
            _registry_failed(exc)
        moved = "unchanged at" if before == got else (f"moved from version {before} to" if before else "set to")
        typer.echo(f"{name}@{to} {moved} version {got}")
