"""Training manifests: JSONL or CSV rows -> :class:`TrainingSample` chats with unloaded audio.

One row is one sample. Its fields (every one but the conversation optional):

* ``id`` (default ``"<manifest name>:<line>"``), ``dataset`` (default ``"default"``),
  ``task`` (default ``"caption"``), ``duration`` (seconds of audio in the whole sample;
  measured from the file headers when absent, see :func:`read_training_manifest`);
* the conversation, in one of two forms:

  - flat: ``audio`` (a path; in JSONL also a list of paths), ``prompt`` (optional),
    ``answer``, ``system`` (optional) -> ``[system?, user: [audio..., prompt], assistant: answer]``;
  - ``messages`` (JSONL only): a chat list ``[{"role": "system"|"user"|"assistant",
    "content": str | [parts]}]`` with any number of turns and clips; a part is
    ``{"type": "text", "text": ...}``, ``{"type": "audio", "path": "a.wav"}`` or
    ``{"type": "audio", "shard": "train-000000.tar", "key": "s000000007.0.flac"}`` (a member
    of a tar shard; ``"ext": "flac"`` may carry the extension apart), optionally with its
    own ``"duration"`` in seconds. Audio belongs in system/user turns only.

Relative paths (audio and shards) resolve against the manifest's folder. A malformed row is
a :class:`~midashenglm.errors.UserError` naming ``file:line`` and the field; a missing or
unreadable clip is not (the dataset reports and skips it at load time).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from midashenglm import jsonl
from midashenglm.audio import AudioError, audio_duration
from midashenglm.conversation import audio_part
from midashenglm.data.archive import ShardError, clip_source
from midashenglm.errors import UserError

ROLES = ("system", "user", "assistant")
FLAT_FIELDS = ("audio", "prompt", "answer", "system")
# Every field a row may have (``origin``: the source line that ``data pack`` records).
KNOWN_FIELDS = frozenset({*FLAT_FIELDS, "messages", "id", "dataset", "task", "duration", "origin"})


@dataclass(frozen=True)
class TrainingSample:
    """One training sample: a chat whose audio parts are not loaded yet.

    ``messages``: official chat messages; an audio part is ``{"type": "audio", "path": ABS}``
    or ``{"type": "audio", "shard": ABS_TAR, "key": MEMBER}``, optionally with ``"duration"``
    (seconds). ``duration``: seconds of audio in the whole sample, ``None`` when unknown.
    ``source``: ``"path/to/manifest.jsonl:12"`` (1-based line), named in every message about
    the sample.
    """

    id: str
    dataset: str
    task: str
    messages: list[dict[str, Any]]
    duration: float | None
    source: str

    @property
    def audio_parts(self) -> list[dict[str, Any]]:
        """The audio parts in conversation order."""
        return [part for m in self.messages if isinstance(m["content"], list)
                for part in m["content"] if part["type"] == "audio"]


def read_training_manifest(path: str | os.PathLike, *, measure_missing: bool = True
                           ) -> list[TrainingSample]:
    """Every row of a ``.jsonl`` or ``.csv`` training manifest, in order.

    ``measure_missing``: a row without ``duration`` gets the sum of its parts' durations
    (each part's own ``duration``, else read from the file header); a clip that cannot be
    read leaves it ``None`` (reported when the sample is loaded). ``data pack`` measures
    every clip by decoding it and writes the durations into its manifest.

    Raises :class:`~midashenglm.errors.UserError` for a missing file, an unknown suffix, a
    malformed row (``file:line: field 'x': ...``) or an ``id`` given twice.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such manifest file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path)
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, "\t" if suffix == ".tsv" else ",")
    else:
        raise UserError(f"{path}: a training manifest is a .jsonl or .csv file")
    samples: list[TrainingSample] = []
    lines: dict[str, int] = {}
    unknown: dict[str, int] = {}  # field -> first line
    for line, row in rows:
        for field in row.keys() - KNOWN_FIELDS:
            unknown.setdefault(field, line)
        sample = _sample(row, f"{path}:{line}", path.absolute().parent, f"{path.name}:{line}")
        if sample.id in lines:
            raise UserError(f"{path}:{line}: id {sample.id!r} is already used on line {lines[sample.id]}")
        lines[sample.id] = line
        if sample.duration is None and measure_missing:
            sample = replace(sample, duration=measure_duration(sample))
        samples.append(sample)
    if not samples:
        raise UserError(f"{path}: the manifest has no rows")
    if unknown:  # kept and ignored, but a typo ("promt") would silently train without a prompt
        from midashenglm.errors import stderr_console
        from midashenglm.terminal import printable_text

        listed = ", ".join(f"{printable_text(f)!r} (line {n})" for f, n in sorted(unknown.items(), key=lambda x: x[1]))
        stderr_console().print(f"warning: {printable_text(str(path))}: fields ignored: {listed}; known: "
                               f"{', '.join(sorted(KNOWN_FIELDS))}", highlight=False, markup=False)
    return samples


