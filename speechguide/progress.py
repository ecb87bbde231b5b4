"""Progress and ETA of long commands (evaluate, evaluate-voice, calibrate, tune, train) on a terminal.

One bar per job: done/total, a status line, elapsed time and the time remaining. It shows only when
stdout is a terminal, so CI logs and redirected output stay free of redraws; `enabled=False` (a
`--no-progress` flag) hides it on a terminal too. The library code reports through plain callbacks
(`update(done, total, status)`), so it never depends on how progress is shown.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Optional, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# update(completed=None, total=None, status=None, advance=0): any of them may be left out.
Update = Callable[..., None]


def on_terminal(stream: Optional[TextIO] = None) -> bool:
    """Whether `stream` (default stdout) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextlib.contextmanager
def job_progress(description: str, total: Optional[float] = None, enabled: bool = True, stream: Optional[TextIO] = None) -> Iterator[Update]:
    """A progress bar with an ETA for one job, shown only on a terminal; yields its `update` function."""
    stream = sys.stdout if stream is None else stream
    shown = enabled and on_terminal(stream)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(file=stream),
        disable=not shown,
    )
    task = bar.add_task(description, total=total, status="")

    def update(completed: Optional[float] = None, total: Optional[float] = None, status: Optional[str] = None, advance: float = 0) -> None:
        fields = {k: v for k, v in dict(completed=completed, total=total, status=status).items() if v is not None}
        bar.update(task, advance=advance or None, **fields)

    with bar:
        yield update
