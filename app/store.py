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
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from app.feed import Applied, FeedBatch, ModelMismatch, Removed, Row

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # PRAGMA user_version; 0 is a store of dupq 0.2 or older (contract v1), 2 of 0.3

SCHEMA = """
CREATE TABLE IF NOT EXISTS questions (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    embedding BLOB NOT NULL,
    model_version TEXT NOT NULL,
    updated REAL NOT NULL,
    namespace TEXT NOT NULL DEFAULT 'default',
    metadata TEXT NOT NULL DEFAULT '{}',
    seq INTEGER
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('generation', '0');
"""

# Version 2 on top of the tables above (a version-0 store gets the three columns first).
SCHEMA_2 = """
UPDATE questions SET seq = key WHERE seq IS NULL;
CREATE INDEX IF NOT EXISTS questions_listing ON questions (namespace, seq);
CREATE TABLE IF NOT EXISTS terms (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    key INTEGER NOT NULL,
    PRIMARY KEY (namespace, name, value, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS terms_key ON terms (key);
CREATE TABLE IF NOT EXISTS feedback (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    question1 TEXT NOT NULL,
    question2 TEXT NOT NULL,
    id1 TEXT,
    id2 TEXT,
    is_duplicate INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    created REAL NOT NULL
);
"""

# Version 3 (dupq 0.4): an index on the model version, so that the check every start-up makes
# ("were all stored vectors made by this model?") reads it instead of every row with its vector:
# 0.55 s against about 0.01 s at a million questions.
SCHEMA_3 = """
CREATE INDEX IF NOT EXISTS questions_model_version ON questions (model_version);
"""

DEFAULT_NAMESPACE = "default"
SEEDING = "seeding"  # the meta row that says whether a seeding began ("started") and ended ("done")

TextRow = tuple[int, str, str]  # a stored question's key, text and namespace (iter_texts)


def term_value(value: object) -> str:
    """A metadata value as the ``terms`` table holds it, so that a filter's value finds it: JSON
    text, with a whole float written as the integer it equals (``2.0`` finds ``2``), and ``true``
    never equal to ``1``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, ensure_ascii=False)


def metadata_terms(metadata: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The filter terms of a metadata object: (name, :func:`term_value` of its value)."""
    return tuple((name, term_value(value)) for name, value in metadata.items())


def rows_in(conn: sqlite3.Connection, select: str, values: Sequence[Any], chunk: int = 900) -> Iterator[Any]:
    """The rows of ``select``, a query with one ``IN ({})``, for every one of ``values``: asked
    in chunks that stay under the smallest limit on bound variables SQLite builds have (999)."""
    for start in range(0, len(values), chunk):
        part = list(values[start : start + chunk])
        yield from conn.execute(select.format(",".join("?" * len(part))), part)


