"""Append-only JSONL files that survive a kill: the state of every resumable batch job.

``midashenglm run`` and ``midashenglm benchmark`` both keep their progress in their
output file: each finished row is one line, flushed and fsynced; on restart a torn last
line is repaired, the rows already there are skipped, and ``--retry-errors`` rewrites
the file without its error rows (atomically).
"""

from __future__ import annotations

import json
import os
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


def append_rows(fh: IO[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as JSON lines (UTF-8 as is) and make them durable before returning."""
    for row in rows:
        fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    _sync(fh)


def _sync(fh: IO[Any]) -> None:
    fh.flush()
    os.fsync(fh.fileno())
