"""What every dataset loader shares: finding audio files, reading tables, making items.

A loader is a generator ``load(root: Path, **options) -> Iterator[dict]``. Each item has
``id`` (unique within the dataset: the key that makes a run resumable), ``audio`` (the
name the result rows show), ``source`` (what the runner loads: a path, encoded bytes, or
a list of paths that are joined) and the reference fields of its task. A row of the
metadata whose audio file is absent still becomes an item, with ``source`` naming the
missing file, so that the runner records it as an error instead of silently scoring a
smaller test set.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from midashenglm import jsonl
from midashenglm.errors import UserError

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".mp4", ".webm", ".mkv",
     ".aiff", ".aif", ".wma"}
)
_YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")


class AudioIndex:
    """Every audio file below a folder, found by relative path, file name or stem."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._by_name: dict[str, list[Path]] | None = None
        self._by_stem: dict[str, list[Path]] | None = None
        self._by_youtube: dict[str, list[Path]] | None = None

    def _build(self) -> None:
        by_name: dict[str, list[Path]] = {}
        by_stem: dict[str, list[Path]] = {}
        for path in sorted(self.root.rglob("*")):
            if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
                by_name.setdefault(path.name, []).append(path)
                by_stem.setdefault(_stem(path.name), []).append(path)
        self._by_name, self._by_stem = by_name, by_stem

    def files(self) -> list[Path]:
        if self._by_name is None:
            self._build()
        assert self._by_name is not None
        return sorted(p for paths in self._by_name.values() for p in paths)

    def find(self, *names: str | None) -> Path | None:
        """The first of ``names`` that exists: as a path under the root, a file name, a stem."""
        if self._by_name is None:
            self._build()
        assert self._by_name is not None and self._by_stem is not None
        for name in names:
            if not name:
                continue
            direct = self.root / name.lstrip("./")
            if direct.is_file():
                return direct
            base = Path(name).name
            for table, key in ((self._by_name, base), (self._by_stem, _stem(base))):
                if table.get(key):
                    return table[key][0]
        return None

    def find_youtube(self, ytid: str, start: float | None = None) -> Path | None:
        """A clip cut from YouTube video ``ytid``, whatever naming scheme the download used.

        Seen in the wild: ``ID.wav``, ``YID.wav``, ``ID_30.wav``, ``ID_000030.flac``,
        ``YID_30.000_40.000.wav`` and ``[ID]-[30-40].wav``. Where one video has several
        clips, the one whose name holds the start time wins.
        """
        if self._by_youtube is None:
            table: dict[str, list[Path]] = {}
            for path in self.files():
                bare = _stem(path.name).lstrip("[")
                keys = {bare[:11]}
                if bare.startswith("Y"):
                    keys.add(bare[1:12])
                for key in keys:
                    if _YOUTUBE_ID.match(key):
                        table.setdefault(key, []).append(path)
            self._by_youtube = table
        candidates = self._by_youtube.get(ytid, [])
        if len(candidates) <= 1 or start is None:
            return candidates[0] if candidates else None
        numbers = {f"{start:g}", f"{int(start)}", f"{start:.3f}", f"{int(start):06d}"}
        for path in candidates:
            parts = set(re.split(r"[_\[\]\-]+", _stem(path.name)))
            if parts & numbers:
                return path
        return candidates[0]


def _stem(name: str) -> str:
    """``a.b.wav`` -> ``a.b``; ``x.2min.mp3`` stays ``x.2min`` (only the audio suffix goes)."""
    path = Path(name)
    return path.stem if path.suffix.lower() in AUDIO_EXTENSIONS else path.name


def missing(root: Path, name: str) -> Path:
    """Where a missing file would be: the runner reports this path as not found."""
    return root / name


def find_file(root: Path, *patterns: str, required: str | None = None) -> Path | None:
    """The first file below ``root`` matching one of the glob ``patterns`` (shallowest first)."""
    for pattern in patterns:
        hits = sorted(root.rglob(pattern), key=lambda p: (len(p.parts), str(p)))
        hits = [h for h in hits if h.is_file()]
        if hits:
            return hits[0]
    if required:
        raise UserError(f"{root}: no {required} found (looked for {', '.join(patterns)})")
    return None


