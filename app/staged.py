"""Vectors of a new model made beside the running service (``dupq reembed``), so that the service
started on that model copies them instead of encoding every stored question again, and loads their
index instead of building it.

A model change re-embeds the store at start-up and rebuilds the index from the new vectors, and the
service answers 503 until both are done: with a converted all-MiniLM-L6-v2, over half an hour for a
million questions. ``dupq reembed --model-dir NEW`` encodes the stored questions with the new model
while the old one serves, into a file of the data directory named for the new model's version
(:func:`staged_path`), then builds their index into a snapshot beside it (:func:`stage_index`). The
service started on that model takes the vectors of the questions that did not change since, encodes
only the rest (questions added or edited after the run) (:func:`reembed`), loads the snapshot and
brings it level with the store (:func:`load_staged_index`), and removes both files. On PostgreSQL
the vectors are staged in the store itself (:mod:`app.pgstaged`), where whichever replica re-embeds
it takes them, and the index in the data directory given (that replica's, if it is the one).

Each vector is kept with its question's store key and a digest of its namespace and text. In a store
a key means one question (an upsert gives the question a new key); the digest makes sure of it where
the file meets another store (one restored from a backup, a data directory used again). The files
are a cache: SQLite in WAL mode, a crash loses at most its last batches; one that cannot be read is
set aside with a warning, never a failed start-up.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from app.index import IndexParams, NamespacedIndex, SnapshotError, SnapshotFile, read_bytes_at
from app.store import QuestionStore, Store, TextRow, keyed_vectors, rows_in
from model.encoder import QuestionEncoder

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (
    key INTEGER PRIMARY KEY, digest BLOB NOT NULL, namespace TEXT NOT NULL, embedding BLOB NOT NULL
);
"""


def staged_path(data_dir: Path, version: str) -> Path:
    """The file of a data directory that holds the vectors staged for model ``version``."""
    return data_dir / f"staged-{hashlib.sha256(version.encode()).hexdigest()[:16]}.sqlite3"


def staged_index_path(data_dir: Path, version: str) -> Path:
    """The index snapshot of the vectors staged for model ``version`` (with its ``.json``)."""
    return staged_path(data_dir, version).with_suffix(".faiss")


def question_digest(namespace: str, text: str) -> bytes:
    """What a staged vector keeps of its question: 16 bytes of BLAKE2b of its namespace and text."""
    return hashlib.blake2b(f"{namespace}\0{text}".encode("utf-8", "surrogatepass"), digest_size=16).digest()


def staged_for(rows: Sequence[TextRow], staged: Iterable[tuple[int, bytes, bytes]], dim: int) -> dict[int, np.ndarray]:
    """Of the (key, digest, vector bytes) ``staged`` for the keys of ``rows``, the vectors whose
    question (namespace and text) is the row's, by key."""
    wanted = {key: question_digest(namespace, text) for key, text, namespace in rows}
    found: dict[int, np.ndarray] = {}
    for key, digest, blob in staged:
        vector = np.frombuffer(blob, dtype=np.float32)
        if bytes(digest) == wanted.get(int(key)) and vector.shape == (dim,):
            found[int(key)] = vector
    return found


class Staged(Protocol):
    """Vectors staged for one model version: in a file of the data directory
    (:class:`StagedVectors`), or in the PostgreSQL store (:class:`app.pgstaged.StagedRows`)."""

    version: str
    dim: int
    name: str  # where they are, for the log

    def lookup(self, rows: Sequence[TextRow]) -> dict[int, np.ndarray]: ...
    def add(self, rows: Sequence[TextRow], vectors: np.ndarray) -> None: ...
    def keep_only(self, keys: np.ndarray) -> int: ...
    def namespace_sizes(self) -> dict[str, int]: ...
    def iter_vectors(self, batch: int = 10000) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]: ...
    def close(self) -> None: ...