def read_audio_parts(path: str | os.PathLike) -> list[tuple[dict[str, Any], str]]:
    """Every audio part of a manifest, answers or not: ``(part, "file:line")`` in order.

    Reads training manifests (flat or ``messages`` rows) and corpus manifests of
    ``midashenglm data synth`` (rows with ``audio`` and no answer) alike: what audio-only
    stages (the encoder's MAE pretraining) read. A part is ``{"path": ...}`` or a shard
    member, as in :class:`TrainingSample`. Raises :class:`UserError` for a missing file, a
    row without audio, or a manifest without any.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such manifest file")
    rows = _csv_rows(path, ",") if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    base, parts = path.absolute().parent, []
    for line, row in rows:
        where = f"{path}:{line}"

        def fail(field: str, problem: str, where: str = where) -> UserError:
            return UserError(f"{where}: field {field!r}: {problem}")

        if isinstance(row.get("messages"), list):
            found = [_part(p, fail, "messages", base, "user") for m in row["messages"] if isinstance(m, dict)
                     and isinstance(m.get("content"), list) for p in m["content"]
                     if isinstance(p, dict) and p.get("type") == "audio"]
        else:
            audio = row.get("audio")
            paths = audio if isinstance(audio, list) else [audio]
            if not paths or not all(isinstance(p, str) and p for p in paths):
                raise fail("audio", "needs a path (or a list of paths)")
            found = [{"path": _resolve(p, base)} for p in paths]
        parts.extend((part, where) for part in found)
    if not parts:
        raise UserError(f"{path}: the manifest holds no audio")
    return parts


def measure_duration(sample: TrainingSample) -> float | None:
    """Seconds of audio in ``sample``: each part's ``duration`` or its file header's length;
    ``None`` when a clip cannot be read."""
    total = 0.0
    for part in sample.audio_parts:
        if "duration" in part:
            total += part["duration"]
            continue
        try:
            total += audio_duration(clip_source(part))
        except (AudioError, ShardError, OSError):
            return None
    return total


def sample_row(sample: TrainingSample, base: str | os.PathLike | None = None) -> dict[str, Any]:
    """``sample`` as a manifest row (``messages`` form); paths under ``base`` become relative."""

    def rel(value: str) -> str:
        if base is None:
            return value
        relative = os.path.relpath(value, base)
        return value if relative.startswith("..") else relative

    messages = []
    for message in sample.messages:
        content = message["content"]
        if isinstance(content, list):
            content = [{**p, **{k: rel(p[k]) for k in ("path", "shard") if k in p}} for p in content]
        messages.append({**message, "content": content})
    row: dict[str, Any] = {"id": sample.id, "dataset": sample.dataset, "task": sample.task}
    if sample.duration is not None:
        row["duration"] = sample.duration
    row["messages"] = messages
    return row


def write_training_manifest(samples: Iterable[TrainingSample], path: str | os.PathLike) -> None:
    """Write ``samples`` as a JSONL manifest (``messages`` form, paths relative to its folder)
    that :func:`read_training_manifest` reads back to the same samples (``source`` aside)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        jsonl.append_rows(fh, (sample_row(s, path.parent.resolve()) for s in samples))


# --------------------------------------------------------------------------- reading rows
def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, row, problem in jsonl.parse_lines(path):
        if row is None:
            raise UserError(f"{path}:{line}: {problem}")
        yield line, row


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # utf-8-sig: spreadsheet programs write "CSV UTF-8" with a byte-order mark.
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            for row in reader:
                if None in row:
                    raise UserError(f"{path}:{reader.line_num}: more values than header columns")
                if "messages" in row:
                    raise UserError(f"{path}:1: field 'messages' needs a JSONL manifest")
                # A CSV cell cannot be absent, only empty: an empty cell means "not given".
                yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


