"""Vectors of a new model made beside the running service (``dupq reembed``), so that the service
started on that model copies them instead of encoding every stored question again.

A model change re-embeds the store at start-up, and the service answers 503 until that is done: a
million questions take 20 minutes with a converted all-MiniLM-L6-v2. ``dupq reembed --model-dir
NEW`` encodes the stored questions with the new model while the old one serves, into a file of the
data directory named for the new model's version (:func:`staged_path`). The service started on
that model then takes the vectors of the questions that did not change since, encodes only the
rest (questions added or edited after the run), and removes the file (:func:`reembed`).

Each vector is kept with its question's store key and a digest of its text. In a store a key means
one text (an upsert gives the question a new key); the digest makes sure of it where the file
meets another store (one restored from a backup, a data directory used again). The file is a cache:
SQLite in WAL mode, a crash loses at most its last batches, and one that cannot be read is set
aside with a warning, never a failed start-up.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.store import Store
from model.encoder import QuestionEncoder

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (key INTEGER PRIMARY KEY, digest BLOB NOT NULL, embedding BLOB NOT NULL);
"""


def staged_path(data_dir: Path, version: str) -> Path:
    """The file of a data directory that holds the vectors staged for model ``version``."""
    return data_dir / f"staged-{hashlib.sha256(version.encode()).hexdigest()[:16]}.sqlite3"


def text_digest(text: str) -> bytes:
    """What a staged vector keeps of its question's text: 16 bytes of BLAKE2b."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class StagedVectors:
    """The staged vectors of one model version in a data directory, created by :meth:`create`
    (``dupq reembed``) or found by :meth:`find` (start-up)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, version: str, dim: int) -> None:
        self.path = path
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
        file cannot be used (damaged, another width), which is logged and the file removed."""
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

    def lookup(self, rows: Sequence[tuple[int, str]], chunk: int = 900) -> dict[int, np.ndarray]:
        """The staged vectors of ``rows`` (store key, text) whose text is the one staged."""
        wanted = {key: text_digest(text) for key, text in rows}
        found: dict[int, np.ndarray] = {}
        keys = list(wanted)
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            for key, digest, blob in self._conn.execute(
                f"SELECT key, digest, embedding FROM vectors WHERE key IN ({','.join('?' * len(part))})", part
            ):
                vector = np.frombuffer(blob, dtype=np.float32)
                if digest == wanted[key] and vector.shape == (self.dim,):
                    found[int(key)] = vector
        return found

    def add(self, rows: Sequence[tuple[int, str]], vectors: np.ndarray) -> None:
        """Stage the vectors of ``rows`` (store key, text), in one transaction; a write that fails
        (a full disk, a file damaged meanwhile) is a ``ValueError`` that names the file."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        try:
            with self._conn:  # a transaction, committed or rolled back
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                    [(key, text_digest(text), v.tobytes()) for (key, text), v in zip(rows, vectors, strict=True)],
                )
        except sqlite3.Error as err:
            raise ValueError(f"cannot stage vectors in {self.path}: {err}") from err

    def close(self) -> None:
        self._conn.close()

    def remove(self) -> None:
        """Close the file and remove it, with its WAL files."""
        self.close()
        _remove(self.path)


def _remove(path: Path) -> None:
    """Remove a staged file and its WAL files; one that cannot be removed is only logged: it is
    never used for another model, and a later start-up on this one tries again."""
    for suffix in ("", "-wal", "-shm"):
        try:
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        except OSError as err:
            logger.warning("cannot remove %s: %s", err.filename, err.strerror)


@dataclass(frozen=True)
class Reembedded:
    """What a pass over the stored questions of other model versions did."""

    questions: int  # of other model versions when it began
    encoded: int  # encoded by this pass
    staged: int  # taken from staged vectors
    seconds: float


def reembed(
    encoder: QuestionEncoder,
    store: Store,
    take: StagedVectors | None,
    put: Callable[[Sequence[tuple[int, str]], np.ndarray], None],
    progress: Callable[[int], None] = lambda n: None,
) -> Reembedded:
    """One pass over the stored questions that another model version embedded, in batches: each
    question's vector taken from ``take`` where it was staged for its text, else encoded, then
    handed to ``put`` with the rows, a batch at a time. Start-up puts them into the store
    (:meth:`Store.set_embeddings`); ``dupq reembed`` stages them."""
    total = sum(n for v, n in store.model_versions().items() if v != encoder.version)
    encoded = taken = done = 0
    started = time.monotonic()
    for rows in store.iter_texts(not_version=encoder.version):
        found: dict[int, np.ndarray] = {}
        if take is not None:
            try:
                found = take.lookup(rows)
            except sqlite3.Error as err:  # damaged since it was opened: encode the rest
                logger.warning("no longer reading %s, vectors staged by dupq reembed: %s", take.path, err)
                take = None
        missing = [i for i, (key, _) in enumerate(rows) if key not in found]
        vectors = np.empty((len(rows), encoder.dim), dtype=np.float32)
        if missing:
            vectors[missing] = encoder.encode([rows[i][1] for i in missing])
        for i, (key, _) in enumerate(rows):
            if key in found:
                vectors[i] = found[key]
        put(rows, vectors)
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
    return Reembedded(total, encoded, taken, round(time.monotonic() - started, 1))
