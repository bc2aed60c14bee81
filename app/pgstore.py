"""The PostgreSQL store: one source of truth shared by several replicas (``DUPQ_STORE_URL=postgresql://...``).

It holds what the SQLite store holds (questions with their vectors and model version, feedback)
and one thing more, the **change feed**: every write transaction appends a row per change to
``changes`` (``add`` and ``remove`` of a key, ``drop`` of a namespace, ``model`` when the store's
model version changes), numbered by one increasing sequence, and sends a ``NOTIFY``. Each replica
keeps a local copy of the questions (:class:`app.store.QuestionStore`) and its own vector index,
and tails the feed (:mod:`app.replica`).

The feed is read "after position n", which is only safe if no change numbered below n can become
visible later: every write transaction therefore takes one transaction-scoped advisory lock first,
so writes draw their numbers and commit one at a time, in order. A reader that sees change n has
seen every change before it.

A write is committed (``synchronous_commit`` as the server has it: on by default) when a method
returns. Any failure to reach the server, or a connection lost in the middle, is a
:class:`StoreUnavailable`: the caller answers 503, and the pool reconnects by itself once the
server is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from app.feed import Change, FeedBatch, Row
from app.store import Feedback, NewQuestion, Removed, StoredQuestion, StoreFull, StoreTooNew, TextRow

SCHEMA_VERSION = 1  # the row of table dupq_schema
CREATED_US = "(extract(epoch FROM created) * 1000000)::bigint"  # a change's commit time, whatever the time zone
WRITE_LOCK = 0x64757071  # advisory lock key ('dupq') that orders every write transaction
MIGRATE_LOCK = 0x6475706D  # one replica migrates at a time
REEMBED_LOCK = 0x64757065  # one replica re-embeds the store at a time
SEED_LOCK = 0x64757073  # one replica seeds the store at a time
CHANNEL = "dupq_changes"

MIGRATIONS = {
    1: """