# --------------------------------------------------------------------------- one row
def _sample(row: dict[str, Any], where: str, base: Path, default_id: str) -> TrainingSample:
    def fail(field: str, problem: str) -> UserError:
        return UserError(f"{where}: field {field!r}: {problem}")

    def text(field: str, default: str | None = None) -> str | None:
        value = row.get(field, default)
        if value is not None and not isinstance(value, str):
            raise fail(field, f"must be a string, not {type(value).__name__}")
        return value

    ident = row.get("id", default_id)
    if not isinstance(ident, str | int) or isinstance(ident, bool) or ident == "":
        raise fail("id", "must be a non-empty string or an integer")
    if "messages" in row:
        given = [f for f in FLAT_FIELDS if f in row]
        if given:
            raise fail("messages", f"give either 'messages' or {'/'.join(FLAT_FIELDS)}, not both "
                                   f"(also found {given})")
        messages = _messages(row["messages"], fail, base)
    else:
        messages = _flat_messages(row, fail, text, base)
    duration = row.get("duration")
    if duration is not None:
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            raise fail("duration", f"must be a number of seconds, not {duration!r}") from None
        if not (math.isfinite(duration) and duration >= 0):
            raise fail("duration", f"must be a non-negative number of seconds, not {duration!r}")
    else:
        parts = [p for m in messages if isinstance(m["content"], list) for p in m["content"]
                 if p["type"] == "audio"]
        if parts and all("duration" in p for p in parts):
            duration = sum(p["duration"] for p in parts)
    return TrainingSample(id=str(ident), dataset=text("dataset", "default") or "default",
                          task=text("task", "caption") or "caption", messages=messages,
                          duration=duration, source=where)


def _flat_messages(row: dict[str, Any], fail: Any, text: Any, base: Path) -> list[dict[str, Any]]:
    audio = row.get("audio")
    paths = audio if isinstance(audio, list) else [audio]
    if audio is None or not paths or not all(isinstance(p, str) and p for p in paths):
        raise fail("audio", "needs a path (or, in JSONL, a list of paths)")
    answer = text("answer")
    if not answer:
        raise fail("answer", "needs the text to learn (or give 'messages')")
    prompt, system = text("prompt"), text("system")
    content = [audio_part(_resolve(p, base)) for p in paths]
    if prompt:
        content.append({"type": "text", "text": prompt})
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": content}, {"role": "assistant", "content": answer}]


def _messages(value: Any, fail: Any, base: Path) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise fail("messages", "must be a non-empty list of {role, content} messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise fail(where, "must be {'role': 'system'|'user'|'assistant', 'content': ...}")
        role, content = message["role"], message.get("content")
        if isinstance(content, list) and content:
            content = [_part(part, fail, f"{where}.content[{j}]", base, role)
                       for j, part in enumerate(content)]
        elif not isinstance(content, str):
            raise fail(where, "'content' must be a string or a non-empty list of parts")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise fail("messages", "has no assistant message: there is no answer to learn")
    return out


def _part(part: Any, fail: Any, where: str, base: Path, role: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind != "audio":
        raise fail(where, "must be {'type': 'text', 'text': ...} or {'type': 'audio', ...}")
    if role == "assistant":
        raise fail(where, "audio belongs in system or user messages, not in answers")
    if isinstance(part.get("shard"), str) and isinstance(part.get("key"), str):
        ext = part.get("ext")
        out = {"type": "audio", "shard": _resolve(part["shard"], base),
               "key": f"{part['key']}.{ext}" if ext else part["key"]}
    else:
        path = part.get("path", part.get("audio"))
        if not isinstance(path, str) or not path:
            raise fail(where, "an audio part needs 'path' (or 'shard' and 'key')")
        out = {"type": "audio", "path": _resolve(path, base)}
    if "duration" in part:
        seconds = part["duration"]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise fail(f"{where}.duration", f"must be a non-negative number, not {seconds!r}")
        out["duration"] = float(seconds)
    return out


def _resolve(value: str, base: Path) -> str:
    path = Path(os.path.expanduser(value))
    return str(path if path.is_absolute() else base / path)
