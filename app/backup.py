"""Backups of a data directory's SQLite store (``dupq backup``, ``dupq restore``).

A backup is one SQLite file, copied from the store by SQLite's online backup API in one step,
that is within one read transaction: beside a running service, whose writes go on meanwhile and
are in it whole or not at all. It holds everything the store holds (questions, their metadata and
vectors, feedback). The index is derived: the service's last snapshot of it, copied first, goes
beside the file (``FILE.faiss`` and its sidecar), so that a restore puts it back and the service
catches it up with the store, as after a crash, instead of rebuilding the index; without it the
service rebuilds the index from the stored vectors, re-encoding nothing.

A PostgreSQL store is copied into the same kind of file, in one read-only transaction (no index
goes with it: each replica has its own), and a backup file is loaded into a PostgreSQL store that
holds nothing yet: so a site moves from one SQLite store to replicas on PostgreSQL, or back, with
its questions, vectors and feedback. (``pg_dump`` backs up a PostgreSQL store as well.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.store import (
    PAGE_SIZE,
    SCHEMA_VERSION,
    SEEDING,
    StoreInUse,
    StoreTooNew,
    create_tables,
    metadata_terms,
    own_lock,
)
from model.files import replacing_file


@dataclass(frozen=True)
class Copied:
    """What a backup or a restore copied."""

    path: Path
    questions: int
    feedback: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class Restored(Copied):
    kept_aside: Path | None  # the store that was there
    index: Path | None  # the snapshot put back with it


class _Replaced(Exception):
    """The snapshot was replaced while it was copied."""


def sidecar(snapshot: Path) -> Path:
    """The metadata file of an index snapshot (:class:`app.index.SnapshotFile`)."""
    return snapshot.with_name(snapshot.name + ".json")


def snapshot_beside(path: Path) -> tuple[Path, Path]:
    """The index snapshot that goes with a backup file, and its sidecar."""
    snapshot = path.with_name(path.name + ".faiss")
    return snapshot, sidecar(snapshot)


def _copy_snapshot(snapshot: Path, meta_path: Path, to: tuple[Path, Path], tries: int = 3) -> bool:
    """Copy an index snapshot and its sidecar to ``to``, whole: the copy's checksum is checked
    against the sidecar's, and a snapshot that the service replaced meanwhile is copied again.
    Returns whether there was one to copy."""
    for _ in range(tries):
        try:
            meta = meta_path.read_bytes()
            expected = json.loads(meta).get("sha256")
            with replacing_file(to[0]) as partial, open(snapshot, "rb") as source, open(partial, "wb") as target:
                digest = hashlib.sha256()
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    target.write(chunk)
                if digest.hexdigest() != expected:
                    raise _Replaced
        except FileNotFoundError:
            return False
        except _Replaced:
            continue
        with replacing_file(to[1]) as partial:  # the sidecar last: without it, no snapshot
            partial.write_bytes(meta)
        return True
    raise ValueError(f"the index snapshot {snapshot} was replaced at every one of {tries} tries to copy it")


def _check(conn: sqlite3.Connection, what: Path) -> tuple[int, int]:
    """The questions and feedback of a dupq store ``conn``, once SQLite finds the file whole."""
    try:
        return _checked(conn, what)
    except sqlite3.DatabaseError as err:  # not a database at all, say
        raise ValueError(f"{what} cannot be read as a question store: {err}") from err


def _checked(conn: sqlite3.Connection, what: Path) -> tuple[int, int]:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreTooNew(f"{what} has schema version {version}; this dupq knows up to {SCHEMA_VERSION}: upgrade dupq")
    problem = conn.execute("PRAGMA quick_check").fetchone()[0]
    if problem != "ok":
        raise ValueError(f"{what} is damaged: {problem}")
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "questions" not in tables:
        raise ValueError(f"{what} is not a dupq question store (no questions table)")
    questions = int(conn.execute("SELECT count(*) FROM questions").fetchone()[0])
    feedback = int(conn.execute("SELECT count(*) FROM feedback").fetchone()[0]) if "feedback" in tables else 0
    return questions, feedback


def _read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FileNotFoundError(f"no question store at {path}")
    return sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, isolation_level=None, timeout=30.0)


def _of_store(path: Path, store: Path) -> bool:
    """Whether ``path`` is the store's file, or one SQLite and dupq keep beside it."""
    names = {store.name + suffix for suffix in ("", "-wal", "-shm", "-journal", ".lock")}
    return path.absolute().parent.resolve() == store.absolute().parent.resolve() and path.name in names


