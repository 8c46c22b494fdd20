"""Errors that every part of the package shares."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for (a bad option, a missing file).

    The command line prints it as one ``error:`` line, exit status 2, no traceback.
    """
