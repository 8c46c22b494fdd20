"""What every metric shares: its output, and checks of the fields a row must carry.

Nothing heavy is imported here: the registry and the command line use it to describe
metrics without loading scikit-learn, jiwer or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class MetricOutput:
    """A metric over a list of rows.

    ``value`` is a fraction (0.0372 for 3.72 % WER); ``count`` the rows it was computed
    on; ``skipped`` the rows (indices into the input list) the metric itself had to
    leave out, each with the reason; ``details`` anything else worth reporting
    (per-category values, an unpenalised score, error counts...).
    """

    value: float
    count: int
    details: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[int, str]] = field(default_factory=list)


# ----------------------------------------------------------------------- row checks
def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _field_error(row: dict[str, Any], key: str, *, allow_list: bool, allow_str: bool = True,
                 non_empty: bool = True) -> str | None:
    if key not in row:
        return f"missing field {key!r}"
    value = row[key]
    if allow_str and isinstance(value, str):
        if non_empty and not value.strip():
            return f"empty {key!r}"
        return None
    if allow_list and _is_str_list(value):
        if non_empty and not any(v.strip() for v in value):
            return f"empty {key!r}"
        return None
    wanted = " or ".join(
        kind for kind, ok in (("a string", allow_str), ("a list of strings", allow_list)) if ok
    )
    kind = "null" if value is None else type(value).__name__
    return f"{key!r} is not {wanted} (got {kind})"


def check_transcript(row: dict[str, Any]) -> str | None:
    # An empty reference is the official script's "skip this pair", counted by the metric.
    return _field_error(row, "text", allow_list=False, non_empty=False)


def check_label(row: dict[str, Any]) -> str | None:
    return _field_error(row, "label", allow_list=True)


def check_closed_qa(row: dict[str, Any]) -> str | None:
    # Whatever the official compute_qa_acc.py scores: a string answer (an empty one too),
    # choices as a list of strings (empty or null: no choices; a string, as there, is
    # iterated character by character).
    error = _field_error(row, "answer", allow_list=False, non_empty=False)
    if error:
        return error
    if "choices" not in row:
        return "missing field 'choices'"
    choices = row["choices"]
    if not (choices is None or isinstance(choices, str) or (
            isinstance(choices, list) and all(isinstance(c, str) for c in choices))):
        return "'choices' is not a list of strings"
    return None


def reference_key(row: dict[str, Any]) -> str:
    """Where a caption / open-QA row keeps its reference(s): ``text``, else ``answer``."""
    return "text" if "text" in row else "answer"


def check_references(row: dict[str, Any]) -> str | None:
    if "text" not in row and "answer" not in row:
        return "missing field 'text' (or 'answer')"
    return _field_error(row, reference_key(row), allow_list=True)


def references(row: dict[str, Any]) -> list[str]:
    """The row's reference captions/answers as a list."""
    value = row[reference_key(row)]
    return [value] if isinstance(value, str) else list(value)
