"""A manifest of any task: one row per item, with its audio file and reference fields.

JSONL, JSON (a list of objects), CSV or TSV. The audio column is ``audio`` (or
``audio_path``, ``path``, ``file_name``, ``wav``), relative to the manifest's folder or
absolute; every other column is kept (``text``, ``label``, ``answer``, ``choices``,
``question``, ``lang``, ...). CSV cells holding JSON lists (``["a", "b"]``) become lists.
``id`` is the row's ``id`` column, else its audio name (numbered where one audio file
serves several rows).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError
from midashenglm.evaluation.loaders.base import item, read_table

AUDIO_COLUMNS = ("audio", "audio_path", "path", "file_name", "wav")


def load_manifest(path: Path, **_: Any) -> Iterator[dict]:
    rows = read_table(path)
    if not rows:
        raise UserError(f"{path}: the manifest has no rows")
    names = []
    for number, row in enumerate(rows, 1):
        name = next((row[c] for c in AUDIO_COLUMNS if row.get(c) not in (None, "")), None)
        if not isinstance(name, str):
            raise UserError(
                f"{path}, row {number}: no audio file column ({', '.join(AUDIO_COLUMNS)})"
            )
        names.append(name)
    repeats = Counter(names)
    seen: Counter[str] = Counter()
    for row, name in zip(rows, names, strict=True):
        seen[name] += 1
        item_id = row.get("id")
        if item_id in (None, ""):
            item_id = name if repeats[name] == 1 else f"{name}#{seen[name]}"
        source = Path(name).expanduser()
        if not source.is_absolute():
            source = path.parent / source
        fields = {k: v for k, v in row.items() if k not in ("id", *AUDIO_COLUMNS)}
        yield item(str(item_id), source, audio=name, **fields)
