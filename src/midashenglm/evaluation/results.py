"""Result files: the official JSONL format, read and written line by line.

One line per test item, as the official MiDashengLM evaluation files hold them::

    {"dataset_name": "LibriSpeech_test-clean", "audio": "1089-134686-0000.flac",
     "lang": "en", "text": "HE HOPED ...", "prompt": "Transcribe the speech into text <|en|>",
     "model_output": "HE HOPED ...", "model_name": "MiDashengLM"}

The reference sits in ``text`` (transcripts, captions), ``label`` (classification),
or ``answer`` (+ ``choices`` for closed QA). Reading never drops a line silently: a
line that is not a JSON object, or whose ``model_output`` is missing, not a string or
empty, becomes a :class:`Problem` with its file and line number. Which reference
fields a line needs depends on the metric; the scorer checks those.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from midashenglm import jsonl
from midashenglm.errors import UserError

# Fields of the official format. ``text``/``label``/``answer``/``choices`` depend on the task.
CORE_FIELDS = ("dataset_name", "audio", "prompt", "model_output", "model_name")
REFERENCE_FIELDS = ("text", "label", "answer", "choices")
OPTIONAL_FIELDS = ("lang", "question")


@dataclass(frozen=True)
class Problem:
    """A result line that could not be scored as it is, and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class ResultRow:
    """One parsed result line: the JSON object and where it came from."""

    data: dict[str, Any]
    line: int

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


@dataclass
class ResultFile:
    """The rows of a result file that parsed, and a :class:`Problem` for every other line."""

    path: Path
    rows: list[ResultRow] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # Rows kept although their output is empty: the official scripts score them (a wrong
    # answer for accuracy metrics, a skipped pair for WER), so they are scored, and listed.
    empty_outputs: list[Problem] = field(default_factory=list)

    @property
    def dataset_names(self) -> Counter[str]:
        return Counter(
            str(r.data["dataset_name"]) for r in self.rows if isinstance(r.get("dataset_name"), str)
        )


def write_row(fp: IO[str], row: dict[str, Any]) -> None:
    """Append one result row as a JSON line and flush, so an interrupted run loses nothing.

    ``row`` must carry a string ``model_output``; non-ASCII text is written as is
    (the official files are UTF-8 JSON without escapes), except on a line holding lone
    surrogates (a file name that is not UTF-8): see :func:`midashenglm.jsonl.dumps_line`.
    """
    if not isinstance(row, dict):
        raise TypeError(f"a result row must be a dict, got {type(row).__name__}")
    if not isinstance(row.get("model_output"), str):
        raise ValueError("a result row needs a string 'model_output'")
    fp.write(jsonl.dumps_line(row) + "\n")
    fp.flush()


def write_results(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rows`` to ``path`` (UTF-8 JSONL), replacing the file."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as fp:
        for row in rows:
            write_row(fp, row)
    return path


def read_results(path: str | Path) -> ResultFile:
    """Parse a JSONL result file; bad lines become problems, blank lines are ignored.

    Raises :class:`~midashenglm.errors.UserError` when the file cannot be read at all.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such result file")
    result = ResultFile(path)
    name = str(path)
    for number, row, problem in jsonl.parse_lines(path):
        reason = problem or _row_problem(row)  # type: ignore[arg-type]
        if reason is not None:
            result.problems.append(Problem(name, number, reason))
            continue
        result.rows.append(ResultRow(row, number))  # type: ignore[arg-type]
        if not row["model_output"].strip():  # type: ignore[index]
            result.empty_outputs.append(Problem(name, number, "empty 'model_output'"))
    return result


def _row_problem(row: dict[str, Any]) -> str | None:
    """Why a JSON object is not a usable result row (None when it is)."""
    if row.get("error"):
        # a row the runner recorded for a clip or batch that failed: say why
        return f"inference failed: {row['error']}"
    if "model_output" not in row:
        return "missing field 'model_output'"
    output = row["model_output"]
    if not isinstance(output, str):
        return f"'model_output' is not a string (got {_type_name(output)})"
    return None


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__
