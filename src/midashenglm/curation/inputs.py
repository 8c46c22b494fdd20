"""What ``midashenglm curate INPUT`` reads: a folder of audio, a manifest, or a shard folder.

:func:`iter_clips` lists the clips of an input as :class:`ClipRef` (id, where the audio is,
where the clip was listed); :func:`load_clip` decodes one to 16 kHz mono float32. Listing
never opens the audio: a missing or corrupt clip is listed and fails when it is loaded (the
pipeline records the error for that clip and goes on).

Inputs:

* **a folder**: every file below it (recursively) whose suffix is an audio or video container
  (:data:`AUDIO_SUFFIXES`, case-insensitive), hidden files and folders (``.name``) skipped,
  sorted by path; ``id`` is the path relative to the folder (POSIX ``/`` separators).
  Links to files are listed; links to folders are not followed (no loops).
* **one audio file**: a single clip whose ``id`` is its file name.
* **a manifest** (``.jsonl``/``.ndjson`` or ``.csv``/``.tsv``): one clip per row, from its
  ``audio`` column (a path, relative to the manifest's folder) and an optional ``id``
  (default: the audio's path relative to the manifest's folder, or ``"<manifest>:<line>"``
  when the audio lies outside it). Other columns are ignored.
* **a training manifest** (rows with ``messages``, or flat rows with ``answer``; see
  :mod:`midashenglm.data.manifest`): read by
  :func:`~midashenglm.data.manifest.read_training_manifest`; each sample's first audio part
  is its clip, under the sample's ``id``. Samples without audio are skipped, and a clip that
  several samples share (QA rows about one recording) is listed once, under the first
  sample's id.
* **a shard folder** written by ``midashenglm data pack`` (a folder holding ``manifest.jsonl``
  and ``*.tar``): its manifest, whose clips are tar members ``{"shard": ABS_TAR, "key":
  MEMBER}`` read by :func:`midashenglm.data.archive.clip_source`.

Errors (:class:`~midashenglm.errors.UserError`): a missing input, an input with no clips, a
malformed manifest row (``file:line``), and an ``id`` used twice (both places named).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from midashenglm import jsonl
from midashenglm.errors import UserError

# Containers that load_audio decodes (soundfile or PyAV); video files give their audio track.
AUDIO_SUFFIXES = frozenset({
    ".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".spx", ".m4a", ".m4b", ".aac",
    ".webm", ".weba", ".mp4", ".mov", ".mkv", ".mka", ".aif", ".aiff", ".aifc", ".caf", ".au",
    ".snd", ".w64", ".wma", ".asf", ".amr", ".3gp", ".ac3", ".wv",
})
MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv")


@dataclass(frozen=True)
class ClipRef:
    """One clip to curate.

    ``id``: unique within the input (outputs are keyed by it). ``audio``: an absolute path,
    or a tar shard member ``{"shard": ABS_TAR, "key": MEMBER}``. ``source``: where the clip
    was listed, for messages: the file's path, or ``"path/to/manifest.jsonl:12"`` (1-based
    line).
    """

    id: str
    audio: str | dict[str, str]
    source: str

    def to_json(self) -> str | dict[str, str]:
        """The ``audio`` value outputs record: the path, or a copy of the shard part."""
        return dict(self.audio) if isinstance(self.audio, dict) else self.audio

    def describe(self) -> str:
        """The audio's location for messages: ``/a/b.wav`` or ``/s/train-000000.tar[key]``."""
        if isinstance(self.audio, dict):
            return f"{self.audio['shard']}[{self.audio['key']}]"
        return self.audio

    def as_row(self) -> dict[str, Any]:
        """A plain dict (a Ray Data row); :meth:`from_row` turns it back."""
        return {"id": self.id, "audio": self.to_json(), "source": self.source}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ClipRef:
        audio = row["audio"]
        return cls(id=row["id"], audio=dict(audio) if isinstance(audio, dict) else audio,
                   source=row["source"])


def iter_clips(input: str | os.PathLike) -> list[ClipRef]:
    """Every clip of ``input`` (a folder, an audio file, a manifest or a shard folder), in order.

    Raises :class:`~midashenglm.errors.UserError` for a missing input, an input without
    clips, a malformed manifest, or an ``id`` given twice.
    """
    path = Path(os.path.expanduser(os.fspath(input)))
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        manifest = path / "manifest.jsonl"
        if manifest.is_file() and any(path.glob("*.tar")):
            clips = _manifest_clips(manifest)  # a shard folder from `midashenglm data pack`
        else:
            clips = _folder_clips(path)
    elif path.suffix.lower() in MANIFEST_SUFFIXES:
        clips = _manifest_clips(path)
    elif path.suffix.lower() in AUDIO_SUFFIXES:
        clips = [ClipRef(id=path.name, audio=str(path.absolute()), source=str(path))]
    else:
        raise UserError(f"{path}: not a folder, a manifest ({', '.join(MANIFEST_SUFFIXES)}) "
                        "or an audio file")
    if not clips:
        raise UserError(f"{path}: no clips found" + (
            f" (looked for files ending in {', '.join(sorted(AUDIO_SUFFIXES))})"
            if path.is_dir() else ""))
    _check_unique(clips)
    return clips