CREATE SEQUENCE question_keys;
CREATE TABLE questions (
    key BIGINT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    embedding BYTEA NOT NULL,
    model_version TEXT NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    namespace TEXT NOT NULL,
    metadata TEXT NOT NULL,
    seq BIGINT NOT NULL
);
CREATE INDEX questions_model_version ON questions (model_version);
CREATE INDEX questions_namespace ON questions (namespace);
CREATE SEQUENCE change_seqs;
CREATE TABLE changes (
    seq BIGINT PRIMARY KEY,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove', 'drop', 'model')),
    key BIGINT,
    namespace TEXT,
    model_version TEXT,
    created TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX changes_created ON changes (created);
CREATE TABLE feedback (
    n BIGSERIAL PRIMARY KEY,
    question1 TEXT NOT NULL,
    question2 TEXT NOT NULL,
    id1 TEXT,
    id2 TEXT,
    is_duplicate BOOLEAN NOT NULL,
    model_version TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('store_id', gen_random_uuid()::text), ('feed_floor', '0');
""",
}

# A row of ``questions`` as the feed hands it to a replica.
ROW_COLUMNS = "key, id, text, embedding, model_version, namespace, metadata, seq"
# A row of ``questions``, and one of ``feedback``, as :meth:`PostgresStore.load` takes them (those
# of the SQLite store too: app.backup).
LOAD_COLUMNS = ROW_COLUMNS + ", updated"
FEEDBACK_COLUMNS = "n, question1, question2, id1, id2, is_duplicate, model_version, created"


class StoreUnavailable(ConnectionError):
    """PostgreSQL cannot be reached, or the connection was lost: a 503 with Retry-After. A write
    that raised it may or may not have been committed; it was never acknowledged. (An
    ``OSError``: a command line tool says it in one line, as it does a file it cannot read.)"""


class StoreNotEmpty(ValueError):
    """A store to load (:meth:`PostgresStore.load`) holds questions or feedback already."""


class ModelChanged(RuntimeError):
    """The store's vectors are now made by another model version than this replica's."""


def _feed_end(conn: psycopg.Connection[Any]) -> int:
    floor = int(conn.execute("SELECT value FROM meta WHERE name = 'feed_floor'").fetchone()[0])  # type: ignore[index]
    last = conn.execute("SELECT max(seq) FROM changes").fetchone()
    return max(floor, int(last[0]) if last and last[0] is not None else 0)


def _stream(conn: psycopg.Connection[Any], query: str, sink: Callable[[list[Any]], None], batch: int) -> None:
    """Hand the rows of ``query`` to ``sink``, ``batch`` at a time, through a server-side cursor."""
    with conn.cursor(name="dupq_stream") as cur:
        cur.itersize = batch
        cur.execute(query.encode())
        while rows := cur.fetchmany(batch):
            sink(rows)


def _reason(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _why_not(url: str) -> str:
    """Why a connection to ``url`` fails now (the pool only logs it), as ": REASON", or ""."""
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.Error as err:
        return f": {_reason(err)}"
    return ""


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://?"
    user, host, port, db = (info.get(k, "") for k in ("user", "host", "port", "dbname"))
    return f"postgresql://{user}@{host}:{port or 5432}/{db}"


# TCP settings of every connection, on both sides: keepalive probes after 10 s idle, every 5 s, 3
# lost ending it; and at most 25 s for sent data (or probes) to go unacknowledged.
KEEPALIVE = {"keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 25_000}


def client_keepalives(url: str) -> dict[str, Any]:
    """libpq's TCP settings (:data:`KEEPALIVE`) that ``url`` does not set itself. With
    :func:`_keep_alive`, a side gone without closing the connection (its machine lost power, the
    network was cut) is noticed within about 25 s, not the hours of the system's defaults (two
    hours idle; some fifteen minutes of retransmissions): here, a query waiting on a server gone
    fails (a 503)."""
    given = psycopg.conninfo.conninfo_to_dict(url)
    return {k: v for k, v in {"keepalives": 1, **KEEPALIVE}.items() if k not in given}


def _keep_alive(conn: psycopg.Connection[Any]) -> None:
    """The server's side, for this session (ignored on a Unix socket): it ends the session of a
    replica gone, and with it a transaction that held the write lock, which every write waits for,
    or the re-embedding lock. SET, not a startup option, which a pooler such as PgBouncer may refuse
    (behind one, these settle when the server takes the pooler for gone; the pooler's own, a replica)."""
    for name, value in KEEPALIVE.items():
        conn.execute(f"SET {name.replace('keepalives', 'tcp_keepalives')} = {value}".encode())


def _configure(conn: psycopg.Connection[Any]) -> None:
    _keep_alive(conn)
    conn.commit()  # the pool hands out connections idle, outside a transaction


class PostgresStore:
    """The store in a PostgreSQL database: connect, create or migrate the schema (a newer schema
    is refused with :class:`StoreTooNew`), and keep a pool of connections. ``connect_timeout``:
    how long opening waits for the server (a replica may start before its database);
    ``timeout``: how long a call waits for a connection before :class:`StoreUnavailable`.
    ``existing``: a database without the schema is refused (``FileNotFoundError``), not given one:
    for the tools that read a store (a mistyped database name is not an empty store)."""

    def __init__(
        self,
        url: str,
        dim: int,
        timeout: float = 2.0,
        connect_timeout: float = 30.0,
        size: int = 4,
        existing: bool = False,
    ) -> None:
        self.url = url
        self.dim = dim
        self.where = safe_url(url)
        self.keepalives = client_keepalives(url)
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=size,
            timeout=timeout,
            open=False,
            # A connection is tried before it is handed out: after a server restart the stale ones
            # are dropped there, instead of failing one request each.
            check=ConnectionPool.check_connection,
            kwargs={"connect_timeout": max(1, int(timeout)), **self.keepalives},
            configure=_configure,
            name="dupq",
        )
        try:
            self.pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as err:
            self.pool.close()
            raise StoreUnavailable(
                f"cannot reach PostgreSQL at {self.where} within {connect_timeout:g} s{_why_not(url)}"
            ) from err
        try:
            self._migrate(existing)
            self.store_id = str(self.meta("store_id"))
        except BaseException:
            self.pool.close()
            raise

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in a transaction (committed on leaving, rolled back on an error);
        losing the server is a :class:`StoreUnavailable`, its disk full a :class:`StoreFull`."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg.errors.DiskFull as err:  # the server's disk: the transaction was rolled back
            raise StoreFull(f"no room left for the question store at PostgreSQL {self.where}: {_reason(err)}") from err
        except (psycopg.OperationalError, PoolTimeout) as err:
            raise StoreUnavailable(f"PostgreSQL at {self.where} is unreachable: {_reason(err)}") from err

    def _migrate(self, existing: bool = False) -> None:
        with self.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            if existing and conn.execute("SELECT to_regclass('dupq_schema')").fetchone() == (None,):
                raise FileNotFoundError(
                    f"no dupq store in the database at {self.where} (it has no dupq_schema table): check the URL"
                )
            conn.execute("CREATE TABLE IF NOT EXISTS dupq_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM dupq_schema").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreTooNew(
                    f"the database at {self.where} has dupq schema version {version}; this dupq knows up to "
                    f"{SCHEMA_VERSION}: upgrade dupq, or use another database"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                conn.execute(MIGRATIONS[step].encode())  # several statements: the simple query protocol
            if version != SCHEMA_VERSION:
                conn.execute("DELETE FROM dupq_schema")
                conn.execute("INSERT INTO dupq_schema VALUES (%s)", (SCHEMA_VERSION,))

    def meta(self, name: str) -> str | None:
        with self.connection() as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = %s", (name,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, name: str, value: str) -> None:
        """Record a value of the store's own (not in the feed: replicas read it from here)."""
        with self.connection() as conn:
            conn.execute(
                "INSERT INTO meta VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                (name, value),
            )

    # Writes: each is one transaction, in feed order ---------------------------------------------

    @contextmanager
    def _write(self, model_version: str | None) -> Iterator[psycopg.Cursor[Any]]:
        """A write transaction, holding the write lock; with ``model_version``, refused with
        :class:`ModelChanged` unless it is the store's (a fresh store takes it)."""
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            if model_version is not None:
                row = cur.execute("SELECT value FROM meta WHERE name = 'model_version'").fetchone()
                if row is None:
                    self._set_model(cur, model_version)
                elif row[0] != model_version:
                    raise ModelChanged(
                        f"the store's vectors are now made by model {row[0]}, not this replica's {model_version}: "
                        "serve that model here too"
                    )
            yield cur

    @staticmethod
    def _log(cur: psycopg.Cursor[Any], changes: Sequence[tuple[str, int | None, str | None, str | None]]) -> None:
        if changes:
            cur.executemany(
                "INSERT INTO changes (seq, op, key, namespace, model_version) "
                "VALUES (nextval('change_seqs'), %s, %s, %s, %s)",
                changes,
            )
            cur.execute(f"NOTIFY {CHANNEL}")

    def _set_model(self, cur: psycopg.Cursor[Any], version: str) -> None:
        cur.execute(
            "INSERT INTO meta VALUES ('model_version', %s) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            (version,),
        )
        self._log(cur, [("model", None, None, version)])

    def upsert(
        self, items: Sequence[NewQuestion], vectors: np.ndarray, model_version: str
    ) -> tuple[list[Removed], list[int]]:
        """As :meth:`app.store.QuestionStore.upsert` (an id may appear once per call)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            raise ValueError("an id appears twice in one upsert")
        now = time.time()
        with self._write(model_version) as cur:
            old = cur.execute(
                "DELETE FROM questions WHERE id = ANY(%s) RETURNING key, namespace, seq, id", (ids,)
            ).fetchall()
            kept_seq = {qid: seq for _, _, seq, qid in old}
            drawn = cur.execute("SELECT nextval('question_keys') FROM generate_series(1, %s)", (len(ids),))
            keys = sorted(int(r[0]) for r in drawn)
            cur.executemany(
                f"INSERT INTO questions ({ROW_COLUMNS}, updated) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        key,
                        item.id,
                        item.text,
                        vector.tobytes(),
                        model_version,
                        item.namespace,
                        item.metadata,
                        kept_seq.get(item.id, key),
                        now,
                    )
                    for key, item, vector in zip(keys, items, vectors, strict=True)
                ],
            )
            removed = [(int(key), str(namespace)) for key, namespace, _, _ in old]
            self._log(
                cur,
                [("remove", key, ns, None) for key, ns in removed]
                + [("add", key, item.namespace, None) for key, item in zip(keys, items, strict=True)],
            )
        return removed, keys

    def delete_ids(self, ids: Sequence[str]) -> list[Removed]:
        with self._write(None) as cur:
            rows = cur.execute("DELETE FROM questions WHERE id = ANY(%s) RETURNING key, namespace", (list(ids),))
            removed = [(int(key), str(namespace)) for key, namespace in rows.fetchall()]
            self._log(cur, [("remove", key, ns, None) for key, ns in removed])
        return removed

    def delete_namespace(self, namespace: str) -> int:
        with self._write(None) as cur:
            n = cur.execute("DELETE FROM questions WHERE namespace = %s", (namespace,)).rowcount
            if n:
                self._log(cur, [("drop", None, namespace, None)])
        return int(n)

    def set_embeddings(self, keys: Sequence[int], vectors: np.ndarray, model_version: str) -> None:
        """Replace the vectors of existing rows (re-embedding with the store's new model, which
        :meth:`claim_model` set first); followers get them as ``add``s of the same keys."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._write(model_version) as cur:
            rows = cur.execute(
                "UPDATE questions q SET embedding = u.e, model_version = %s "
                "FROM unnest(%s::bigint[], %s::bytea[]) AS u(k, e) WHERE q.key = u.k RETURNING q.key, q.namespace",
                (model_version, [int(k) for k in keys], [v.tobytes() for v in vectors]),
            ).fetchall()
            self._log(cur, [("add", int(key), str(ns), None) for key, ns in rows])

    def claim_model(self, version: str) -> None:
        """Make ``version`` the store's model version: replicas serving another one stop serving
        (they see a ``model`` change) and their writes are refused."""
        with self._write(None) as cur:
            row = cur.execute("SELECT value FROM meta WHERE name = 'model_version'").fetchone()
            if row is None or row[0] != version:
                self._set_model(cur, version)

    def reembedding(
        self, waiting: Callable[[], None], poll_s: float = 0.5
    ) -> AbstractContextManager[psycopg.Connection[Any]]:
        """Hold the store's re-embedding lock: replicas started on a new model at once re-embed it
        one at a time, so that none encodes what another is encoding (a replica given the vectors
        staged by ``dupq reembed`` is not slowed down by the others either), and those that follow
        find it done. See :meth:`exclusive`."""
        return self.exclusive(REEMBED_LOCK, waiting, poll_s)

    def seeding(
        self, waiting: Callable[[], None], poll_s: float = 0.5
    ) -> AbstractContextManager[psycopg.Connection[Any]]:
        """Hold the store's seeding lock: replicas started at once on an empty store seed it one
        at a time, and those that follow find it seeded. See :meth:`exclusive`."""
        return self.exclusive(SEED_LOCK, waiting, poll_s)

    @contextmanager
    def exclusive(
        self, lock: int, waiting: Callable[[], None], poll_s: float = 0.5
    ) -> Iterator[psycopg.Connection[Any]]:
        """Hold advisory lock ``lock``: a session lock, on a connection of its own (yielded), that
        the server drops with the connection if this process dies (the next one goes on from
        there); ``waiting`` is called while another replica holds it."""
        with self._connection() as conn:  # with keepalives: the lock of a replica gone is dropped in 25 s
            try:
                while not conn.execute("SELECT pg_try_advisory_lock(%s)", (lock,)).fetchone()[0]:  # type: ignore[index]
                    waiting()
                    time.sleep(poll_s)
            except psycopg.OperationalError as err:
                raise StoreUnavailable(f"PostgreSQL at {self.where} is unreachable: {_reason(err)}") from err
            yield conn  # the lock goes with the connection

    def load(
        self,
        questions: Iterable[Sequence[Any]],
        feedback: Iterable[Sequence[Any]],
        model_version: str | None,
        meta: dict[str, str | None],
    ) -> tuple[int, str | None]:
        """Fill a store that holds no question and no feedback (:class:`StoreNotEmpty` otherwise)
        with the rows of another store, as they are: ``questions`` as :data:`LOAD_COLUMNS`, keys
        and listing order kept, ``feedback`` as :data:`FEEDBACK_COLUMNS`, numbers kept; the store's
        model version set to ``model_version`` and its ``meta`` rows to theirs (None: removed). One
        write transaction, in the feed like any other (the model first, then an ``add`` per
        question): replicas running on the empty store take the questions, or stop if their model
        is another; replicas started later copy them. Returns the feed's position after the load
        and its :attr:`FeedBatch.mark` (None if the feed is empty): where a copy of these rows
        made into a replica's follows the feed from."""
        with self._write(None) as cur:
            held = cur.execute("SELECT (SELECT count(*) FROM questions), (SELECT count(*) FROM feedback)").fetchone()
            if held is not None and any(held):
                raise StoreNotEmpty(
                    f"the store at {self.where} holds {held[0]} questions and {held[1]} feedback pairs already: "
                    "load into a new database, or one whose questions and feedback were deleted"
                )
            if model_version is not None:
                row = cur.execute("SELECT value FROM meta WHERE name = 'model_version'").fetchone()
                if row is None or row[0] != model_version:
                    self._set_model(cur, model_version)
            with cur.copy(f"COPY questions ({LOAD_COLUMNS}) FROM STDIN") as copy:
                for question in questions:
                    copy.write_row(question)
            with cur.copy(f"COPY feedback ({FEEDBACK_COLUMNS}) FROM STDIN") as copy:
                for pair in feedback:
                    copy.write_row(pair)
            cur.execute(
                "INSERT INTO changes (seq, op, key, namespace) SELECT nextval('change_seqs'), 'add', key, namespace "
                "FROM (SELECT key, namespace FROM questions ORDER BY key) AS loaded"
            )
            cur.execute("SELECT setval('question_keys', max(key)) FROM questions HAVING count(*) > 0")
            cur.execute(
                "SELECT setval(pg_get_serial_sequence('feedback', 'n'), max(n)) FROM feedback HAVING count(*) > 0"
            )
            for name, value in meta.items():
                cur.execute("DELETE FROM meta WHERE name = %s", (name,))
                if value is not None:
                    cur.execute("INSERT INTO meta VALUES (%s, %s)", (name, value))
            cur.execute(f"NOTIFY {CHANNEL}")
            last = cur.execute(f"SELECT seq, {CREATED_US} FROM changes ORDER BY seq DESC LIMIT 1").fetchone()
            if last is None:
                return _feed_end(cur.connection), None
            return int(last[0]), f"{last[0]}@{last[1]}"

    def add_feedback(self, pairs: Sequence[Feedback], model_version: str) -> int:
        now = time.time()
        with self.connection() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO feedback (question1, question2, id1, id2, is_duplicate, model_version, created) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [(p.question1, p.question2, p.id1, p.id2, p.is_duplicate, model_version, now) for p in pairs],
            )
        return len(pairs)

    def prune_feed(self, older_than_s: float) -> int:
        """Drop the changes older than ``older_than_s`` seconds; a replica that was away longer
        copies the whole store again. Returns how many were dropped."""
        with self._write(None) as cur:
            n, last = cur.execute(
                "WITH gone AS (DELETE FROM changes WHERE created < now() - make_interval(secs => %s) RETURNING seq) "
                "SELECT count(*), max(seq) FROM gone",
                (older_than_s,),
            ).fetchone() or (0, None)
            if last is not None:
                cur.execute(
                    "UPDATE meta SET value = greatest(value::bigint, %s)::text WHERE name = 'feed_floor'", (last,)
                )
        return int(n)

    # Reads --------------------------------------------------------------------------------------

    def model_version(self) -> str | None:
        """The store's model version (None: no replica has written yet)."""
        return self.meta("model_version")

    def count(self, namespace: str | None = None) -> int:
        with self.connection() as conn:
            if namespace is None:
                row = conn.execute("SELECT count(*) FROM questions").fetchone()
            else:
                row = conn.execute("SELECT count(*) FROM questions WHERE namespace = %s", (namespace,)).fetchone()
        return int(row[0]) if row else 0

    def get(self, qid: str) -> StoredQuestion | None:
        with self.connection() as conn:
            row = conn.execute("SELECT key, id, text, namespace, metadata FROM questions WHERE id = %s", (qid,))
            found = row.fetchone()
        return StoredQuestion(*found) if found else None

    def model_versions(self) -> dict[str, int]:
        with self.connection() as conn:
            rows = conn.execute("SELECT model_version, count(*) FROM questions GROUP BY model_version").fetchall()
        return {str(version): int(n) for version, n in rows}

    def namespace_sizes(self) -> dict[str, int]:
        with self.connection() as conn:
            rows = conn.execute("SELECT namespace, count(*) FROM questions GROUP BY namespace").fetchall()
        return {str(namespace): int(n) for namespace, n in rows}

    def namespace_vectors(self, namespace: str) -> tuple[list[str], np.ndarray]:
        """The ids and vectors of a namespace, in key order."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT id, embedding FROM questions WHERE namespace = %s ORDER BY key", (namespace,)
            ).fetchall()
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        return [str(r[0]) for r in rows], vectors

    def iter_texts(self, not_version: str, batch: int = 2048) -> Iterator[list[TextRow]]:
        last = -1
        while True:
            with self.connection() as conn:
                rows = conn.execute(
                    "SELECT key, text, namespace FROM questions WHERE key > %s AND model_version != %s "
                    "ORDER BY key LIMIT %s",
                    (last, not_version, batch),
                ).fetchall()
            if not rows:
                return
            yield [(int(k), str(t), str(ns)) for k, t, ns in rows]
            last = int(rows[-1][0])

    def iter_feedback(self) -> Iterator[tuple[int, Feedback, str, float]]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT n, question1, question2, is_duplicate, id1, id2, model_version, created "
                "FROM feedback ORDER BY n"
            ).fetchall()
        for n, q1, q2, dup, id1, id2, version, created in rows:
            yield int(n), Feedback(q1, q2, bool(dup), id1, id2), str(version), float(created)

    # The feed -----------------------------------------------------------------------------------

    @contextmanager
    def _snapshot(self) -> Iterator[psycopg.Connection[Any]]:
        """A read-only transaction that sees one state of the store throughout."""
        with self.connection() as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn

    def read_feed(self, after: int, limit: int) -> FeedBatch:
        """Up to ``limit`` changes after position ``after``, and the rows their adds name."""
        with self._snapshot() as conn:
            floor = int(conn.execute("SELECT value FROM meta WHERE name = 'feed_floor'").fetchone()[0])  # type: ignore[index]
            changes = [
                Change(*row)
                for row in conn.execute(
                    f"SELECT seq, op, key, namespace, model_version, {CREATED_US} FROM changes WHERE seq > %s "
                    "ORDER BY seq LIMIT %s",
                    (after, limit),
                )
            ]
            wanted = [c.key for c in changes if c.op == "add"]
            rows = {}
            if wanted:
                found = conn.execute(f"SELECT {ROW_COLUMNS} FROM questions WHERE key = ANY(%s)", (wanted,))
                rows = {int(r[0]): Row(*r) for r in found}
        return FeedBatch(changes, rows, floor)

    def dump(self, sink: Callable[[list[Row]], None], batch: int = 5000) -> int:
        """Hand every stored row to ``sink``, ``batch`` at a time, as of one moment; returns the
        feed position of that moment (the changes after it are those the rows do not show)."""
        with self._snapshot() as conn:
            position = _feed_end(conn)
            _stream(
                conn,
                f"SELECT {ROW_COLUMNS} FROM questions ORDER BY key",
                lambda rows: sink([Row(*r) for r in rows]),
                batch,
            )
        return position

    def read_all(
        self, questions: Callable[[list[Any]], None], feedback: Callable[[list[Any]], None], batch: int = 5000
    ) -> dict[str, str]:
        """Hand every stored question (:data:`LOAD_COLUMNS`) to ``questions`` and every feedback
        pair (:data:`FEEDBACK_COLUMNS`) to ``feedback``, ``batch`` at a time, as of one moment, and
        return the store's meta rows of that moment: what :meth:`load` takes (``dupq backup``)."""
        with self._snapshot() as conn:
            _stream(conn, f"SELECT {LOAD_COLUMNS} FROM questions ORDER BY key", questions, batch)
            _stream(conn, f"SELECT {FEEDBACK_COLUMNS} FROM feedback ORDER BY n", feedback, batch)
            return {str(name): str(value) for name, value in conn.execute("SELECT name, value FROM meta")}

    def feed_mark(self, position: int) -> str | None:
        """The :attr:`FeedBatch.mark` of the change at ``position``, if the feed still holds it."""
        with self.connection() as conn:
            row = conn.execute(f"SELECT {CREATED_US} FROM changes WHERE seq = %s", (position,)).fetchone()
        return f"{position}@{row[0]}" if row else None

    def feed_end(self) -> int:
        """The position of the last change committed (a replica's copy can be at no later one)."""
        with self.connection() as conn:
            return _feed_end(conn)

    def listen(self) -> psycopg.Connection[Any]:
        """A connection of its own that receives the feed's notifications."""
        return self._connection(f"LISTEN {CHANNEL}")

    def _connection(self, *statements: str) -> psycopg.Connection[Any]:
        """A connection of its own, outside the pool (autocommit, with the keepalives), once it has
        run ``statements``; a server it cannot reach is a :class:`StoreUnavailable`."""
        conn = None
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2, **self.keepalives)
            _keep_alive(conn)
            for statement in statements:
                conn.execute(statement.encode())
        except psycopg.OperationalError as err:
            if conn is not None:
                conn.close()
            raise StoreUnavailable(f"PostgreSQL at {self.where} is unreachable: {_reason(err)}") from err
        return conn
