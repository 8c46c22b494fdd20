"""MECAT-Caption and MECAT-QA: the Hugging Face WebDataset shards, or their extracted files.

Layout of ``mispeech/MECAT-Caption`` and ``mispeech/MECAT-QA``: one folder per content
domain (``000``, ``00A``, ``0M0``, ``0MA``, ``S00``, ``S0A``, ``SM0``, ``SMA``) holding
``test_NNNN-NNNNNNN.tar.gz`` shards; each sample is ``KEY.flac`` + ``KEY.json``. The
shards are read as streams (nothing is extracted to disk). Extracted folders
(``DOMAIN/KEY.flac`` + ``DOMAIN/KEY.json``) work too.

Caption items: every clip is asked each of the six caption prompts, one item per
subtask (``id`` ``KEY:SUBTASK``), with the subtask's three references. QA items: one
per question, with its ``category``. Where a sample's JSON lacks them, references come
from the ``references`` option (a folder of MECAT's ``DOMAIN.jsonl[.gz]`` reference
files: ``{KEY: {"short": [...], ..., "domain": ...}}`` per line) or, when the ``mecat``
package is installed, from the test references it ships.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError
from midashenglm.evaluation.loaders.base import AUDIO_EXTENSIONS, item

DOMAINS = ("000", "00A", "0M0", "0MA", "S00", "S0A", "SM0", "SMA")
CAPTION_SUBTASKS = ("short", "long", "speech", "music", "sound", "environment")


def load_mecat(
    root: Path, kind: str = "caption", split: str = "test",
    subtasks: tuple[str, ...] | list[str] | str = CAPTION_SUBTASKS,
    references: str | Path | None = None, **_: Any,
) -> Iterator[dict]:
    if isinstance(subtasks, str):
        subtasks = tuple(s.strip() for s in subtasks.split(",") if s.strip())
    unknown = [s for s in subtasks if s not in CAPTION_SUBTASKS]
    if unknown:
        raise UserError(f"MECAT subtasks {unknown}: choose from {', '.join(CAPTION_SUBTASKS)}")
    found = False
    table: dict[str, dict] | None = None
    for key, audio, meta, domain in _samples(root, split):
        found = True
        if not _has_references(meta, kind):
            if table is None:
                table = _reference_table(kind, split, references)
            meta = {**table.get(key, {}), **meta}
        domain = str(meta.get("domain") or domain)
        name = f"{key}.flac"
        if kind == "qa":
            yield item(key, audio, audio=name, question=str(meta.get("question", "")),
                       answer=meta.get("answer", ""), category=meta.get("category", ""),
                       difficulty=meta.get("difficulty", ""), domain=domain)
            continue
        references = meta.get("caption", meta.get("captions", meta))
        for subtask in subtasks:
            refs = references.get(subtask, []) if isinstance(references, dict) else []
            yield item(f"{key}:{subtask}", audio, audio=name, text=refs, subtask=subtask,
                       domain=domain)
    if not found:
        raise UserError(
            f"{root}: no MECAT samples ({split}_*.tar[.gz] shards, or KEY.flac + KEY.json files)"
        )


def _has_references(meta: dict, kind: str) -> bool:
    if kind == "qa":
        return "answer" in meta and "category" in meta
    refs = meta.get("caption", meta.get("captions", meta))
    return isinstance(refs, dict) and any(s in refs for s in CAPTION_SUBTASKS)


def _reference_table(kind: str, split: str, folder: str | Path | None) -> dict[str, dict]:
    """KEY -> reference object, from a folder of MECAT reference files or the mecat package."""
    if folder is None:
        spec = importlib.util.find_spec("mecat")
        if spec is None or not spec.submodule_search_locations:
            return {}
        folder = Path(next(iter(spec.submodule_search_locations))) / "reference" / kind / split
    folder = Path(folder)
    table: dict[str, dict] = {}
    for path in sorted([*folder.glob("*.jsonl"), *folder.glob("*.jsonl.gz")]):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    table.update(json.loads(line))
    if not table:
        raise UserError(f"MECAT references {folder}: no DOMAIN.jsonl[.gz] files there")
    return table


def _samples(root: Path, split: str) -> Iterator[tuple[str, Any, dict, str]]:
    """(key, audio bytes or path, metadata, domain folder) for every sample below ``root``."""
    shards = sorted(p for p in root.rglob(f"{split}*.tar*") if p.is_file())
    for shard in shards:
        yield from _shard_samples(shard)
    if shards:
        return
    for meta_path in sorted(root.rglob("*.json")):
        audio = next((meta_path.with_suffix(s) for s in (".flac", ".wav", ".mp3")
                      if meta_path.with_suffix(s).is_file()), None)
        if audio is None:
            continue
        yield meta_path.stem, audio, _read_meta(meta_path.read_bytes(), str(meta_path)), \
            meta_path.parent.name


def _shard_samples(shard: Path) -> Iterator[tuple[str, bytes, dict, str]]:
    """WebDataset samples: consecutive members sharing a key (the name up to its first dot)."""
    domain = shard.parent.name
    current: str | None = None
    parts: dict[str, bytes] = {}

    def flush() -> Iterator[tuple[str, bytes, dict, str]]:
        audio = next((v for k, v in parts.items() if f".{k}" in AUDIO_EXTENSIONS), None)
        if current is not None and audio is not None and "json" in parts:
            yield current, audio, _read_meta(parts["json"], f"{shard}:{current}.json"), domain

    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = Path(member.name).name
                key, _, ext = base.partition(".")
                if key != current:
                    yield from flush()
                    current, parts = key, {}
                data = tar.extractfile(member)
                if data is not None:
                    parts[ext.lower()] = data.read()
            yield from flush()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(f"{shard}: cannot read the shard ({err})") from None


def _read_meta(data: bytes, where: str) -> dict:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{where}: expected a JSON object")
    return meta