class StagedVectors:
    """The staged vectors of one model version in a data directory, created by :meth:`create`
    (``dupq reembed``) or found by :meth:`find` (start-up)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, version: str, dim: int) -> None:
        self.path = path
        self.name = str(path)
        self.version = version
        self.dim = dim
        self._conn = conn

    @classmethod
    def create(cls, data_dir: Path, version: str, dim: int) -> StagedVectors:
        """The file for ``version``, made if missing, or made again if it cannot be read (it is a
        cache); a file of the same version but another width, which no model directory can give,
        is refused with a ``ValueError``."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = staged_path(data_dir, version)
        try:
            try:
                return cls._open(path, version, dim)
            except sqlite3.OperationalError:  # locked, or not writable: not the file's fault
                raise
            except sqlite3.DatabaseError as err:  # not SQLite, or damaged
                logger.warning("staging again from the start: %s cannot be read (%s)", path, err)
                _remove(path)
                return cls._open(path, version, dim)
        except (sqlite3.Error, ValueError) as err:
            raise ValueError(f"cannot stage vectors in {path}: {err}") from err

    @classmethod
    def _open(cls, path: Path, version: str, dim: int) -> StagedVectors:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?), ('dim', ?)", (version, str(dim)))
            conn.execute("COMMIT")
            staged = cls(path, conn, version, dim)
            staged._check()
        except BaseException:
            conn.close()
            raise
        return staged

    @classmethod
    def find(cls, data_dir: Path, version: str, dim: int) -> StagedVectors | None:
        """The staged vectors of ``version`` in ``data_dir``, or None: none were staged, or the
        file cannot be used, which is logged (damaged or of another width: removed, with the index
        staged beside it; not readable now, for its permissions or a lock: left as it is)."""
        path = staged_path(data_dir, version)
        if not path.is_file():
            return None
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        except sqlite3.Error as err:
            logger.warning("ignoring %s, vectors staged by dupq reembed: %s", path, err)
            return None
        staged = cls(path, conn, version, dim)
        try:
            staged._check()
        except sqlite3.OperationalError as err:  # not readable now (permissions, a lock): left as it is
            logger.warning("ignoring %s, vectors staged by dupq reembed: %s", path, err)
            staged.close()
            return None
        except (ValueError, sqlite3.DatabaseError) as err:  # not SQLite, damaged, or another width
            logger.warning("ignoring and removing %s, vectors staged by dupq reembed: %s", path, err)
            staged.remove()
            return None
        return staged

    def _check(self) -> None:
        meta = dict(self._conn.execute("SELECT name, value FROM meta").fetchall())
        if meta.get("version") != self.version or meta.get("dim") != str(self.dim):
            raise ValueError(
                f"it holds {meta.get('dim')}-d vectors of model {meta.get('version')}, "
                f"not {self.dim}-d ones of {self.version}"
            )

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def lookup(self, rows: Sequence[TextRow]) -> dict[int, np.ndarray]:
        """The staged vectors of ``rows`` whose namespace and text are the ones staged."""
        sql = "SELECT key, digest, embedding FROM vectors WHERE key IN ({})"
        return staged_for(rows, rows_in(self._conn, sql, [key for key, _, _ in rows]), self.dim)

    def add(self, rows: Sequence[TextRow], vectors: np.ndarray) -> None:
        """Stage the vectors of ``rows``, in one transaction; a write that fails (a full disk, a
        file damaged meanwhile) is a ``ValueError`` that names the file."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        staged = [
            (key, question_digest(namespace, text), namespace, v.tobytes())
            for (key, text, namespace), v in zip(rows, vectors, strict=True)
        ]
        try:
            with self._conn:  # a transaction, committed or rolled back
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", staged)
        except sqlite3.Error as err:
            raise ValueError(f"cannot stage vectors in {self.path}: {err}") from err

    def keep_only(self, keys: np.ndarray) -> int:
        """Drop the staged vectors of keys not in ``keys`` (questions deleted or edited since an
        earlier run); returns how many."""
        held = np.fromiter((k for (k,) in self._conn.execute("SELECT key FROM vectors")), dtype=np.int64)
        gone = held[~np.isin(held, keys)].tolist()
        try:
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany("DELETE FROM vectors WHERE key = ?", [(key,) for key in gone])
        except sqlite3.Error as err:
            raise ValueError(f"cannot stage vectors in {self.path}: {err}") from err
        return len(gone)

    def namespace_sizes(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT namespace, COUNT(*) FROM vectors GROUP BY namespace")
        return {str(namespace): int(n) for namespace, n in rows}

    def iter_vectors(self, batch: int = 10000) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """(keys, vectors, namespaces) of every staged vector, by key, ``batch`` at a time."""
        return keyed_vectors(self._conn, "vectors", self.dim, batch=batch)

    def close(self) -> None:
        self._conn.close()

    def remove(self) -> None:
        """Close the file and remove it, with its WAL files and the index staged beside it."""
        self.close()
        _remove(self.path)


def remove_staged(data_dir: Path, version: str) -> list[str]:
    """Remove what ``dupq reembed`` staged for model ``version`` in ``data_dir``, if anything;
    returns the files found (their names)."""
    path = staged_path(data_dir, version)
    found = [file.name for file in (path, path.with_suffix(".faiss")) if file.exists()]
    if found:
        logger.info("removing %s, staged by dupq reembed", " and ".join(found))
        _remove(path)
    return found


def _remove(path: Path) -> None:
    """Remove a staged file, its WAL files and its index; one that cannot be removed is only
    logged: it is never used for another model, and a later start-up on this one tries again."""
    index = path.with_suffix(".faiss")
    for suffix in ("", "-wal", "-shm"):
        _unlink(Path(f"{path}{suffix}"))
    for file in (index, index.with_suffix(".faiss.json")):
        _unlink(file)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        logger.warning("cannot remove %s: %s", err.filename, err.strerror)


@dataclass(frozen=True)
class Reembedded:
    """What a pass over the stored questions of other model versions did."""

    questions: int  # of other model versions when it began
    encoded: int  # encoded by this pass
    staged: int  # taken from staged vectors
    seconds: float
    seen: np.ndarray  # the keys of every question it re-embedded
    encoded_keys: np.ndarray  # those it encoded

    @property
    def taken_keys(self) -> np.ndarray:
        """The keys of the questions whose staged vectors it took."""
        return np.setdiff1d(self.seen, self.encoded_keys)


def reembed(
    encoder: QuestionEncoder,
    store: Store,
    take: Staged | None,
    put: Callable[[Sequence[TextRow], np.ndarray, np.ndarray], None],
    progress: Callable[[int], None] = lambda n: None,
) -> Reembedded:
    """One pass over the stored questions that another model version embedded, in batches: each
    question's vector taken from ``take`` where it was staged for it, else encoded, then
    handed to ``put`` with the rows and which of them were encoded, a batch at a time. Start-up
    puts every one into the store (:meth:`Store.set_embeddings`); ``dupq reembed`` stages the
    encoded ones (:meth:`StagedVectors.add`), the others being there already."""
    total = sum(n for v, n in store.model_versions().items() if v != encoder.version)
    encoded = taken = done = 0
    started = time.monotonic()
    seen: list[int] = []
    encoded_keys: list[int] = []
    for rows in store.iter_texts(not_version=encoder.version):
        found: dict[int, np.ndarray] = {}
        if take is not None:
            try:
                found = take.lookup(rows)
            except sqlite3.Error as err:  # damaged since it was opened: encode the rest
                logger.warning("no longer reading %s, vectors staged by dupq reembed: %s", take.name, err)
                take = None
        missing = [i for i, row in enumerate(rows) if row[0] not in found]
        vectors = np.empty((len(rows), encoder.dim), dtype=np.float32)
        if missing:
            vectors[missing] = encoder.encode([rows[i][1] for i in missing])
        for i, row in enumerate(rows):
            if row[0] in found:
                vectors[i] = found[row[0]]
        fresh = np.zeros(len(rows), dtype=bool)
        fresh[missing] = True
        put(rows, vectors, fresh)
        seen += [row[0] for row in rows]
        encoded_keys += [rows[i][0] for i in missing]
        encoded += len(missing)
        taken += len(rows) - len(missing)
        done += len(rows)
        progress(len(rows))
        logger.info(
            "re-embedded %d/%d questions, %d of them taken from staged vectors (%.0f/s)",
            done,
            total,
            taken,
            done / max(1e-9, time.monotonic() - started),
        )
    return Reembedded(
        total,
        encoded,
        taken,
        round(time.monotonic() - started, 1),
        np.array(seen, dtype=np.int64),
        np.array(encoded_keys, dtype=np.int64),
    )


def vector_digests(vectors: np.ndarray) -> np.ndarray:
    """8 bytes of BLAKE2b of each vector's float32 bytes, as unsigned integers: what a staged index
    keeps of each vector it holds, to tell at the switch whether the store holds that very vector."""
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    raw = rows.view(np.uint8).reshape(len(rows), -1)
    digests = (hashlib.blake2b(row.data, digest_size=8).digest() for row in raw)
    return np.frombuffer(b"".join(digests), dtype=np.uint64)


def stage_index(staged: Staged, data_dir: Path, tag: str, params: IndexParams) -> tuple[int, int]:
    """Index every staged vector into a snapshot in ``data_dir`` (tagged as the service's index
    is), with the key and :func:`vector_digests` of each vector after the indexes; returns its size
    and how many of them an earlier run's index held already. That index, if there is one, is
    brought level with the staged vectors (each vector it holds that is still staged, by its
    digest, is kept; the others are removed, and the vectors it lacks added); an index is built
    afresh, each namespace in the structure its size calls for, as start-up would, where there is
    none, it cannot be read, or what changed calls for a rebuild (an HNSW index with a quarter of it
    removed, or a flat one grown to HNSW's size). ``data_dir`` is made if missing (a replica's on
    PostgreSQL, before its first start)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = staged_index_path(data_dir, staged.version)
    index, kept = _previous_index(staged, path, tag, params), 0
    if index is not None:
        index, kept, pairs = _level(index, staged, path)
        if due := index.due():
            logger.info("building the staged index afresh: %d namespace(s) want a rebuild", len(due))
            index = None
    if index is None:
        index, kept = NamespacedIndex(staged.dim, params), 0
        index.expect(staged.namespace_sizes())
        keys: list[np.ndarray] = []
        digests: list[np.ndarray] = []
        for batch, vectors, namespaces in staged.iter_vectors():
            index.add(batch, vectors, namespaces)
            keys.append(batch)
            digests.append(vector_digests(vectors))
        pairs = _pairs(keys, digests)
    with SnapshotFile(path) as file:
        meta = index.write_to(file)
        offset, length = file.write_bytes(pairs.tobytes())
        file.commit({**meta, "tag": tag, "generation": -1, "vectors": {"offset": offset, "length": length}})
    return len(index), kept


