"""Question answering test sets: MMAU, MuChoMusic (closed), MusicQA, AudioCaps-QA (open)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError
from midashenglm.evaluation.loaders.base import (
    AudioIndex,
    column,
    find_file,
    find_table,
    item,
    missing,
    read_csv,
    read_json,
    read_table,
)

_AUDIO_COLUMNS = ("audio", "audio_id", "audio_path", "audio_name", "file_name", "path", "music")


def load_mmau(root: Path, split: str = "test-mini", **_: Any) -> Iterator[dict]:
    """``mmau-test-mini.json``: a list of ``{id, audio_id: "./test-mini-audios/ID.wav",
    question, choices, answer (an option text), task: sound|music|speech, ...}``."""
    table = find_file(root, f"mmau-{split}.json", "mmau*.json", required=f"mmau-{split}.json")
    assert table is not None
    rows = read_json(table)
    if not isinstance(rows, list):
        raise UserError(f"{table}: expected a list of questions")
    index = AudioIndex(table.parent)
    for number, row in enumerate(rows, 1):
        rel = str(row.get("audio_id") or "")
        if not rel or "question" not in row or "choices" not in row:
            raise UserError(f"{table}, question {number}: needs audio_id, question and choices")
        audio = index.find(rel) or missing(table.parent, rel)
        extra = {k: v for k, v in row.items() if k not in ("id", "audio_id", "question",
                                                            "choices", "answer")}
        yield item(row.get("id") or rel, audio, audio=Path(rel).name, question=row["question"],
                   choices=list(row["choices"]), answer=row.get("answer", ""), **extra)


def load_muchomusic(root: Path, seed: int = 0, **_: Any) -> Iterator[dict]:
    """``muchomusic.csv`` (``question, dataset (sdd|musiccaps), dataset_identifier,
    correct_answer, distractor_1_answer .. distractor_3_answer, ...``) with the Song
    Describer (``TRACK.2min.mp3``) and MusicCaps clips below ``root``; the four options are
    shuffled reproducibly (``seed``) and the answer is stored as its letter, as the
    official result file has it. A JSON/JSONL export with ``question, choices, answer,
    audio`` works too."""
    table = find_file(root, "muchomusic.csv")
    if table is None:
        yield from load_qa_table(root, closed=True)
        return
    index = AudioIndex(root)
    for number, row in enumerate(read_csv(table)):
        assert isinstance(row, dict)
        options = [row["correct_answer"], *(row.get(f"distractor_{i}_answer", "")
                                            for i in (1, 2, 3))]
        options = [o for o in options if o]
        order = list(range(len(options)))
        random.Random(f"{seed}:{number}").shuffle(order)
        choices = [options[i] for i in order]
        ident = row.get("dataset_identifier", "").removesuffix(".json")
        if row.get("dataset") == "sdd":
            audio = index.find(f"{ident}.2min.mp3", f"{ident}.mp3", ident)
        else:
            audio = index.find_youtube("_".join(ident.split("_")[:-1]) or ident)
        audio = audio or missing(root, f"{row.get('dataset', '')}/{ident}")
        yield item(str(number), audio, audio=audio.name, question=row["question"],
                   choices=choices, answer="ABCD"[order.index(0)],
                   source_dataset=row.get("dataset", ""), genre=row.get("genre", ""))


def load_qa_table(root: Path, table: str | None = None, closed: bool = False,
                  **_: Any) -> Iterator[dict]:
    """Any table of questions (MusicQA, AudioCaps-QA): JSON/JSONL/CSV/TSV rows with an audio
    column (``audio``, ``audio_id``, ``audio_name``, ``file_name``, ``Music``, ...), a
    ``question`` and an ``answer`` (and ``choices`` for closed QA)."""
    path = Path(table) if table else find_table(root, "test.jsonl", "test.json", "test.csv")
    rows = read_table(path)
    names = [str(column(r, *_AUDIO_COLUMNS, default="")) for r in rows]
    repeats = Counter(names)
    seen: Counter[str] = Counter()
    index = AudioIndex(root if path.is_relative_to(root) else path.parent)
    for number, (row, name) in enumerate(zip(rows, names, strict=True), 1):
        question, answer = column(row, "question"), column(row, "answer", "answers")
        if not name or question is None:
            raise UserError(f"{path}, row {number}: needs an audio column and a question")
        choices = column(row, "choices", "options")
        if closed and not isinstance(choices, list):
            raise UserError(f"{path}, row {number}: closed QA needs a list of choices")
        seen[name] += 1
        item_id = column(row, "id", "qa_id", "question_id")
        if item_id is None:
            item_id = name if repeats[name] == 1 else f"{name}#{seen[name]}"
        audio = index.find(name) or missing(path.parent, name)
        fields: dict[str, Any] = {"question": str(question), "answer": answer}
        if choices is not None:
            fields["choices"] = list(choices)
        yield item(str(item_id), audio, audio=Path(name).name, **fields)
