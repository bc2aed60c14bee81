"""Vectors of a new model staged in the PostgreSQL store itself (``dupq reembed --store-url``), so
that whichever replica re-embeds the store on that model takes them.

A replica's data directory is a cache of the store (a container's volume, often made afresh when
the replica is recreated): vectors staged there were taken only by the replica of that directory,
and only if it re-embedded the store first. In the database every replica sees them. They go to a
table of their own, ``staged_vectors``, made by the first ``dupq reembed`` that needs it and kept
out of the versioned schema (an additive table that replicas of earlier releases ignore, not a
migration that would refuse them): one row a question, keyed by model version and store key, with
the digest of the question's namespace and text that :func:`app.staged.question_digest` gives. The
replica that re-embeds the store deletes its model's rows once it has taken them (or encoded their
questions), after the lock that serializes re-embeddings is released.

:class:`StagedRows` has the methods of :class:`app.staged.StagedVectors` that start-up and ``dupq
reembed`` call; losing the server in the middle is a :class:`app.pgstore.StoreUnavailable`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from app.pgstore import MIGRATE_LOCK, PostgresStore
from app.staged import question_digest, staged_for
from app.store import TextRow, keyed_rows

logger = logging.getLogger(__name__)

TABLE = "staged_vectors"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    model_version TEXT NOT NULL,
    key BIGINT NOT NULL,
    digest BYTEA NOT NULL,
    namespace TEXT NOT NULL,
    embedding BYTEA NOT NULL,
    PRIMARY KEY (model_version, key)
)
"""


class StagedRows:
    """The rows of ``staged_vectors`` of one model version, made by :meth:`create` (``dupq
    reembed``) or found by :meth:`find` (start-up)."""

    def __init__(self, store: PostgresStore, version: str, dim: int) -> None:
        self.store = store
        self.version = version
        self.dim = dim
        self.name = f"table {TABLE} of {store.where}"

    @classmethod
    def create(cls, store: PostgresStore, version: str, dim: int) -> StagedRows:
        """The rows of ``version``, the table made if missing (under the lock that migrations take,
        so that two runs do not race to make it)."""
        with store.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            conn.execute(SCHEMA.encode())
        return cls(store, version, dim)

    @classmethod
    def find(cls, store: PostgresStore, version: str, dim: int) -> StagedRows | None:
        """The rows staged for ``version``, or None: no table, or no row of that version."""
        with store.connection() as conn:
            if conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone() == (None,):
                return None
            row = conn.execute(f"SELECT 1 FROM {TABLE} WHERE model_version = %s LIMIT 1", (version,)).fetchone()
        return cls(store, version, dim) if row else None

    def count(self) -> int:
        with self.store.connection() as conn:
            row = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE model_version = %s", (self.version,)).fetchone()
        return int(row[0]) if row else 0

    def lookup(self, rows: Sequence[TextRow]) -> dict[int, np.ndarray]:
        """The staged vectors of ``rows`` whose namespace and text are the ones staged."""
        with self.store.connection() as conn:
            staged = conn.execute(
                f"SELECT key, digest, embedding FROM {TABLE} WHERE model_version = %s AND key = ANY(%s)",
                (self.version, [key for key, _, _ in rows]),
            ).fetchall()
        return staged_for(rows, staged, self.dim)

    def add(self, rows: Sequence[TextRow], vectors: np.ndarray) -> None:
        """Stage the vectors of ``rows``, in one transaction."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self.store.connection() as conn:
            conn.execute(
                f"INSERT INTO {TABLE} SELECT %s, * FROM unnest(%s::bigint[], %s::bytea[], %s::text[], %s::bytea[]) "
                "ON CONFLICT (model_version, key) DO UPDATE "
                "SET digest = EXCLUDED.digest, namespace = EXCLUDED.namespace, embedding = EXCLUDED.embedding",
                (
                    self.version,
                    [key for key, _, _ in rows],
                    [question_digest(namespace, text) for _, text, namespace in rows],
                    [namespace for _, _, namespace in rows],
                    [v.tobytes() for v in vectors],
                ),
            )

    def keep_only(self, keys: np.ndarray) -> int:
        """Drop the staged vectors of keys not in ``keys`` (questions deleted or edited since an
        earlier run); returns how many."""
        with self.store.connection() as conn:
            # An anti-join: "key <> ALL(array)", as fast on PostgreSQL 15 (0.3 s for 200,000 keys), is
            # hashed only since 15 (before, the whole array is read for each row).
            gone = conn.execute(
                f"DELETE FROM {TABLE} s WHERE model_version = %s "
                "AND NOT EXISTS (SELECT 1 FROM unnest(%s::bigint[]) AS kept(key) WHERE kept.key = s.key)",
                (self.version, keys.astype(np.int64).tolist()),
            ).rowcount
        return int(gone)

    def namespace_sizes(self) -> dict[str, int]:
        with self.store.connection() as conn:
            rows = conn.execute(
                f"SELECT namespace, count(*) FROM {TABLE} WHERE model_version = %s GROUP BY namespace",
                (self.version,),
            ).fetchall()
        return {str(namespace): int(n) for namespace, n in rows}

    def iter_vectors(self, batch: int = 10000) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """(keys, vectors, namespaces) of every staged vector, by key, ``batch`` at a time."""
        last = -1
        while True:
            with self.store.connection() as conn:
                rows = conn.execute(
                    f"SELECT key, embedding, namespace FROM {TABLE} WHERE model_version = %s AND key > %s "
                    "ORDER BY key LIMIT %s",
                    (self.version, last, batch),
                ).fetchall()
            if not rows:
                return
            keys, vectors, namespaces = keyed_rows(rows, self.dim)
            yield keys, vectors, namespaces
            last = int(keys[-1])

    def close(self) -> None:
        """Nothing to close: each call takes a connection of the store's pool."""

    def remove(self) -> None:
        """Delete the rows of this model version."""
        remove_staged_rows(self.store, self.version)


def remove_staged_rows(store: PostgresStore, version: str) -> int:
    """Delete what ``dupq reembed`` staged in the store for model ``version``, if anything;
    returns how many vectors."""
    with store.connection() as conn:
        if conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone() == (None,):
            return 0
        n = int(conn.execute(f"DELETE FROM {TABLE} WHERE model_version = %s", (version,)).rowcount)
    if n:
        logger.info("removed the %d vectors that dupq reembed staged in %s", n, TABLE)
    return n
