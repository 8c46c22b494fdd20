"""Append-only JSONL files that survive a kill: the state of every resumable batch job.

``midashenglm run`` and ``midashenglm benchmark`` both keep their progress in their
output file: each finished row is one line, flushed and fsynced; on restart a torn last
line is repaired, the rows already there are skipped, and ``--retry-errors`` rewrites
the file without its error rows (atomically).

Every JSON line the project writes (result files, ``--json`` output) comes from
:func:`dumps_line`: valid UTF-8 and one line whatever the row holds, and read back by
``json.loads`` to the very same strings.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from midashenglm.errors import UserError


def repair_tail(path: Path) -> int:
    """Make ``path`` end with a whole line; returns the bytes cut off.

    A kill mid-write leaves a last line without its newline. If that line is complete
    JSON only the newline was lost, and it is added; otherwise the line never was a row
    and is cut off.
    """
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
    except (json.JSONDecodeError, UnicodeDecodeError):
        with path.open("r+b") as fh:
            fh.truncate(cut)
            _sync(fh)
        return len(data) - cut
    with path.open("ab") as fh:
        fh.write(b"\n")
        _sync(fh)
    return 0


def parse_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, row, problem) of every non-blank line of a JSONL file: ``row`` is None
    and ``problem`` says why when the line is not a JSON object."""
    try:
        with path.open("r", encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    yield number, None, f"invalid JSON ({err.msg})"
                    continue
                if isinstance(row, dict):
                    yield number, row, None
                else:
                    yield number, None, "not a JSON object"
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def existing_rows(path: Path, *, hint: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of every non-blank line; a line that is not a JSON object is
    a :class:`UserError` naming it, followed by ``hint`` (what the user can do)."""
    for number, row, problem in parse_lines(path):
        if row is None:
            raise UserError(f"{path}, line {number}: {problem}" + (f"; {hint}" if hint else ""))
        yield number, row


def rewrite(path: Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite ``path`` with only the rows ``keep`` accepts (atomically); returns rows dropped."""
    kept, dropped = [], 0
    with path.open("r", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            if keep(json.loads(line)):
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)  # a crash keeps the old file whole
    return dropped


# Characters ``json.dumps(ensure_ascii=False)`` leaves raw that ``str.splitlines`` (and
# JavaScript before ES2019) take for line ends. They only occur inside JSON strings, so
# their escapes are an exact replacement.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def dumps_line(obj: Any, *, default: Callable[[Any], Any] | None = None) -> str:
    """``obj`` as one JSON line (no newline at the end) that is always valid UTF-8.

    Non-ASCII text stays readable (``ensure_ascii=False``), except on a line whose text
    holds lone surrogates (from ``\\udcff`` escapes in a manifest, or file names that are
    not UTF-8, which Python decodes to surrogates): that line is written ASCII-only, with
    ``\\udcff`` escapes, which ``json.loads`` reads back to the same string (and
    ``os.fsencode`` back to the original bytes of the name).
    """
    line = json.dumps(obj, ensure_ascii=False, default=default)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, default=default)
    return line.translate(_LINE_BREAKS)


def print_line(obj: Any, *, default: Callable[[Any], Any] | None = None,
               stream: IO[str] | None = None) -> None:
    """Print ``obj`` as one JSON line to ``stream`` (stdout), as UTF-8 bytes whatever the locale.

    JSON exchanged between programs is UTF-8 (RFC 8259), so the bytes go to the
    stream's binary buffer rather than through its text encoding: a Latin-1 or ASCII
    locale (or $PYTHONIOENCODING) can neither fail on a caption nor change its bytes.
    A stream without a buffer (an in-memory capture) takes the text.
    """
    stream = sys.stdout if stream is None else stream
    line = dumps_line(obj, default=default) + "\n"
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(line)
        stream.flush()
        return
    stream.flush()  # whatever was printed before goes first
    buffer.write(line.encode("utf-8"))
    buffer.flush()


def append_rows(fh: IO[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as JSON lines (see :func:`dumps_line`) and make them durable before returning."""
    for row in rows:
        fh.write(dumps_line(row, default=str) + "\n")
    _sync(fh)


def _sync(fh: IO[Any]) -> None:
    fh.flush()
    os.fsync(fh.fileno())
