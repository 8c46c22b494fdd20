"""Errors that every part of the package shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console


class UserError(Exception):
    """A problem with what the user asked for (a bad option, a missing file).

    The command line prints it as one ``error:`` line, exit status 2, no traceback.
    """


def stderr_console() -> Console:
    """The one console for messages on stderr (``error:``, ``warning:``, progress notes).

    ``soft_wrap`` keeps every message on one line when stderr is a file or a pipe (rich
    would otherwise wrap at 80 columns there), so a log keeps one ``error:`` line per error.
    """
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)
