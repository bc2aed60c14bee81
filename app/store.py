"""The question store: SQLite in WAL mode, the source of truth for ids, texts and embeddings.

Each row has an integer ``key`` (AUTOINCREMENT, never reused) that the vector index uses; an
upsert gives the question a new key, so an index key always means one text. Every write
transaction bumps a ``generation`` counter, which tags index snapshots: a snapshot whose tag
differs from the store's is stale. ``synchronous=FULL``: a committed write survives a crash of
the process or of the machine.

One process at a time owns a store: it holds an exclusive lock (``flock``) on ``<file>.lock``
from opening to closing, which the kernel drops when the process dies, even by SIGKILL. A second
owner, such as another ``dupq serve`` or a ``dupq index`` run on the data directory of a running
service, would keep its own index, which misses the other's writes, and could write a snapshot
that claims them: it is refused instead, with :class:`StoreInUse`.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS questions (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    embedding BLOB NOT NULL,
    model_version TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('generation', '0');
"""


def _own(lock_path: Path) -> IO[str]:
    """The lock file, opened and exclusively locked; raises :class:`StoreInUse` if it is taken."""
    handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 (held open until close())
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StoreInUse(
            f"{lock_path.parent} is in use by another dupq process (pid {holder}); "
            "stop it first, or give this one its own data directory"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


@dataclass(frozen=True)
class StoredQuestion:
    key: int
    id: str
    text: str


PAGE_SIZE = 16384  # bytes per SQLite page of a new store


class StoreInUse(OSError):
    """Another process has the store open."""


class QuestionStore:
    def __init__(self, path: str | Path, dim: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._owner = _own(self.path.with_name(self.path.name + ".lock"))
        self.dim = dim
        self._local = threading.local()
        self._write_lock = threading.Lock()
        try:
            with self._write_lock:
                self._writer = self._connect()
                self._writer.executescript(SCHEMA)
        except BaseException:
            self._owner.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        # Set before the file's first table, after that a no-op: a row (a 512-d vector is 2 KiB)
        # takes most of a 4 KiB page, which then holds one; a 16 KiB page holds seven.
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @property
    def _reader(self) -> sqlite3.Connection:
        # One read connection per thread: WAL readers run in parallel and never block the writer.
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def close(self) -> None:
        self._writer.close()
        self._owner.close()  # releases the lock

    # Writes: each is one transaction ------------------------------------------------------------

    def upsert(
        self, items: Sequence[tuple[str, str]], vectors: np.ndarray, model_version: str
    ) -> tuple[list[int], list[int]]:
        """Insert or replace questions ``(id, text)`` with their vectors, atomically.
        Returns (keys of the replaced rows, keys of the new rows) in the order of ``items``."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        now = time.time()
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                old: list[int] = []
                new: list[int] = []
                for (qid, text), vector in zip(items, vectors, strict=True):
                    row = cur.execute("DELETE FROM questions WHERE id = ? RETURNING key", (qid,)).fetchone()
                    if row:
                        old.append(row[0])
                    cur.execute(
                        "INSERT INTO questions (id, text, embedding, model_version, updated) VALUES (?, ?, ?, ?, ?)",
                        (qid, text, vector.tobytes(), model_version, now),
                    )
                    new.append(int(cur.lastrowid or 0))
                self._bump(cur)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return old, new

    def delete(self, qid: str) -> int | None:
        """Delete a question; returns its key, or None if there was none."""
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute("DELETE FROM questions WHERE id = ? RETURNING key", (qid,)).fetchone()
                if row:
                    self._bump(cur)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return int(row[0]) if row else None

    def set_embeddings(self, keys: Sequence[int], vectors: np.ndarray, model_version: str) -> None:
        """Replace the vectors of existing rows (re-embedding with a new model)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany(
                    "UPDATE questions SET embedding = ?, model_version = ? WHERE key = ?",
                    [(v.tobytes(), model_version, int(k)) for k, v in zip(keys, vectors, strict=True)],
                )
                self._bump(cur)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    @staticmethod
    def _bump(cur: sqlite3.Cursor) -> None:
        cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'generation'")

    # Reads ----------------------------------------------------------------------------------------

    def generation(self) -> int:
        return int(self._reader.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()[0])

    def count(self) -> int:
        return int(self._reader.execute("SELECT COUNT(*) FROM questions").fetchone()[0])

    def get(self, qid: str) -> StoredQuestion | None:
        row = self._reader.execute("SELECT key, id, text FROM questions WHERE id = ?", (qid,)).fetchone()
        return StoredQuestion(*row) if row else None

    def by_keys(self, keys: Sequence[int], chunk: int = 900) -> dict[int, StoredQuestion]:
        """The questions with these keys (absent keys are left out), asked in chunks that stay
        under the smallest limit on bound variables SQLite builds have (999)."""
        found: dict[int, StoredQuestion] = {}
        for start in range(0, len(keys), chunk):
            part = [int(k) for k in keys[start : start + chunk]]
            marks = ",".join("?" * len(part))
            for row in self._reader.execute(f"SELECT key, id, text FROM questions WHERE key IN ({marks})", part):
                found[row[0]] = StoredQuestion(*row)
        return found

    def model_versions(self) -> dict[str, int]:
        rows = self._reader.execute("SELECT model_version, COUNT(*) FROM questions GROUP BY model_version")
        return {version: n for version, n in rows}

    def iter_vectors(self, batch: int = 10000, after: int = -1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(keys, vectors) of the rows whose key is over ``after`` (all by default), in key order,
        ``batch`` rows at a time. Keys only grow (AUTOINCREMENT; an upsert makes a new row), so
        the rows over a key are exactly those written after it."""
        last = after
        while True:
            rows = self._reader.execute(
                "SELECT key, embedding FROM questions WHERE key > ? ORDER BY key LIMIT ?", (last, batch)
            ).fetchall()
            if not rows:
                return
            keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
            yield keys, vectors
            last = int(keys[-1])

    def keys(self, upto: int) -> np.ndarray:
        """The keys of the rows whose key is at most ``upto``, in no particular order. Read from
        the index on ``id`` (SQLite picks it: it holds every key and is a small fraction of the
        table, whose rows carry the vectors), filtered here."""
        rows = self._reader.execute("SELECT key FROM questions")
        keys = np.fromiter((r[0] for r in rows), dtype=np.int64)
        return keys[keys <= upto]

    def iter_texts(self, not_version: str, batch: int = 2048) -> Iterator[list[tuple[int, str]]]:
        """(key, text) of the rows embedded by another model version than ``not_version``."""
        last = -1
        while True:
            rows = self._reader.execute(
                "SELECT key, text FROM questions WHERE key > ? AND model_version != ? ORDER BY key LIMIT ?",
                (last, not_version, batch),
            ).fetchall()
            if not rows:
                return
            yield [(int(k), t) for k, t in rows]
            last = int(rows[-1][0])