def _aside(store: Path) -> Path:
    """A name not taken yet for the store a restore replaces."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    names = (store.with_name(f"{store.name}.before-restore-{stamp}{f'-{n}' if n else ''}") for n in range(1000))
    return next(name for name in names if not name.exists())


def backup(store: Path, out: Path, snapshot: Path | None = None) -> Copied:
    """Copy ``store`` as it is at one moment into the new file ``out`` (written beside its name and
    renamed over it once checked), a single file with no write-ahead log beside it; and first the
    index ``snapshot``, if there is one, beside it (:func:`snapshot_beside`): of the store as it was
    then, or before, which a restore catches up."""
    if out.exists() and not out.is_file():
        raise ValueError(f"--out {out} is not a file")
    if _of_store(out, store):
        raise ValueError(f"--out {out} is a file of the store itself: write the backup elsewhere")
    started = time.monotonic()
    for old in snapshot_beside(out):  # an earlier backup's, of another state
        old.unlink(missing_ok=True)
    if snapshot is not None:
        _copy_snapshot(snapshot, sidecar(snapshot), snapshot_beside(out))
    with (
        closing(_read_only(store)) as source,
        replacing_file(out) as partial,
        closing(sqlite3.connect(partial, isolation_level=None)) as target,  # closed before the rename
    ):
        source.backup(target)  # every page in one step: one read transaction, one state
        target.execute("PRAGMA journal_mode=DELETE")  # the file alone is the whole store
        questions, feedback = _check(target, out)
    return Copied(out, questions, feedback, out.stat().st_size, time.monotonic() - started)


def backup_postgres(url: str, out: Path) -> Copied:
    """Copy the PostgreSQL store at ``url``, as it is at one moment (one read-only transaction,
    beside the running replicas), into the new SQLite file ``out``: a store like a data
    directory's, with the questions (keys and listing order kept), their metadata and vectors, the
    feedback and the model version, which ``dupq restore`` makes a data directory's store or loads
    into another PostgreSQL store. No index goes with it: the service builds one from its vectors."""
    from app.pgstore import FEEDBACK_COLUMNS, LOAD_COLUMNS, PostgresStore

    if out.exists() and not out.is_file():
        raise ValueError(f"--out {out} is not a file")
    started = time.monotonic()
    for old in snapshot_beside(out):  # an earlier backup's, of another store
        old.unlink(missing_ok=True)
    store = PostgresStore(url, 0, connect_timeout=5.0, existing=True)
    try:
        with replacing_file(out) as partial, closing(sqlite3.connect(partial, isolation_level=None)) as target:
            target.execute(f"PRAGMA page_size={PAGE_SIZE}")
            target.execute("BEGIN")
            create_tables(target)

            def questions(rows: list[Any]) -> None:
                target.executemany(f"INSERT INTO questions ({LOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                target.executemany(
                    "INSERT INTO terms VALUES (?, ?, ?, ?)",
                    [
                        (namespace, name, value, key)
                        for key, _, _, _, _, namespace, metadata, _, _ in rows
                        for name, value in metadata_terms(json.loads(metadata))
                    ],
                )

            def feedback(rows: list[Any]) -> None:
                target.executemany(f"INSERT INTO feedback ({FEEDBACK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

            meta = store.read_all(questions, feedback)
            if SEEDING in meta:
                target.execute("INSERT INTO meta VALUES (?, ?)", (SEEDING, meta[SEEDING]))
            target.execute("COMMIT")
            counts = _check(target, out)
    finally:
        store.close()
    return Copied(out, *counts, out.stat().st_size, time.monotonic() - started)


@dataclass(frozen=True)
class Loaded(Copied):
    replica: Path | None  # the copy of the store made a first replica's
    index: Path | None  # the backup's index snapshot, put beside that copy


def restore_postgres(backup_file: Path, url: str, replica: tuple[Path, Path] | None = None) -> Loaded:
    """Load ``backup_file`` into the PostgreSQL store at ``url``, which holds no question and no
    feedback yet: a site that moves from one SQLite store to replicas keeps every question (id,
    text, namespace, metadata, vector, listing order), the feedback and the model version, and
    encodes nothing again (:meth:`app.pgstore.PostgresStore.load`: one transaction). The backup is
    read in one read transaction, so the store of a running service reads as one state too.

    ``replica`` (a copy file and its index snapshot's path, in a data directory that holds no
    copy): the backup file and its index snapshot are made that replica's copy of the store as of
    the load, so that it follows the feed from there and catches the snapshot up, instead of
    copying the store and building its index."""
    from app.index import retag_snapshot, snapshot_tag
    from app.pgstore import FEEDBACK_COLUMNS, LOAD_COLUMNS, PostgresStore

    started = time.monotonic()
    if replica is not None:
        if replica[0].exists():
            raise ValueError(f"{replica[0]} is there already: give the data directory of a new replica")
        replica[0].parent.mkdir(parents=True, exist_ok=True)
        own_lock(replica[0].with_name(replica[0].name + ".lock")).close()  # no process has it open
    with closing(_read_only(backup_file)) as conn:
        conn.execute("BEGIN")  # one state of the file, whatever writes it meanwhile
        questions, feedback = _check(conn, backup_file)
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version < 2:
            raise ValueError(
                f"{backup_file} is a store of dupq 0.2 or older (schema version {version}): restore it into a data "
                "directory and serve it once with this dupq, which migrates it, then back it up again"
            )
        versions = dict(conn.execute("SELECT model_version, count(*) FROM questions GROUP BY model_version"))
        if len(versions) > 1:
            held = ", ".join(f"{n} of {v}" for v, n in sorted(versions.items()))
            raise ValueError(
                f"{backup_file} holds vectors of {len(versions)} models ({held}): a re-embedding that did not end; "
                "serve it once on the model to keep, then back it up again"
            )
        model = next(iter(versions), None)
        first = conn.execute("SELECT length(embedding) FROM questions LIMIT 1").fetchone()
        seeding = conn.execute("SELECT value FROM meta WHERE name = ?", (SEEDING,)).fetchone()
        store = PostgresStore(url, first[0] // 4 if first else 0, connect_timeout=5.0)
        try:
            position, mark = store.load(
                conn.execute(f"SELECT {LOAD_COLUMNS} FROM questions ORDER BY key"),
                (
                    (n, q1, q2, id1, id2, bool(dup), served, created)
                    for n, q1, q2, id1, id2, dup, served, created in conn.execute(
                        f"SELECT {FEEDBACK_COLUMNS} FROM feedback ORDER BY n"
                    )
                ),
                model,
                {SEEDING: seeding[0] if seeding else None},
            )
            store_id = store.store_id
        finally:
            store.close()
    index = None
    if replica is not None:
        put = restore(backup_file, *replica)
        marks = [("source", store_id), ("feed_position", str(position))] + ([("feed_mark", mark)] if mark else [])
        with closing(sqlite3.connect(replica[0], isolation_level=None)) as copy:
            copy.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", marks)
        # The service's snapshot, of the same rows, made one of this store's copy.
        tags = (snapshot_tag(model, None), snapshot_tag(model, store_id)) if model is not None else None
        if put.index is not None and tags is not None and retag_snapshot(put.index, *tags):
            index = put.index
    copied = (backup_file, questions, feedback, backup_file.stat().st_size, time.monotonic() - started)
    return Loaded(*copied, replica[0] if replica else None, index)


def restore(backup_file: Path, store: Path, snapshot: Path | None = None, replace: bool = False) -> Restored:
    """Make ``backup_file`` the SQLite store ``store``, which no process may have open (its lock is
    taken meanwhile). A store already there is kept beside it, whole, as
    ``questions.sqlite3.before-restore-<time>``, and only with ``replace``; its index ``snapshot``
    is removed first, and the one that came with the backup, if any, put in its place once the
    new store has taken the old one's place (in one rename: a restore stopped at any point leaves
    one store or the other, and no snapshot of the other)."""
    if _of_store(backup_file, store):
        raise ValueError(f"{backup_file} is a file of the store itself, not a backup of it")
    started = time.monotonic()
    with closing(_read_only(backup_file)) as conn:
        questions, feedback = _check(conn, backup_file)
    store.parent.mkdir(parents=True, exist_ok=True)
    owner = own_lock(store.with_name(store.name + ".lock"))  # no service may run on it meanwhile
    try:
        if store.exists() and not replace:
            raise ValueError(
                f"{store} holds a question store already: restore into an empty data directory, or give "
                "--replace (the store there is kept beside it)"
            )
        aside = None
        with replacing_file(store) as partial:
            shutil.copyfile(backup_file, partial)
            for path in [snapshot, sidecar(snapshot)] if snapshot else []:
                path.unlink(missing_ok=True)
            if store.exists():
                with closing(sqlite3.connect(store, isolation_level=None)) as old:  # its log into it
                    busy, logged, done = old.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy or logged != done:
                    raise StoreInUse(f"{store} is being read: its log could not be folded into it; try again")
                for log in ("-wal", "-shm"):  # never to be read with the new file
                    store.with_name(store.name + log).unlink(missing_ok=True)
                aside = _aside(store)
                os.link(store, aside)
        index = None
        if snapshot is not None and _copy_snapshot(*snapshot_beside(backup_file), to=(snapshot, sidecar(snapshot))):
            index = snapshot
    finally:
        owner.close()
    return Restored(store, questions, feedback, store.stat().st_size, time.monotonic() - started, aside, index)
