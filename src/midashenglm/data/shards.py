"""WebDataset tar shards: ``pack`` a manifest's clips into ``train-000000.tar``, ... .

Each sample is a group of members sharing a key (``s000000007``): ``s000000007.json``
(the row: id, dataset, task, duration, origin and messages whose audio parts name their
member as ``{"type": "audio", "member": "0.flac", "duration": 3.2}``) and one
``s000000007.<i>.<ext>`` per clip holding the clip's original bytes (its extension kept).
Plain ``webdataset.WebDataset(urls)`` reads them (keys ``json``, ``0.flac``, ...), and
``out_dir/manifest.jsonl`` points every sample's clips at ``shard`` + member ``key``, for
:func:`~midashenglm.data.manifest.read_training_manifest` and random access
(:func:`~midashenglm.data.archive.read_member`; re-exported here).

Every clip is decoded once while packing: that measures its duration and finds corrupt,
truncated or missing files, which are reported (source, reason) and left out.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from midashenglm import jsonl
from midashenglm.audio import SAMPLE_RATE, AudioError, load_audio
from midashenglm.data.archive import ShardError, clip_source, describe_part, read_member
from midashenglm.data.manifest import TrainingSample, read_training_manifest, sample_row
from midashenglm.errors import UserError

__all__ = ["SHARD_PATTERN", "PackReport", "pack", "read_member"]

SHARD_PATTERN = "train-%06d.tar"
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class PackReport:
    """What :func:`pack` wrote: ``packed`` samples with ``seconds`` of audio in ``shards``,
    the ``manifest`` pointing into them, and ``skipped`` as (source, reason) pairs."""

    out_dir: Path
    manifest: Path
    shards: list[Path] = field(default_factory=list)
    packed: int = 0
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def pack(
    manifest: str | os.PathLike | Sequence[TrainingSample],
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 1000,
    max_shard_bytes: float = 1e9,
    workers: int = 4,
    progress: Callable[[TrainingSample, str | None], None] | None = None,
) -> PackReport:
    """Pack a manifest (a path, or samples already read) into tar shards under ``out_dir``.

    A shard holds at most ``shard_size`` samples and about ``max_shard_bytes`` bytes;
    ``workers`` threads decode clips in parallel (the output keeps manifest order).
    ``progress(sample, reason)`` is called after each sample (``reason`` is None unless it
    was skipped). ``out_dir/manifest.jsonl`` is written last (atomically), so a killed pack
    leaves no manifest.

    Raises :class:`~midashenglm.errors.UserError` for a bad manifest, or an ``out_dir`` that
    already holds shards or a manifest (shards from two runs must not mix).
    """
    samples = (read_training_manifest(manifest, measure_missing=False)
               if isinstance(manifest, str | os.PathLike) else manifest)
    out = check_out_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = PackReport(out_dir=out, manifest=out / "manifest.jsonl")
    rows: list[dict[str, Any]] = []
    import webdataset  # here: it takes 1.5 s to import (torch and more), reading never needs it

    pattern = os.path.join(str(out).replace("%", "%%"), SHARD_PATTERN)  # a "%" in the folder stays
    try:
        _write_shards(webdataset, pattern, samples, report, rows, shard_size=shard_size,
                      max_shard_bytes=max_shard_bytes, workers=workers, progress=progress)
    except BaseException:
        # Interrupted or failed: no half-written shards left behind (a rerun starts clean).
        for shard in out.glob("train-*.tar"):
            shard.unlink(missing_ok=True)
        raise
    tmp = report.manifest.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        jsonl.append_rows(fh, rows)
    os.replace(tmp, report.manifest)
    return report


def _write_shards(webdataset: Any, pattern: str, samples: Sequence[TrainingSample], report: PackReport,
                  rows: list[dict[str, Any]], *, shard_size: int, max_shard_bytes: float, workers: int,
                  progress: Callable[[TrainingSample, str | None], None] | None) -> None:
    with webdataset.ShardWriter(pattern, maxcount=shard_size, maxsize=max_shard_bytes, verbose=0,
                                encoder=False, mtime=0) as writer:
        for sample, result in _ordered_map(_read_clips, samples, workers):
            if isinstance(result, str):
                report.skipped.append((sample.source, result))
            else:
                key = f"s{report.packed:09d}"
                record, row = _record(sample, key, result)
                writer.write(record)
                shard = Path(writer.fname)
                if not report.shards or report.shards[-1] != shard:
                    report.shards.append(shard)
                rows.append({**row, "messages": _map_audio(row["messages"], functools.partial(
                    _shard_part, shard=shard.name, key=key))})
                report.packed += 1
                report.seconds += row["duration"]
            if progress is not None:
                progress(sample, result if isinstance(result, str) else None)
        empty = Path(writer.fname) if not report.shards else None
    if empty is not None:
        empty.unlink(missing_ok=True)  # ShardWriter opens its first shard before any sample


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a Path; :class:`~midashenglm.errors.UserError` if it already holds
    shards or a manifest (shards from two runs must not mix)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.glob("train-*.tar"))
                         or (out / "manifest.jsonl").exists()):
        raise UserError(f"{out}: already holds shards or a manifest.jsonl (or is not a folder); "
                        "remove them or choose another folder")
    return out


Clip = tuple[bytes, str, float]  # original bytes, extension, seconds
MAX_CLIP_SECONDS = 3600.0  # longer clips are skipped (training takes clips of seconds to minutes)


def _read_clips(sample: TrainingSample) -> list[Clip] | str:
    """Each clip's bytes, extension and decoded duration, or why the sample is skipped."""
    clips = []
    for part in sample.audio_parts:
        try:
            source = clip_source(part)
            if not isinstance(source, bytes) and not Path(source).is_file():
                # A device or a fifo (/dev/zero) would be read forever.
                raise OSError("not a regular file" if Path(source).exists() else "no such file")
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            # Bounded decoding: a pathological header cannot make a clip decode for hours.
            wave = load_audio(data, max_seconds=MAX_CLIP_SECONDS)
        except (AudioError, ShardError, OSError) as err:
            reason = err.problem if isinstance(err, AudioError) else (
                getattr(err, "strerror", None) or str(err))
            return f"{describe_part(part)}: {reason}"
        name = part["key"] if "shard" in part else os.path.basename(part["path"])
        ext = name.rsplit(".", 1)[1].lower() if "." in name.lstrip(".") else "bin"
        clips.append((data, ext, len(wave) / SAMPLE_RATE))
    return clips