def keyed_vectors(
    conn: sqlite3.Connection, table: str, dim: int, after: int = -1, batch: int = 10000
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """(keys, vectors, namespaces) of the rows of ``table`` (a ``key``, an ``embedding`` and a
    ``namespace`` column) whose key is over ``after``, in key order, ``batch`` rows at a time."""
    last = after
    while True:
        rows = conn.execute(
            f"SELECT key, embedding, namespace FROM {table} WHERE key > ? ORDER BY key LIMIT ?", (last, batch)
        ).fetchall()
        if not rows:
            return
        keys, vectors, namespaces = keyed_rows(rows, dim)
        yield keys, vectors, namespaces
        last = int(keys[-1])


def keyed_rows(rows: Sequence[Any], dim: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(keys, vectors, namespaces) of rows of (key, embedding bytes, namespace)."""
    keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
    return keys, vectors, [str(r[2]) for r in rows]


def own_lock(lock_path: Path) -> IO[str]:
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
    namespace: str = DEFAULT_NAMESPACE
    metadata: str = "{}"  # a JSON object, as stored


@dataclass(frozen=True)
class NewQuestion:
    """A question to store: ``metadata`` is its JSON object as text, ``terms`` its scalar values
    as :func:`term_value` writes them, for filters."""

    id: str
    text: str
    namespace: str = DEFAULT_NAMESPACE
    metadata: str = "{}"
    terms: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls, qid: str, text: str, namespace: str = DEFAULT_NAMESPACE, metadata: dict[str, Any] | None = None
    ) -> NewQuestion:
        metadata = metadata or {}
        return cls(
            qid,
            text,
            namespace,
            json.dumps(metadata, ensure_ascii=False, separators=(",", ":")),
            metadata_terms(metadata),
        )


@dataclass(frozen=True)
class Feedback:
    question1: str
    question2: str
    is_duplicate: bool
    id1: str | None = None
    id2: str | None = None


def latest_feedback(rows: Iterable[tuple[int, Feedback]]) -> tuple[list[tuple[int, Feedback]], int, int]:
    """The feedback pairs to learn from, of ``rows`` in the order of their numbers: the last
    decision on each pair of questions (in either order; a question's identity is the one training
    gives it, ``model.training.data.question_key``: lower-cased, white space collapsed),
    so a decision a moderator reversed, or two moderators' that disagree, never puts the same pair
    in a training file under both labels; and no pair of a question with itself, which teaches
    nothing as a duplicate and what no encoder can learn as a non-duplicate. Also how many
    decisions a later one replaced, and how many paired a question with itself."""
    latest: dict[frozenset[str], tuple[int, Feedback]] = {}
    superseded = itself = 0
    for number, pair in rows:
        key = frozenset(" ".join(text.lower().split()) for text in (pair.question1, pair.question2))
        if len(key) == 1:
            itself += 1
            continue
        superseded += key in latest
        latest[key] = (number, pair)
    return sorted(latest.values(), key=lambda row: row[0]), superseded, itself


PAGE_SIZE = 16384  # bytes per SQLite page of a new store


class Store(Protocol):
    """The source of truth, as the engine writes to it and start-up checks it: the SQLite store of
    a data directory (:class:`QuestionStore`) or a PostgreSQL database that replicas share
    (:class:`app.pgstore.PostgresStore`). Every write is one transaction, committed on return.
    Reads for serving come from a :class:`QuestionStore` either way (a replica's copy)."""

    def upsert(
        self, items: Sequence[NewQuestion], vectors: np.ndarray, model_version: str
    ) -> tuple[list[Removed], list[int]]: ...
    def delete_ids(self, ids: Sequence[str]) -> list[Removed]: ...
    def delete_namespace(self, namespace: str) -> int: ...
    def set_embeddings(self, keys: Sequence[int], vectors: np.ndarray, model_version: str) -> None: ...
    def add_feedback(self, pairs: Sequence[Feedback], model_version: str) -> int: ...
    def count(self, namespace: str | None = None) -> int: ...
    def get(self, qid: str) -> StoredQuestion | None: ...
    def model_versions(self) -> dict[str, int]: ...
    def namespace_sizes(self) -> dict[str, int]: ...
    def iter_texts(self, not_version: str, batch: int = 2048) -> Iterator[list[TextRow]]: ...
    def iter_feedback(self) -> Iterator[tuple[int, Feedback, str, float]]: ...
    def meta(self, name: str) -> str | None: ...
    def set_meta(self, name: str, value: str) -> None: ...
    def close(self) -> None: ...


class StoreInUse(OSError):
    """Another process has the store open."""


class StoreFull(OSError):
    """The store's disk (or database server) has no room left for a write, which was rolled back
    whole: nothing of it was written (a 507; a command line tool says it in one line)."""


def _full(err: BaseException, where: object) -> StoreFull | None:
    """``err`` as a :class:`StoreFull` if SQLite said the disk is full (``SQLITE_FULL``)."""
    if isinstance(err, sqlite3.OperationalError) and getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return StoreFull(f"no room left for the question store {where}: {err}")
    return None


def damaged(err: BaseException) -> bool:
    """Whether SQLite found a store file damaged (a page overwritten, a file cut short), where only
    a backup helps."""
    codes = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return isinstance(err, sqlite3.DatabaseError) and getattr(err, "sqlite_errorcode", None) in codes


class StoreTooNew(ValueError):
    """The store was written by a newer dupq, with a schema this one does not know."""


def create_tables(conn: sqlite3.Connection) -> None:
    """Make the tables of :data:`SCHEMA_VERSION` that a file lacks and mark it of that version (in
    a new file, set its ``page_size`` to :data:`PAGE_SIZE` before)."""
    for statement in (SCHEMA + SCHEMA_2 + SCHEMA_3).split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class QuestionStore:
    """The store of a data directory. ``read_only``: for reading beside the process that owns it
    (``dupq groups``, ``dupq feedback``): no lock taken, no write possible, and the store must be
    of this dupq's schema (WAL lets it read a consistent state while the owner writes)."""

    def __init__(self, path: str | Path, dim: int, read_only: bool = False, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.dim = dim
        self.synchronous = synchronous
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self.read_only = read_only
        if read_only:
            if not self.path.is_file():
                raise FileNotFoundError(f"no question store at {self.path}")
            version = int(self._reader.execute("PRAGMA user_version").fetchone()[0])
            if version != SCHEMA_VERSION:
                raise StoreTooNew(
                    f"{self.path} has schema version {version}, not {SCHEMA_VERSION}: "
                    + ("upgrade dupq" if version > SCHEMA_VERSION else "serve it once with this dupq to migrate it")
                )
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._owner = own_lock(self.path.with_name(self.path.name + ".lock"))
        try:
            with self._write_lock:
                self._writer = self._connect()
                self._migrate(self._writer)
        except BaseException:
            self._owner.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            uri = f"file:{self.path.resolve()}?mode=ro"
            return sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30.0)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        # Set before the file's first table, after that a no-op: a row (a 512-d vector is 2 KiB)
        # takes most of a 4 KiB page, which then holds one; a 16 KiB page holds seven.
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Create the tables, or bring a store of an older dupq up to :data:`SCHEMA_VERSION`, in one
        transaction; a store of a newer schema is refused (:class:`StoreTooNew`)."""
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreTooNew(
                f"{self.path} has schema version {version}; this dupq knows up to {SCHEMA_VERSION}: "
                "upgrade dupq, or use another data directory"
            )
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(questions)")}
            if columns and "namespace" not in columns:  # a version-0 store: contract v1 only
                conn.execute("ALTER TABLE questions ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default'")
                conn.execute("ALTER TABLE questions ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}'")
                conn.execute("ALTER TABLE questions ADD COLUMN seq INTEGER")
            create_tables(conn)
            conn.execute("COMMIT")
        except BaseException as err:
            if conn.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                conn.execute("ROLLBACK")
            if full := _full(err, self.path):
                raise full from err
            raise

    @property
    def _reader(self) -> sqlite3.Connection:
        # One read connection per thread: WAL readers run in parallel and never block the writer.
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def close(self) -> None:
        """Fold the write-ahead log into the store's file, then close: a store closed cleanly is
        that one file (its ``-wal`` empty), whole, which a copy of the file alone takes whole."""
        if self.read_only:
            return
        self.fold_log()
        self._writer.close()
        self._owner.close()  # releases the lock

    def fold_log(self) -> None:
        """Copy what the write-ahead log holds into the store's file and empty the log (a
        ``TRUNCATE`` checkpoint): after a large transaction (a replica's whole copy) its space is
        given back at once. One that cannot be done now (a reader in a transaction, a full disk)
        is left to SQLite's own checkpoints: nothing is lost, the log is read at the next open."""
        with self._write_lock:
            try:
                busy, _, _ = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as err:
                logger.warning("could not fold the write-ahead log into %s: %s", self.path, err)
                return
        if busy:
            logger.info("the write-ahead log of %s is left to SQLite's own checkpoints: a reader holds it", self.path)

    # Writes: each is one transaction ------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction, which bumps the generation if it changed a row; rolled back whole
        on any error."""
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            changes = self._writer.total_changes
            try:
                yield cur
                if self._writer.total_changes != changes:
                    cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'generation'")
                cur.execute("COMMIT")
            except BaseException as err:
                if self._writer.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                    cur.execute("ROLLBACK")
                if full := _full(err, self.path):
                    raise full from err
                raise

    def upsert(
        self, items: Sequence[NewQuestion], vectors: np.ndarray, model_version: str
    ) -> tuple[list[Removed], list[int]]:
        """Insert or replace questions with their vectors, atomically. A replaced question keeps its
        place in listings (``seq``) but gets a new key. Returns (the replaced rows, the keys of the
        new rows in the order of ``items``)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        now = time.time()
        old: list[Removed] = []
        new: list[int] = []
        with self._transaction() as cur:
            for item, vector in zip(items, vectors, strict=True):
                row = cur.execute(
                    "DELETE FROM questions WHERE id = ? RETURNING key, namespace, seq", (item.id,)
                ).fetchone()
                if row:
                    old.append((row[0], row[1]))
                    cur.execute("DELETE FROM terms WHERE key = ?", (row[0],))
                cur.execute(
                    "INSERT INTO questions (id, text, embedding, model_version, updated, namespace, metadata, seq) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        item.id,
                        item.text,
                        vector.tobytes(),
                        model_version,
                        now,
                        item.namespace,
                        item.metadata,
                        row[2] if row else None,
                    ),
                )
                key = int(cur.lastrowid or 0)
                if not row:
                    cur.execute("UPDATE questions SET seq = key WHERE key = ?", (key,))
                cur.executemany(
                    "INSERT INTO terms VALUES (?, ?, ?, ?)", [(item.namespace, n, v, key) for n, v in item.terms]
                )
                new.append(key)
        return old, new

    def delete(self, qid: str) -> Removed | None:
        """Delete a question; returns its key and namespace, or None if there was none."""
        removed = self.delete_ids([qid])
        return removed[0] if removed else None

    def delete_ids(self, ids: Sequence[str]) -> list[Removed]:
        """Delete the questions with these ids (unknown ids are ignored), in one transaction."""
        with self._transaction() as cur:
            removed = []
            for qid in ids:
                row = cur.execute("DELETE FROM questions WHERE id = ? RETURNING key, namespace", (qid,)).fetchone()
                if row:
                    removed.append((int(row[0]), str(row[1])))
                    cur.execute("DELETE FROM terms WHERE key = ?", (row[0],))
        return removed

    def delete_namespace(self, namespace: str) -> int:
        """Delete every question of a namespace, in one transaction; returns how many."""
        with self._transaction() as cur:
            cur.execute("DELETE FROM terms WHERE namespace = ?", (namespace,))
            return cur.execute("DELETE FROM questions WHERE namespace = ?", (namespace,)).rowcount

    def set_embeddings(self, keys: Sequence[int], vectors: np.ndarray, model_version: str) -> None:
        """Replace the vectors of existing rows (re-embedding with a new model)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._transaction() as cur:
            cur.executemany(
                "UPDATE questions SET embedding = ?, model_version = ? WHERE key = ?",
                [(v.tobytes(), model_version, int(k)) for k, v in zip(keys, vectors, strict=True)],
            )

    def add_feedback(self, pairs: Sequence[Feedback], model_version: str) -> int:
        now = time.time()
        with self._transaction() as cur:
            cur.executemany(
                "INSERT INTO feedback (question1, question2, id1, id2, is_duplicate, model_version, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(p.question1, p.question2, p.id1, p.id2, int(p.is_duplicate), model_version, now) for p in pairs],
            )
        return len(pairs)

    # Reads ----------------------------------------------------------------------------------------

    def generation(self) -> int:
        return int(self._reader.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()[0])

    def count(self, namespace: str | None = None) -> int:
        if namespace is None:
            return int(self._reader.execute("SELECT COUNT(*) FROM questions").fetchone()[0])
        sql = "SELECT COUNT(*) FROM questions WHERE namespace = ?"
        return int(self._reader.execute(sql, (namespace,)).fetchone()[0])

    def get(self, qid: str) -> StoredQuestion | None:
        row = self._reader.execute(
            "SELECT key, id, text, namespace, metadata FROM questions WHERE id = ?", (qid,)
        ).fetchone()
        return StoredQuestion(*row) if row else None

    def vector_of(self, qid: str) -> tuple[StoredQuestion, np.ndarray] | None:
        """A stored question and its stored vector."""
        row = self._reader.execute(
            "SELECT key, id, text, namespace, metadata, embedding FROM questions WHERE id = ?", (qid,)
        ).fetchone()
        if not row:
            return None
        return StoredQuestion(*row[:5]), np.frombuffer(row[5], dtype=np.float32)

    def by_keys(self, keys: Sequence[int]) -> dict[int, StoredQuestion]:
        """The questions with these keys (absent keys are left out)."""
        sql = "SELECT key, id, text, namespace, metadata FROM questions WHERE key IN ({})"
        return {row[0]: StoredQuestion(*row) for row in rows_in(self._reader, sql, [int(k) for k in keys])}

    def keys_of(self, ids: Sequence[str], namespace: str) -> np.ndarray:
        """The keys of those of ``ids`` stored in ``namespace``. Looked up by id alone (its unique
        index), the namespace checked here: with both in the query, SQLite would walk the
        namespace's rows instead."""
        rows = rows_in(self._reader, "SELECT key, namespace FROM questions WHERE id IN ({})", ids)
        return np.array([key for key, of in rows if of == namespace], dtype=np.int64)

    def filter_keys(self, namespace: str, conditions: Sequence[tuple[str, Sequence[str]]]) -> np.ndarray:
        """The sorted keys of the questions of ``namespace`` whose metadata meets every condition
        ``(name, values)``: the value under ``name`` is one of ``values`` (as :func:`term_value`
        writes them). Read from the ``terms`` table's primary key: no row of ``questions`` is read."""
        result: np.ndarray | None = None
        for name, values in conditions:
            keys: list[int] = []
            for start in range(0, len(values), 900):
                part = list(values[start : start + 900])
                marks = ",".join("?" * len(part))
                sql = f"SELECT key FROM terms WHERE namespace = ? AND name = ? AND value IN ({marks})"
                keys.extend(r[0] for r in self._reader.execute(sql, [namespace, name, *part]))
            found = np.unique(np.array(keys, dtype=np.int64))
            result = found if result is None else np.intersect1d(result, found, assume_unique=True)
            if not len(result):
                break
        return result if result is not None else np.zeros(0, dtype=np.int64)

    def page(
        self, namespace: str | None, after: tuple[str, int] | None, limit: int
    ) -> list[tuple[StoredQuestion, int]]:
        """Up to ``limit`` questions after position ``after`` (namespace, seq), in listing order
        (namespace, then first insertion), with their ``seq``: a keyset walk, which an insertion or
        a deletion elsewhere does not shift. ``namespace`` None walks all of them."""
        cols = "key, id, text, namespace, metadata, seq"
        if namespace is not None:
            last = after[1] if after else -1
            rows = self._reader.execute(
                f"SELECT {cols} FROM questions WHERE namespace = ? AND seq > ? ORDER BY seq LIMIT ?",
                (namespace, last, limit),
            ).fetchall()
        else:
            at = after or ("", -1)
            rows = self._reader.execute(
                f"SELECT {cols} FROM questions WHERE (namespace, seq) > (?, ?) ORDER BY namespace, seq LIMIT ?",
                (at[0], at[1], limit),
            ).fetchall()
        return [(StoredQuestion(*row[:5]), int(row[5])) for row in rows]

    def namespace_vectors(self, namespace: str, keys: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
        """The ids and vectors of a namespace (only ``keys`` of it, if given), read in one
        transaction: one consistent state, whatever is written meanwhile."""
        conn = self._reader
        conn.execute("BEGIN")
        try:
            rows = conn.execute(
                "SELECT key, id, embedding FROM questions WHERE namespace = ? ORDER BY key", (namespace,)
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        if keys is not None:
            wanted = set(keys.tolist())
            rows = [r for r in rows if r[0] in wanted]
        vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        return [r[1] for r in rows], vectors

    def namespace_sizes(self) -> dict[str, int]:
        rows = self._reader.execute("SELECT namespace, COUNT(*) FROM questions GROUP BY namespace")
        return {namespace: n for namespace, n in rows}

    def model_versions(self) -> dict[str, int]:
        rows = self._reader.execute("SELECT model_version, COUNT(*) FROM questions GROUP BY model_version")
        return {version: n for version, n in rows}

    def iter_vectors(self, batch: int = 10000, after: int = -1) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """(keys, vectors, namespaces) of the rows whose key is over ``after`` (all by default), in
        key order, ``batch`` rows at a time. Keys only grow (AUTOINCREMENT; an upsert makes a new
        row), so the rows over a key are exactly those written after it."""
        return keyed_vectors(self._reader, "questions", self.dim, after, batch)

    def keys(self, upto: int) -> np.ndarray:
        """The keys of the rows whose key is at most ``upto``, in no particular order. Read from
        the index on ``id`` (SQLite picks it: it holds every key and is a small fraction of the
        table, whose rows carry the vectors), filtered here."""
        rows = self._reader.execute("SELECT key FROM questions")
        keys = np.fromiter((r[0] for r in rows), dtype=np.int64)
        return keys[keys <= upto]

    def iter_texts(self, not_version: str, batch: int = 2048) -> Iterator[list[TextRow]]:
        """(key, text, namespace) of the rows embedded by another model version than
        ``not_version``, by key."""
        last = -1
        while True:
            rows = self._reader.execute(
                "SELECT key, text, namespace FROM questions WHERE key > ? AND model_version != ? ORDER BY key LIMIT ?",
                (last, not_version, batch),
            ).fetchall()
            if not rows:
                return
            yield [(int(k), t, ns) for k, t, ns in rows]
            last = int(rows[-1][0])

    def vectors_of(self, keys: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The keys, vectors and namespaces of the rows of ``keys`` that exist, by key."""
        sql = "SELECT key, embedding, namespace FROM questions WHERE key IN ({})"
        found = sorted(rows_in(self._reader, sql, [int(k) for k in keys]))
        vectors = np.frombuffer(b"".join(r[1] for r in found), dtype=np.float32).reshape(len(found), self.dim)
        return np.array([r[0] for r in found], dtype=np.int64), vectors, [r[2] for r in found]

    def meta(self, name: str) -> str | None:
        row = self._reader.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, name: str, value: str) -> None:
        """Record a value of the store's own (no question changes: the generation stays)."""
        with self._write_lock:  # one statement: a transaction of its own (autocommit)
            self._writer.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    # A replica's copy of a PostgreSQL store (app.replica) ----------------------------------------

    def apply_feed(self, batch: FeedBatch, model_version: str) -> Applied:
        """Apply a batch of the PostgreSQL store's change feed, in order, and record its position,
        in one transaction; returns what changed, for the index. An ``add`` of a row stored here
        already (re-embedded) replaces it; changes whose row is gone (removed later in the feed)
        and removes of rows not here are skipped."""
        applied = Applied()
        with self._transaction() as cur:
            for change in batch.changes:
                if change.op == "model":
                    if change.model_version != model_version:
                        applied.model_version = change.model_version
                elif change.op == "drop":
                    cur.execute("DELETE FROM terms WHERE namespace = ?", (change.namespace,))
                    cur.execute("DELETE FROM questions WHERE namespace = ?", (change.namespace,))
                    applied.dropped.append(str(change.namespace))
                    applied.count += 1
                elif change.op == "remove" or change.key in batch.rows:
                    gone = cur.execute("DELETE FROM questions WHERE key = ? RETURNING namespace", (change.key,))
                    row = gone.fetchone()
                    if row:
                        cur.execute("DELETE FROM terms WHERE key = ?", (change.key,))
                        applied.removed.append((int(change.key or 0), str(row[0])))
                        applied.count += 1
                    if change.op == "add":
                        self._insert_row(cur, batch.rows[int(change.key or 0)], model_version, applied)
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('feed_position', ?)", (str(batch.position),))
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('feed_mark', ?)", (batch.mark,))
        return applied

    def _insert_row(self, cur: sqlite3.Cursor, row: Row, model_version: str, applied: Applied) -> None:
        if row.model_version != model_version:
            applied.model_version = row.model_version  # never mixed into this index
            return
        cur.execute(
            "INSERT INTO questions (key, id, text, embedding, model_version, updated, namespace, metadata, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.key,
                row.id,
                row.text,
                row.embedding,
                row.model_version,
                time.time(),
                row.namespace,
                row.metadata,
                row.seq,
            ),
        )
        cur.executemany(
            "INSERT INTO terms VALUES (?, ?, ?, ?)",
            [(row.namespace, n, v, row.key) for n, v in metadata_terms(json.loads(row.metadata))],
        )
        applied.added.append((row.key, row.namespace, row.embedding))
        applied.count += 1

    def reset(self, source: str, fill: Callable[[Callable[[list[Row]], None]], int], model_version: str) -> int:
        """Replace everything with a full copy of a PostgreSQL store: ``fill`` hands the rows to
        its argument and returns the feed position they show. One transaction: a copy interrupted,
        or one that meets another model's vectors (:class:`ModelMismatch`), leaves the old one.
        Returns how many rows were copied."""
        applied = Applied()
        with self._transaction() as cur:
            cur.execute("DELETE FROM terms")
            cur.execute("DELETE FROM questions")

            def sink(rows: list[Row]) -> None:
                for row in rows:
                    self._insert_row(cur, row, model_version, applied)

            position = fill(sink)
            if applied.model_version is not None:  # rolled back: the old copy stays
                raise ModelMismatch(applied.model_version)
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('feed_position', ?)", (str(position),))
            cur.execute("DELETE FROM meta WHERE name = 'feed_mark'")  # of the copy replaced
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('source', ?)", (source,))
        self.fold_log()  # the whole copy went through the log: as large as the store
        return applied.count

    def iter_feedback(self) -> Iterator[tuple[int, Feedback, str, float]]:
        """Every feedback pair with its number, the model version that served it and its time."""
        rows = self._reader.execute(
            "SELECT n, question1, question2, is_duplicate, id1, id2, model_version, created FROM feedback ORDER BY n"
        )
        for n, q1, q2, dup, id1, id2, version, created in rows:
            yield n, Feedback(q1, q2, bool(dup), id1, id2), version, created