def _pairs(keys: list[np.ndarray], digests: list[np.ndarray]) -> np.ndarray:
    """(key, digest) of each vector, by key, as a staged index keeps them."""
    pairs = np.zeros((sum(len(k) for k in keys), 2), dtype="<u8")
    if keys:
        pairs[:, 0], pairs[:, 1] = np.concatenate(keys), np.concatenate(digests)
    return pairs


def _previous_index(staged: Staged, path: Path, tag: str, params: IndexParams) -> NamespacedIndex | None:
    """The index an earlier run staged, if it can be read (one that cannot is built again)."""
    if not path.is_file():
        return None
    try:
        return NamespacedIndex.load(path, tag, params, staged.dim)
    except SnapshotError as why:
        logger.warning("building the staged index afresh: %s cannot be used (%s)", path.name, why)
        return None


def _level(index: NamespacedIndex, staged: Staged, path: Path) -> tuple[NamespacedIndex, int, np.ndarray]:
    """An earlier run's ``index`` made to hold exactly the staged vectors; with how many it kept,
    and the (key, digest) pairs of them all."""
    try:
        old_keys, old_digests = _staged_digests(index, path)
    except SnapshotError:
        old_keys, old_digests = np.empty(0, np.int64), np.empty(0, np.uint64)
    held = {int(key): namespace for namespace, live in index.live() for key in live}
    keys: list[np.ndarray] = []
    digests: list[np.ndarray] = []
    kept = 0
    for batch, vectors, namespaces in staged.iter_vectors():
        batch_digests = vector_digests(vectors)
        keys.append(batch)
        digests.append(batch_digests)
        known, staged_before = _digests_of(batch, old_keys, old_digests)
        same = known & (staged_before == batch_digests)
        same &= np.array([held.get(int(key)) == ns for key, ns in zip(batch, namespaces, strict=True)], dtype=bool)
        index.remove([(int(key), held.pop(int(key))) for key in batch[~same] if int(key) in held])
        for key in batch[same]:
            del held[int(key)]
        fresh = np.flatnonzero(~same)
        index.add(batch[fresh], vectors[fresh], [namespaces[i] for i in fresh])
        kept += int(same.sum())
    index.remove(list(held.items()))  # no longer staged: deleted or edited since
    return index, kept, _pairs(keys, digests)


