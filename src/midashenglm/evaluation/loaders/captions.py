"""Captioning test sets: AudioCaps, Clotho, MusicCaps, Song Describer, Auto-ACD (and any
table of audio + caption)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError
from midashenglm.evaluation.loaders.base import (
    AudioIndex,
    as_bool,
    column,
    find_file,
    find_table,
    item,
    missing,
    read_csv,
    read_table,
)


def _grouped(rows: list[tuple[str, str]]) -> dict[str, list[str]]:
    """References per clip, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for key, caption in rows:
        groups.setdefault(key, []).append(caption)
    return groups


def load_audiocaps(root: Path, split: str = "test", **_: Any) -> Iterator[dict]:
    """``test.csv`` (``audiocap_id,youtube_id,start_time,caption``, 5 rows per clip) and the
    downloaded clips anywhere below ``root`` (any common YouTube clip naming)."""
    table = find_file(root, f"{split}.csv", required=f"AudioCaps {split}.csv")
    assert table is not None
    rows = read_csv(table)
    if rows and "youtube_id" not in rows[0]:  # type: ignore[operator]
        raise UserError(f"{table}: expected the columns audiocap_id,youtube_id,start_time,caption")
    starts: dict[str, str] = {}
    pairs = []
    for row in rows:
        assert isinstance(row, dict)
        key = f"{row['youtube_id']}_{row.get('start_time', '0')}"
        starts[key] = row.get("start_time", "0")
        pairs.append((key, row["caption"]))
    index = AudioIndex(root)
    for key, captions in _grouped(pairs).items():
        ytid = key[: -len(starts[key]) - 1]
        audio = index.find_youtube(ytid, float(starts[key] or 0)) or missing(root, f"{key}.wav")
        yield item(key, audio, audio=audio.name, text=_refs(captions))


def load_clotho(root: Path, split: str = "evaluation", **_: Any) -> Iterator[dict]:
    """``clotho_captions_evaluation.csv`` (``file_name,caption_1..caption_5``) and the clips
    in ``evaluation/``."""
    table = find_file(root, f"clotho_captions_{split}.csv", required=f"clotho_captions_{split}.csv")
    assert table is not None
    index = AudioIndex(root)
    for row in read_csv(table):
        assert isinstance(row, dict)
        name = row.get("file_name", "")
        captions = [row[k] for k in sorted(row) if k.startswith("caption") and row[k]]
        audio = (_first_file(root / split / name, table.parent / split / name)
                 or index.find(name) or missing(root / split, name))
        yield item(name, audio, audio=name, text=_refs(captions))


def _refs(captions: list[str]) -> str | list[str]:
    """One reference as a string (as the official rows have it), several as a list."""
    return captions[0] if len(captions) == 1 else captions


def _first_file(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def load_musiccaps(root: Path, subset: str = "eval", **_: Any) -> Iterator[dict]:
    """``musiccaps-public.csv`` (``ytid,start_s,end_s,...,caption,...,is_audioset_eval``) and
    the downloaded 10 s clips. ``subset``: ``eval`` (rows with ``is_audioset_eval``, the
    usual test split) or ``all``."""
    table = find_file(root, "musiccaps-public.csv", "musiccaps*.csv",
                      required="musiccaps-public.csv")
    assert table is not None
    index = AudioIndex(root)
    for row in read_csv(table):
        assert isinstance(row, dict)
        if subset == "eval" and not as_bool(row.get("is_audioset_eval", "")):
            continue
        ytid = row["ytid"]
        start = float(row.get("start_s") or 0)
        audio = index.find_youtube(ytid, start) or missing(root, f"{ytid}.wav")
        yield item(ytid, audio, audio=audio.name, text=row["caption"])


def load_songdescriber(root: Path, subset: str = "valid", **_: Any) -> Iterator[dict]:
    """``song_describer.csv`` (``caption_id,track_id,caption,is_valid_subset,...,path``) and
    ``audio/NN/TRACK.2min.mp3``. ``subset``: ``valid`` (``is_valid_subset``) or ``all``.
    A track's captions are its references."""
    table = find_file(root, "song_describer.csv", required="song_describer.csv")
    assert table is not None
    rows = [r for r in read_csv(table) if isinstance(r, dict)]
    if subset == "valid":
        rows = [r for r in rows if as_bool(r.get("is_valid_subset", ""))]
    paths = {r["track_id"]: r.get("path", "") for r in rows}
    index = AudioIndex(root)
    for track, captions in _grouped([(r["track_id"], r["caption"]) for r in rows]).items():
        rel = paths[track]
        two_min = rel.replace(".mp3", ".2min.mp3")
        audio = (
            _first_file(table.parent / "audio" / two_min, table.parent / "audio" / rel,
                        root / "audio" / two_min, root / "audio" / rel)
            or index.find(two_min, rel, Path(two_min).name, Path(rel).name)
            or missing(root / "audio", two_min)
        )
        yield item(track, audio, audio=audio.name, text=_refs(captions))


def load_caption_table(root: Path, table: str | None = None, **_: Any) -> Iterator[dict]:
    """Any table of clips and captions (Auto-ACD's test set): CSV/TSV/JSON/JSONL with an audio
    column (``audio``, ``file_name``, ``audio_id``, ``youtube_id``, ``ytid`` or ``id``) and
    a ``caption`` or ``text`` column. Rows of one clip are its references."""
    path = Path(table) if table else find_table(root, "test.csv", "test.jsonl", "test.json")
    index = AudioIndex(root)
    pairs = []
    for number, row in enumerate(read_table(path), 1):
        name = column(row, "audio", "file_name", "audio_id", "youtube_id", "ytid", "id")
        caption = column(row, "caption", "text", "captions")
        if name is None or caption is None:
            raise UserError(f"{path}, row {number}: needs an audio column and a caption column")
        captions = caption if isinstance(caption, list) else [caption]
        pairs.extend((str(name), str(c)) for c in captions)
    for name, captions in _grouped(pairs).items():
        audio = index.find(name) or missing(root, name)
        yield item(name, audio, audio=audio.name, text=_refs(captions))
