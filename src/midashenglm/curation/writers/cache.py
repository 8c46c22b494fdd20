"""A persistent cache of LLM answers, so that a rerun of a curation costs no requests.

One SQLite file (``responses(key PRIMARY KEY, kind, value, created)``) in WAL mode: any
number of threads (one connection behind a lock) and processes (SQLite's file locks, with a
busy timeout; e.g. Ray actors or two runs on one output folder) read and write it safely.

The key (:func:`cache_key`) is the SHA-256 of everything that decides an answer: the kind
(caption / qa), the facts' canonical JSON, :data:`~midashenglm.curation.writers.prompts.
PROMPT_VERSION`, the writer's name and model, its generation settings and the re-ask
feedback. Only well-formed answers are stored (malformed ones are retried, never cached);
an answer the grounding check rejects is stored, so a rerun replays the same rejections and
re-asks from the cache too.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from midashenglm.curation.writers.prompts import PROMPT_VERSION

_SCHEMA = ("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, kind TEXT NOT NULL, "
           "value TEXT NOT NULL, created REAL NOT NULL)")


def cache_key(kind: str, facts_json: str, writer: str, model: str,
              settings: Mapping[str, Any] | None = None,
              feedback: Sequence[str] | None = None,
              prompt_version: str = PROMPT_VERSION) -> str:
    """Hex SHA-256 of the request's identity (see the module docstring)."""
    payload = json.dumps([kind, facts_json, prompt_version, writer, model,
                          dict(settings or {}), list(feedback or [])],
                         sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ResponseCache:
    """``get(key)`` / ``put(key, value)`` on a SQLite file; counts hits and misses.

    Thread-safe and process-safe. Picklable (the connection is reopened after unpickling),
    so it can travel to a Ray actor; each process then has its own connection.
    """

    def __init__(self, path: str | Path, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=self.timeout,
                                   check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            self._conn = conn
        return self._conn

    def get(self, key: str) -> str | None:
        """The stored value, or None (counted as a miss)."""
        with self._lock:
            row = self._connect().execute(
                "SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            return row[0]

    def put(self, key: str, value: str, *, kind: str = "") -> None:
        """Store ``value`` (a later put of the same key replaces it)."""
        with self._lock:
            self._connect().execute(
                "INSERT OR REPLACE INTO responses (key, kind, value, created) "
                "VALUES (?, ?, ?, ?)", (key, kind, value, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], timeout=state["timeout"])  # type: ignore[misc]
