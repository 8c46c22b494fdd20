"""Batch-job manifests (JSONL or CSV) and a crash-safe, resumable JSONL result file.

A manifest row names a clip (``audio``: a path, relative paths resolve against the
manifest's folder) and optionally ``prompt`` and ``system_prompt`` (in a CSV an empty
cell means the default; in JSONL ``"system_prompt": ""`` means none); every other
column is carried through to the output. Each output line is the input row plus
``model_output`` (or ``error``), ``usage`` (audio seconds and tokens, prompt and
completion tokens, finish reason) and ``_row`` (the row's index in the manifest).

Rows are keyed by ``(_row, audio)``. Every finished row is written as one line, flushed
and fsynced, so a killed job loses at most the rows in flight; on restart a torn last
line is cut off and rows already written are skipped.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midashenglm import jsonl
from midashenglm.errors import UserError

RESERVED = ("model_output", "error", "usage", "_row")


@dataclass
class ManifestRow:
    """One manifest record: its index, its columns, and why it is unusable (if it is)."""

    index: int
    data: dict[str, Any]
    error: str | None = None
    audio_path: Path | None = field(default=None)

    @property
    def key(self) -> tuple[int, str]:
        return (self.index, str(self.data.get("audio", "")))


def read_manifest(path: str | os.PathLike) -> Iterator[ManifestRow]:
    """Rows of a ``.jsonl`` (one JSON object per line) or ``.csv`` (with a header) manifest."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows = _jsonl_rows(path)
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise UserError(f"manifest {path}: use a .jsonl or .csv file (got {suffix or 'no suffix'!r})")
    for row in rows:
        yield _check_row(row, path.parent)


def _jsonl_rows(path: Path) -> Iterator[ManifestRow]:
    # A bad line becomes a row with an error (recorded in the output), not the end of the job.
    for index, (number, data, problem) in enumerate(jsonl.parse_lines(path)):
        yield ManifestRow(index, data or {}, f"{path.name} line {number}: {problem}" if problem else None)


def _csv_rows(path: Path, delimiter: str) -> Iterator[ManifestRow]:
    # utf-8-sig: spreadsheet programs write "CSV UTF-8" with a byte-order mark.
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            fieldnames = reader.fieldnames
        except UnicodeDecodeError as err:
            raise UserError(f"manifest {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        if fieldnames is None or "audio" not in fieldnames:
            raise UserError(f"manifest {path}: the header has no 'audio' column "
                            f"(columns: {fieldnames})")
        rows = enumerate(reader)
        while True:
            try:
                index, data = next(rows)
            except StopIteration:
                return
            except UnicodeDecodeError as err:
                raise UserError(f"manifest {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
            extra = data.pop(None, None)  # type: ignore[call-overload]
            error = f"{path.name} row {index + 1}: {len(extra)} value(s) beyond the header" if extra else None
            # A CSV cell cannot be absent, only empty: an empty prompt means "use the default".
            data = {k: v for k, v in data.items()
                    if v is not None and not (k in ("prompt", "system_prompt") and v == "")}
            yield ManifestRow(index, data, error)


def _check_row(row: ManifestRow, base: Path) -> ManifestRow:
    if row.error:
        return row
    audio = row.data.get("audio")
    if not isinstance(audio, str) or not audio.strip():
        row.error = f"row {row.index}: no 'audio' path"
        return row
    for name in ("prompt", "system_prompt"):
        value = row.data.get(name)
        if value is not None and not isinstance(value, str):
            row.error = f"row {row.index}: '{name}' must be a string"
            return row
    path = Path(os.path.expanduser(audio))
    row.audio_path = path if path.is_absolute() else base / path
    return row


def output_record(row: ManifestRow, *, output: str | None = None, error: str | None = None,
                  usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """The output line of one row: its columns, then the answer (or error) and the cost."""
    record = {k: v for k, v in row.data.items() if k not in RESERVED}
    record["_row"] = row.index
    if "audio" not in record:
        record["audio"] = row.data.get("audio", "")
    if error is None:
        record["model_output"] = output
    else:
        record["error"] = error
    if usage:
        record["usage"] = usage
    return record


def _key(record: dict[str, Any]) -> tuple[int, str]:
    return int(record["_row"]), str(record.get("audio", ""))


class ResultWriter:
    """Appends result lines durably; knows which manifest rows are already done."""

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False,
                 retry_errors: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[tuple[int, str]] = set()
        self.repaired = 0  # bytes of a torn last line that were cut off
        if overwrite:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            self._load(retry_errors)
        self._file = self.path.open("a", encoding="utf-8")

    def _load(self, retry_errors: bool) -> None:
        self.repaired = jsonl.repair_tail(self.path)
        hint = "pass --overwrite to start again or choose another file"
        for number, record in jsonl.existing_rows(self.path, hint=hint):
            if "_row" not in record:
                raise UserError(f"{self.path}, line {number}: not a result line of this tool "
                                f"(no '_row'); {hint}")
            if not (retry_errors and "error" in record):
                self.done.add(_key(record))
        if retry_errors:
            jsonl.rewrite(self.path, lambda record: "error" not in record)

    def write(self, record: dict[str, Any]) -> None:
        jsonl.append_rows(self._file, [record])
        self.done.add(_key(record))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