def _record(sample: TrainingSample, key: str, clips: list[Clip]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The WebDataset sample (name -> bytes) and its row, whose audio parts name members."""
    members = [f"{i}.{ext}" for i, (_, ext, _) in enumerate(clips)]
    row = sample_row(sample)
    row["duration"] = sum(seconds for _, _, seconds in clips)
    row["origin"] = sample.source
    row["messages"] = _map_audio(row["messages"], lambda _, i: {
        "type": "audio", "member": members[i], "duration": clips[i][2]})
    record = {"__key__": key, "json": jsonl.dumps_line(row).encode("utf-8")}
    record.update({m: data for m, (data, _, _) in zip(members, clips, strict=True)})
    return record, row


def _shard_part(part: dict[str, Any], _: int, *, shard: str, key: str) -> dict[str, Any]:
    """The manifest's audio part for a packed clip: its shard and member name."""
    return {"type": "audio", "shard": shard, "key": f"{key}.{part['member']}", "duration": part["duration"]}


def _map_audio(messages: list[dict[str, Any]], fn: Callable[[dict[str, Any], int], dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """``messages`` with the i-th audio part (conversation order) replaced by ``fn(part, i)``."""
    count = itertools.count()
    return [m if isinstance(m["content"], str) else
            {**m, "content": [fn(p, next(count)) if p["type"] == "audio" else p for p in m["content"]]}
            for m in messages]


def _ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in input order, ``workers`` threads ahead (decoding releases the
    GIL), with a bounded window so memory stays flat on a million rows."""
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    with ThreadPoolExecutor(workers) as pool:
        window: deque[tuple[T, Any]] = deque()
        for item in items:
            window.append((item, pool.submit(fn, item)))
            if len(window) >= 4 * workers:
                head, future = window.popleft()
                yield head, future.result()
        while window:
            head, future = window.popleft()
            yield head, future.result()

