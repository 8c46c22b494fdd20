"""The progress bar of every long command: batch inference, evaluation runs, benchmarks.

On standard error, so that standard output stays the command's result (``--json``,
answers one per line); silent when disabled.
"""

from __future__ import annotations

from typing import Any

from midashenglm.terminal import markup_text


class ProgressBar:
    """``with ProgressBar(total, "what") as bar: bar.advance(n, label)``.

    ``total`` may be None (unknown: no time remaining is shown); ``label`` replaces the
    text at the end of the bar (a rate, the step running now); ``transient`` removes the
    bar when it is done. Both texts are shown literally (no rich markup, controls escaped).
    """

    def __init__(self, total: float | None, description: str, *, enabled: bool = True,
                 transient: bool = False) -> None:
        self._progress: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[label]}"),
            console=Console(stderr=True), transient=transient,
        )
        self._task = self._progress.add_task(markup_text(description), total=total, label="")

    def advance(self, n: float = 1, label: str | None = None) -> None:
        if self._progress is not None:
            fields = {} if label is None else {"label": markup_text(label)}
            self._progress.update(self._task, advance=n, **fields)

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