def _staged_digests(index: NamespacedIndex, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The keys of the vectors a staged index holds, in order, and their digests."""
    where = index.snapshot_meta.get("vectors")
    if not isinstance(where, dict):
        raise SnapshotError("snapshot holds no digests of its vectors")
    held = np.frombuffer(read_bytes_at(path, int(where["offset"]), int(where["length"])), dtype="<u8")
    pairs = held.reshape(-1, 2)
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.uint64)


def load_staged_index(
    data_dir: Path, version: str, tag: str, params: IndexParams, store: QuestionStore, taken: np.ndarray
) -> NamespacedIndex | None:
    """The index staged for model ``version``, brought level with the store re-embedded with it:
    it keeps each question that is still stored with the vector it was staged with (those whose
    staged vectors this start-up ``taken``, keys; the others if the store's vector has the digest
    staged beside it, as when another replica of a PostgreSQL store took them), drops the rest,
    and every stored question it lacks is added from the store (those encoded at the switch, added
    since, or of this model before). None if there is no staged index, or it cannot be read
    (logged)."""
    path = staged_index_path(data_dir, version)
    if not path.is_file():
        return None
    started = time.monotonic()
    try:
        index = NamespacedIndex.load(path, tag, params, store.dim)
        staged_keys, staged_digests = _staged_digests(index, path)
    except SnapshotError as why:
        logger.warning("ignoring %s, the index staged by dupq reembed: %s", path, why)
        return None
    loaded = len(index)
    stored = store.keys(upto=np.iinfo(np.int64).max)
    gone: list[tuple[int, str]] = []
    held: list[np.ndarray] = []
    checked = 0
    for namespace, live in index.live():
        keep = np.isin(live, stored)
        unsure = np.flatnonzero(keep & ~np.isin(live, taken))
        for start in range(0, len(unsure), 10000):
            at = unsure[start : start + 10000]
            keep[at] = _same_vectors(store, live[at], staged_keys, staged_digests)
        checked += len(unsure)
        gone += [(int(key), namespace) for key in live[~keep]]
        held.append(live[keep])
    index.remove(gone)
    lacking = stored[~np.isin(stored, np.concatenate(held))] if held else stored
    for start in range(0, len(lacking), 10000):
        keys, vectors, namespaces = store.vectors_of(lacking[start : start + 10000])
        index.add(keys, vectors, namespaces)
    logger.info(
        "index loaded from %s: %d questions, %d removed, %d added from the store, %d checked against it, in %.1f s",
        path.name,
        loaded,
        len(gone),
        len(lacking),
        checked,
        time.monotonic() - started,
    )
    return index


def _same_vectors(store: QuestionStore, keys: np.ndarray, staged_keys: np.ndarray, staged: np.ndarray) -> np.ndarray:
    """Whether the store holds each of ``keys`` (stored ones, by key) with the vector staged for it."""
    found, vectors, _ = store.vectors_of(keys)
    known, digests = _digests_of(found, staged_keys, staged)
    same = dict(zip(found.tolist(), (known & (digests == vector_digests(vectors))).tolist(), strict=True))
    return np.array([same.get(int(key), False) for key in keys], dtype=bool)


def _digests_of(keys: np.ndarray, staged_keys: np.ndarray, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``keys``: whether ``staged_keys`` (in order) holds it, and its digest there (0 if not)."""
    if not len(staged_keys):
        return np.zeros(len(keys), dtype=bool), np.zeros(len(keys), dtype=np.uint64)
    at = np.clip(np.searchsorted(staged_keys, keys), 0, len(staged_keys) - 1)
    known = staged_keys[at] == keys
    return known, np.where(known, digests[at], np.uint64(0))