def read_csv(path: Path, *, delimiter: str = ",", header: bool = True,
             comment: str | None = None) -> list[dict[str, str]] | list[list[str]]:
    """Rows of a CSV/TSV file: dicts by column name, or lists when there is no header."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            lines: Iterable[str] = fh
            if comment:
                lines = [line for line in fh if not line.lstrip().startswith(comment)]
            if header:
                reader = csv.DictReader(lines, delimiter=delimiter, skipinitialspace=True)
                return [{(k or "").strip(): (v or "").strip() for k, v in row.items()}
                        for row in reader]
            return [[c.strip() for c in row] for row in csv.reader(
                lines, delimiter=delimiter, skipinitialspace=True) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path}: cannot read it as a table ({err})") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read it as JSON ({err})") from None


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    return (row for _, row in jsonl.existing_rows(path))


def column(row: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first of ``names`` present in ``row`` (case-insensitive)."""
    lowered = {str(k).lower(): v for k, v in row.items()}
    for name in names:
        if name in row and row[name] not in (None, ""):
            return row[name]
        value = lowered.get(name.lower())
        if value not in (None, ""):
            return value
    return default


def item(item_id: str, source: Any, *, audio: str | None = None, **fields: Any) -> dict[str, Any]:
    """One test item; ``audio`` defaults to the file name of ``source``."""
    if audio is None:
        audio = source.name if isinstance(source, Path) else str(item_id)
    return {"id": str(item_id), "audio": audio, "source": source, **fields}


def humanize(label: str) -> str:
    """``Acoustic_guitar`` -> ``Acoustic guitar``; ``ResidentialArea`` -> ``Residential area``."""
    label = label.replace("_", " ").strip()
    if " " not in label and re.search(r"[a-z][A-Z]", label):
        words = re.findall(r"[A-Z][a-z]*|[a-z]+|\d+", label)
        label = " ".join([words[0], *(w.lower() for w in words[1:])])
    return label


def filter_split(rows: Iterable[dict[str, str]], key: str, wanted: str | None):
    """Rows whose ``key`` column equals ``wanted`` (all rows when ``wanted`` is None/'all')."""
    if wanted in (None, "", "all"):
        return list(rows)
    return [r for r in rows if r.get(key, "").lower() == str(wanted).lower()]


def as_bool(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "y", "t")


TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL, JSON (a list of objects, or an object of objects keyed by id), CSV
    or TSV file, as dicts."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return list(read_jsonl(path))
    if suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict):
            for key in ("data", "items", "annotations", "questions"):
                if isinstance(data.get(key), list):
                    data = data[key]
                    break
            else:
                data = [{"id": k, **v} if isinstance(v, dict) else {"id": k, "value": v}
                        for k, v in data.items()]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UserError(f"{path}: expected a list of JSON objects")
        return data
    if suffix in (".csv", ".tsv"):
        rows = read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
        return [_parse_cells(r) for r in rows]  # type: ignore[arg-type]
    raise UserError(f"{path}: unsupported table type {suffix!r} (use {', '.join(TABLE_SUFFIXES)})")


def _parse_cells(row: dict[str, str]) -> dict[str, Any]:
    """Cells that hold JSON lists (``["a", "b"]``) become lists."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value.startswith("[") and value.endswith("]"):
            try:
                out[key] = json.loads(value)
                continue
            except json.JSONDecodeError:
                pass
        out[key] = value
    return out


def find_table(root: Path, *preferred: str) -> Path:
    """The metadata table of a folder: one of ``preferred``, else the only table there is."""
    for name in preferred:
        hit = find_file(root, name)
        if hit is not None:
            return hit
    tables = sorted(p for s in TABLE_SUFFIXES for p in root.rglob(f"*{s}") if p.is_file())
    if len(tables) == 1:
        return tables[0]
    if not tables:
        raise UserError(f"{root}: no metadata table ({', '.join(preferred) or 'csv/json/jsonl'})")
    raise UserError(
        f"{root}: several tables ({', '.join(str(t.relative_to(root)) for t in tables[:6])}); "
        "pass the one to use as --data"
    )
