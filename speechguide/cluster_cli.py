"""`speechguide cluster up|down|status|render|check`: a local multi-node Ray cluster and the cluster manifests.

Kept apart from `speechguide.cli` so that the main command line never imports Ray; `register`
adds the command group to the CLI's typer app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from speechguide.common import fail

PORT_HELP = "GCS port of the local cluster's head (not Ray's default 6379, so it never meets another local cluster)."
STATE_HELP = "Directory for the cluster's state, logs and Ray temp files (default /tmp/speechguide-ray-PORT)."


def _state_dir(port: int, state_dir: Optional[Path]) -> Path:
    from cluster.local.nodes import default_state_dir

    if not 1024 <= port <= 65535:
        fail(f"--port must be between 1024 and 65535, got {port}")
    return state_dir or default_state_dir(port)


def register(app: typer.Typer) -> None:
    """Add the `cluster` command group to `app`."""
    from cluster.local.nodes import DEFAULT_GCS_PORT

    group = typer.Typer(
        no_args_is_help=True,
        help="A local three-node Ray cluster (head + denoiser node + classifier node) and the cluster manifests.",
    )
    app.add_typer(group, name="cluster")

    @group.command("up")
    def up_command(
        port: int = typer.Option(DEFAULT_GCS_PORT, "--port", help=PORT_HELP),
        state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
        head_cpus: int = typer.Option(1, "--head-cpus", help="Logical CPUs of the head node."),
        worker_cpus: int = typer.Option(2, "--worker-cpus", help="Logical CPUs of each worker node."),
        object_store_mb: int = typer.Option(150, "--object-store-mb", help="Object store per node, MiB."),
        dashboard: bool = typer.Option(True, "--dashboard/--no-dashboard", help="Dashboard on 127.0.0.1 (Ray's state API needs it)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the node commands (`ray start`, workers under their keeper) and start nothing."),
    ) -> None:
        """Start a Ray head and two worker nodes on this machine; print the address for RAY_ADDRESS.

        Custom resources: head_node on the head, denoiser_node and classifier_node on the workers.
        A worker node that dies is started again (cluster/local/keeper.py), as KubeRay recreates a worker pod.
        """
        import shlex

        from cluster.local import nodes

        root = _state_dir(port, state_dir)
        for name, value, lo in (("head-cpus", head_cpus, 1), ("worker-cpus", worker_cpus, 1), ("object-store-mb", object_store_mb, 80)):
            if value < lo:
                fail(f"--{name} must be at least {lo}, got {value}")
        specs = nodes.default_nodes(head_cpus, worker_cpus)
        if dry_run:
            dash = nodes.free_port() if dashboard else None
            for i, spec in enumerate(specs):
                cmd = nodes.kept(spec, nodes.start_command(spec, i, port, root, object_store_mb * 2**20, dash))
                typer.echo(f"# {spec.name}\n{shlex.join(cmd)}")
            return
        try:
            state = nodes.up(port, root, specs, object_store_mb, dashboard)
        except (RuntimeError, TimeoutError, ValueError) as exc:
            typer.echo(f"speechguide: error: {exc}", err=True)
            raise typer.Exit(1)
        typer.echo(f"cluster up: {len(state.nodes)} nodes; state in {root}")
        for n in state.nodes:
            typer.echo(f"  {n.name:<11} pid {n.pid:<8} resources {json.dumps(n.resources)}  log {n.log}")
        if state.dashboard_url:
            typer.echo(f"dashboard and state API: {state.dashboard_url}")
        typer.echo("to use it (clients given an address send Ray's token only in token mode):")
        typer.echo(f"  export RAY_ADDRESS={state.gcs_address} RAY_AUTH_MODE=token")
        typer.echo("  speechguide serve --config cluster/local/serve-config.yaml --no-blocking")
        typer.echo(f"stop it with: speechguide cluster down --port {port}" + (f" --state-dir {root}" if state_dir else ""))

    @group.command("down")
    def down_command(
        port: int = typer.Option(DEFAULT_GCS_PORT, "--port", help=PORT_HELP),
        state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
    ) -> None:
        """Stop the nodes `cluster up` started (and only those: never `ray stop`)."""
        from cluster.local import nodes

        for line in nodes.down(_state_dir(port, state_dir)):
            typer.echo(line)

    @group.command("status")
    def status_command(
        port: int = typer.Option(DEFAULT_GCS_PORT, "--port", help=PORT_HELP),
        state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    ) -> None:
        """The recorded node processes, and the nodes, resources and actors Ray's state API reports."""
        from cluster.local import nodes

        info = nodes.status(_state_dir(port, state_dir))
        if as_json:
            typer.echo(json.dumps(info, indent=2))
            return
        if not info["running"]:
            typer.echo(f"no local cluster running (state dir {info['state_dir']})")
            raise typer.Exit(1)
        typer.echo(f"GCS {info['gcs_address']}  dashboard {info['dashboard_url'] or '-'}  state {info['state_dir']}")
        for name, p in info["processes"].items():
            kept = f"  restarted {p['restarts']}x" if p.get("restarts") else ""
            typer.echo(f"  process {name:<11} pid {p['pid']:<8} {'alive' if p['alive'] else 'DEAD'}{kept}")
        for n in info.get("nodes", []):
            typer.echo(f"  node {n['node_id'][:12]} {n.get('state', 'ALIVE'):<6} {'head ' if n.get('is_head') else 'worker'} "
                       f"actors {n.get('actors', '-'):<3} resources {json.dumps(n['resources'], sort_keys=True)}")
        if "error" in info:
            typer.echo(f"state API: {info['error']}", err=True)
            raise typer.Exit(1)

    @group.command("render")
    def render_command(
        check: bool = typer.Option(False, "--check", help="Only check that the committed files equal a fresh render (exit 1 if not)."),
    ) -> None:
        """Regenerate the Serve configs under cluster/ (local, KubeRay, launcher) from serve/config.yaml."""
        from cluster import render

        try:
            code = render.main(["--check"] if check else [])
        except ValueError as exc:
            fail(str(exc))
        if code:
            raise typer.Exit(code)

    @group.command("check")
    def check_command(
        files: Optional[list[Path]] = typer.Argument(None, help="Manifests to check (default: every one under cluster/)."),
        crd_dir: Optional[Path] = typer.Option(None, "--crd-dir", help="KubeRay CRDs (default ../shared/schemas/kuberay beside the project)."),
    ) -> None:
        """Validate the cluster manifests offline, without Kubernetes or a cloud account.

        KubeRay CRD schemas (strict), serveConfigV2 against Ray's Serve schema, launcher YAML
        against Ray's ray-schema.json.
        """
        from cluster import validate

        crd = crd_dir or validate.DEFAULT_CRD_DIR
        if not crd.is_dir():
            fail(f"--crd-dir {crd} does not exist (KubeRay's CRDs: ray-operator/config/crd/bases in the KubeRay repo)")
        paths = files or validate.cluster_files()
        for p in paths:
            if not p.is_file():
                fail(f"{p} does not exist")
        bad = 0
        for p in paths:
            problems = validate.check_file(p, crd)
            bad += bool(problems)
            typer.echo(f"{'ok  ' if not problems else 'FAIL'} {p}")
            for line in problems:
                typer.echo(f"     {line}")
        if bad:
            raise typer.Exit(1)