def load_clip(ref: ClipRef, *, max_seconds: float | None = None) -> np.ndarray:
    """The clip's audio: (n,) float32, 16 kHz mono (:func:`midashenglm.audio.load_audio`).

    ``max_seconds``: longer clips raise :class:`~midashenglm.audio.AudioTooLongError`.
    Every failure (missing file, missing shard or member, corrupt audio) is an
    :class:`~midashenglm.audio.AudioError` naming the clip's location.
    """
    from midashenglm.audio import AudioDecodeError, AudioError, load_audio
    from midashenglm.data.archive import ShardError, clip_source

    if not isinstance(ref.audio, dict):
        return load_audio(ref.audio, max_seconds=max_seconds)  # names the path in its errors
    where = ref.describe()
    try:
        data = clip_source(ref.audio)
    except ShardError as err:
        raise AudioDecodeError(where, str(err)) from None
    try:
        return load_audio(data, max_seconds=max_seconds)
    except AudioError as err:
        # load_audio saw bytes ("<bytes: 123 B>"): name the shard member instead.
        err.source = where
        err.args = (where, err.problem)
        raise


# --------------------------------------------------------------------------- listing
def _folder_clips(root: Path) -> list[ClipRef]:
    found: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() not in AUDIO_SUFFIXES:
                continue
            full = Path(folder, name)
            found.append((full.relative_to(root).as_posix(), full))
    found.sort(key=lambda item: item[0])
    return [ClipRef(id=rel, audio=str(full.absolute()), source=str(full)) for rel, full in found]


def _manifest_clips(path: Path) -> list[ClipRef]:
    rows = list(_rows(path))
    if any("messages" in row or "answer" in row for _, row in rows):
        return _training_clips(path)
    base = path.absolute().parent
    clips = []
    for line, row in rows:
        where = f"{path}:{line}"
        audio = row.get("audio")
        if not isinstance(audio, str) or not audio:
            raise UserError(f"{where}: field 'audio' needs the clip's path (relative to the "
                            "manifest's folder, or absolute)")
        full = Path(os.path.expanduser(audio))
        full = Path(os.path.normpath(full if full.is_absolute() else base / full))
        ident = row.get("id")
        if ident is None:
            relative = os.path.relpath(full, base)
            ident = (f"{path.name}:{line}" if relative.startswith("..")
                     else Path(relative).as_posix())
        elif isinstance(ident, bool) or not isinstance(ident, str | int) or ident == "":
            raise UserError(f"{where}: field 'id' must be a non-empty string or an integer")
        clips.append(ClipRef(id=str(ident), audio=str(full), source=where))
    return clips


def _training_clips(path: Path) -> list[ClipRef]:
    from midashenglm.data.manifest import read_training_manifest

    clips, seen = [], set()
    for sample in read_training_manifest(path, measure_missing=False):
        parts = sample.audio_parts
        if not parts:
            continue  # a text-only sample: nothing to listen to
        part = parts[0]
        audio: str | dict[str, str] = (
            {"shard": part["shard"], "key": part["key"]} if "shard" in part else part["path"])
        # `data pack` stores a recording once per sample: shard members are told apart by
        # their bytes, paths by the path.
        location = _member_digest(audio) if isinstance(audio, dict) else audio
        if location in seen:
            continue  # several samples (QA rows) about one recording: curate it once
        seen.add(location)
        clips.append(ClipRef(id=sample.id, audio=audio, source=sample.source))
    return clips


def _member_digest(part: dict[str, str]) -> str:
    """A shard member's content hash (a missing member hashes its name: listed, fails later)."""
    import hashlib

    from midashenglm.data.archive import ShardError, read_member

    try:
        return hashlib.sha1(read_member(part["shard"], part["key"])).hexdigest()
    except (OSError, ShardError):
        return f"{part['shard']}[{part['key']}]"


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row) of a JSONL or CSV file; a malformed line is a UserError naming it."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from jsonl.existing_rows(path)
        return
    try:
        # utf-8-sig: spreadsheet programs write "CSV UTF-8" with a byte-order mark.
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                if None in row:
                    raise UserError(f"{path}:{reader.line_num}: more values than header columns")
                yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err})") from None


def _check_unique(clips: list[ClipRef]) -> None:
    first: dict[str, str] = {}
    for clip in clips:
        if clip.id in first:
            raise UserError(f"clip id {clip.id!r} is used twice: {first[clip.id]} and "
                            f"{clip.source} (ids key the outputs; give each clip its own)")
        first[clip.id] = clip.source
