"""Keeps one worker node of the local cluster running: runs its `ray start --block`, starts it again when it dies.

Why: on Kubernetes the KubeRay operator recreates a worker pod that died, and the Ray autoscaler replaces a lost
VM; the new node brings the same custom resources, so the Serve replicas pinned to it (`denoiser_node`,
`classifier_node`) and the Tune trials waiting to be retried get a place again. On one machine nothing would, and
a replica pinned to a dead node would stay pending forever. So `speechguide cluster up` starts each worker node
under this keeper, which plays the operator's part. The head is not kept: its GCS holds the cluster's state, and
losing it ends the cluster (as it does without GCS fault tolerance on Kubernetes).

The keeper leads the node's session (`up` starts it with a session of its own) and the node's processes stay in
that session. `down` sends it SIGTERM: it stops restarting, passes the SIGTERM on to `ray start` (which stops its
node) and exits with its code. Each restart is one line in the node's log ("[keeper] ..."), which
`speechguide cluster status` counts. Standard library only: it runs as a script with the venv's Python.

    python cluster/local/keeper.py [--restart-delay S] -- ray start --block ...
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from typing import Optional

RESTART_LINE = "[keeper] node exited"  # how a restart reads in the node's log (nodes.status counts these)
DEFAULT_RESTART_DELAY_S = 1.0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--restart-delay", type=float, default=DEFAULT_RESTART_DELAY_S, help="seconds between a death and the restart")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the node's command, after --")
    a = p.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        p.error("no command given after --")

    stopping = False
    child: Optional[subprocess.Popen] = None

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    restarts, code = 0, 0
    while not stopping:
        child = subprocess.Popen(command)  # same session and log as the keeper
        code = child.wait()
        if stopping:
            break
        restarts += 1
        print(f"{RESTART_LINE} with code {code}; starting it again in {a.restart_delay:g} s (restart {restarts})", flush=True)
        deadline = time.monotonic() + a.restart_delay
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
    return code


if __name__ == "__main__":
    sys.exit(main())
