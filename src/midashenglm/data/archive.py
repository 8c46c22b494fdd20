"""Random access to one member of a tar shard, and the audio source of a content part.

WebDataset reads shards front to back; the length-aware sampler needs any sample at any
time. A tar member's bytes are stored contiguously, so an index of ``name -> (offset,
size)``, built once per shard from its headers (:mod:`tarfile` seeks over the data), turns
a read into one ``seek`` + ``read``. The index is cached per process, keyed by the shard's
path, size and mtime (a rewritten shard is indexed again).
"""

from __future__ import annotations

import functools
import os
import tarfile
from typing import Any


class ShardError(Exception):
    """A shard is missing, not a tar file, truncated, or lacks the member asked for."""


@functools.lru_cache(maxsize=256)
def _index(path: str, size: int, mtime_ns: int) -> dict[str, tuple[int, int]]:
    try:
        with tarfile.open(path, "r:") as tar:
            return {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}
    except (tarfile.TarError, OSError) as err:
        raise ShardError(f"{path}: not a readable tar shard ({err})") from None


def member_index(shard: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """``{member name: (byte offset of its data, size in bytes)}`` of a tar shard (cached).

    Raises :class:`ShardError` when the shard is missing or not a tar file.
    """
    path = os.fspath(shard)
    try:
        st = os.stat(path)
    except OSError as err:
        raise ShardError(f"{path}: cannot open the shard ({err.strerror or err})") from None
    return _index(path, st.st_size, st.st_mtime_ns)


def read_member(shard: str | os.PathLike, name: str) -> bytes:
    """The bytes of member ``name`` of ``shard``, read at its offset (one seek).

    Raises :class:`ShardError` for a missing shard or member, or a truncated shard.
    """
    offset, size = member_index(shard).get(name, (-1, 0))
    if offset < 0:
        raise ShardError(f"{os.fspath(shard)}: no member {name!r}")
    with open(shard, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise ShardError(f"{os.fspath(shard)}: member {name!r} is truncated")
    return data


def clip_source(part: dict[str, Any]) -> str | bytes:
    """What :func:`midashenglm.audio.load_audio` reads for an unloaded audio part: its
    ``path``, or the bytes of its ``shard`` member ``key`` (:class:`ShardError` if absent)."""
    if "shard" in part:
        return read_member(part["shard"], part["key"])
    return part["path"]


def describe_part(part: dict[str, Any]) -> str:
    """An audio part's location for messages: ``a.wav`` or ``train-000000.tar[s0.0.flac]``."""
    return f"{part['shard']}[{part['key']}]" if "shard" in part else str(part["path"])
