"""Backups of the SQLite store (``dupq backup``, ``dupq restore``): taken beside a busy service,
one state of the store, restored into a data directory whose service finds every question."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.cli import main
from app.engine import SNAPSHOT_FILE, STORE_FILE
from tests.postgres import PostgresServer

from ..conftest import CORPUS
from .conftest import engine_of, make_settings, serving
from .server import Server
from .test_durability import _text


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _failure(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 1
    return capsys.readouterr().err.strip()


def _ids(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM questions")]


@contextmanager
def _batches_written(post: Callable[[list[dict[str, Any]]], int]) -> Iterator[list[int]]:
    """Batches of five questions posted one after another by a thread (each written in one
    transaction) until the block ends; yields how many were written so far (a list of one)."""
    stop, written, refused = threading.Event(), [0], []

    def write() -> None:
        while not stop.is_set():
            n = written[0]
            status = post([{"id": f"b{n}-{i}", "text": _text(5 * n + i)} for i in range(5)])
            if status != 201:
                refused.append(status)
                return
            written[0] += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        yield written
    finally:
        stop.set()
        writer.join()
    assert not refused, f"a batch was answered {refused[0]}"


def _backup_amid(written: list[int], capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], int]:
    """dupq backup once some batches are written; returns how many were written before it, what it
    printed, and how many after it, once five more went through (writes go on after it)."""
    while written[0] < 10:
        time.sleep(0.01)
    before = written[0]
    copied = _run(capsys, "backup", *argv)
    after = written[0]
    while written[0] < after + 5:
        time.sleep(0.01)
    return before, copied, after


def test_a_backup_beside_a_busy_service_is_one_state_of_the_store_and_restores_to_a_service_that_finds_it(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data, out, restored = tmp_path / "data", tmp_path / "backups" / "dupq.sqlite3", tmp_path / "restored"
    out.parent.mkdir()
    server = Server(tiny_model_dir, data, DUPQ_SNAPSHOT_CHANGES="40").start()  # snapshots as it goes
    try:
        corpus = [{"id": f"q{i}", "text": t, "namespace": "forum", "metadata": {"n": i}} for i, t in enumerate(CORPUS)]
        assert server.request("POST", "/questions", {"questions": corpus})[0] == 201
        feedback = {"pairs": [{"id1": "q0", "id2": "q1", "is_duplicate": True}]}
        assert server.request("POST", "/feedback", feedback)[0] == 201
        with _batches_written(lambda batch: server.request("POST", "/questions", {"questions": batch})[0]) as written:
            before, copied, after = _backup_amid(written, capsys, "--data-dir", str(data), "--out", str(out))
    finally:
        server.stop()
    ids = _ids(out)
    batches = Counter(qid.split("-")[0] for qid in ids if qid.startswith("b"))
    assert set(batches.values()) == {5}  # each write in it whole, or not at all
    assert before <= len(batches) <= after + 1 and len(batches) < written[0]
    index = str(out) + ".faiss"  # the service's last snapshot, of an earlier state, caught up at the restore
    assert copied == {"out": str(out), "questions": len(ids), "feedback": 1, "bytes": out.stat().st_size} | {
        "index": index,
        "seconds": copied["seconds"],
    }
    assert not out.with_name(out.name + "-wal").exists()  # one file, whole by itself
    with closing(sqlite3.connect(out)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"

    put = _run(capsys, "restore", str(out), "--data-dir", str(restored))
    assert (put["questions"], put["feedback"], put["kept_aside"]) == (len(ids), 1, None)
    assert put["index"] == str(restored / SNAPSHOT_FILE)
    caplog.set_level(logging.INFO)
    with serving(make_settings(tiny_model_dir, restored)) as client:
        assert "index snapshot loaded: " in caplog.text and "rebuilding the index" not in caplog.text
        assert client.get("/ready").json()["index_size"] == len(ids)
        texts = {qid: _text(5 * int(qid[1:].split("-")[0]) + int(qid.split("-")[1])) for qid in ids if qid[0] == "b"}
        for chunk in range(0, len(texts), 100):  # each written question finds itself
            asked = list(texts.items())[chunk : chunk + 100]
            body = {"questions": [text for _, text in asked], "k": 1}
            answers = client.post("/duplicates/batch", json=body).json()["results"]
            assert [a["matches"][0]["id"] for a in answers] == [qid for qid, _ in asked]
        assert client.get("/questions/q3").json() == corpus[3]
        found = client.post("/duplicates", json={"question": CORPUS[3], "k": 1, "namespace": "forum"}).json()
        assert found["matches"][0]["id"] == "q3" and found["matches"][0]["similarity"] == pytest.approx(1.0)
        assert engine_of(client).store.count() == len(ids)


def test_a_restore_over_a_store_keeps_it_beside_puts_the_backup_s_index_in_its_place_and_refuses_a_running_service(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "data", tmp_path / "backup.sqlite3"
    settings = make_settings(tiny_model_dir, data)
    with serving(settings) as client:
        client.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(CORPUS)]})
        _run(capsys, "backup", "--data-dir", str(data), "--out", str(out))
        client.delete("/questions/q2")
        client.post("/questions", json={"questions": [{"id": "later", "text": "Is this after the backup?"}]})
        refused = _failure(capsys, "restore", str(out), "--data-dir", str(data), "--replace")
        assert refused.startswith("dupq restore: error: ") and "in use by another dupq process" in refused
    assert (data / SNAPSHOT_FILE).exists()
    refused = _failure(capsys, "restore", str(out), "--data-dir", str(data))
    assert refused.endswith(
        "holds a question store already: restore into an empty data directory, or give "
        "--replace (the store there is kept beside it)"
    )
    put = _run(capsys, "restore", str(out), "--data-dir", str(data), "--replace")
    aside = Path(put["kept_aside"])
    assert aside.parent == data and aside.name.startswith(STORE_FILE + ".before-restore-")
    assert sorted(_ids(aside)) == sorted(["later"] + [f"q{i}" for i in range(len(CORPUS)) if i != 2])  # whole
    assert not (data / (STORE_FILE + "-wal")).exists()
    assert (data / SNAPSHOT_FILE).read_bytes() == Path(str(out) + ".faiss").read_bytes()  # the backup's
    with serving(settings) as client:  # the backup's questions: q2 again, "later" not yet
        assert client.get("/ready").json()["index_size"] == len(CORPUS)
        assert client.get("/questions/later").status_code == 404
        found = client.post("/duplicates", json={"question": CORPUS[2], "k": 1}).json()["matches"]
        assert found[0]["id"] == "q2" and found[0]["similarity"] == pytest.approx(1.0)


def test_a_store_copied_back_by_hand_under_a_later_snapshot_gets_its_index_rebuilt(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store file copied back over a data directory whose index snapshot is of a later state (a
    question deleted since, say) is older than the snapshot: the index is rebuilt from it, where
    catching the snapshot up would have left the deleted question out of every search."""
    data, kept = tmp_path / "data", tmp_path / "kept.sqlite3"
    settings = make_settings(tiny_model_dir, data)
    with serving(settings) as client:
        client.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(CORPUS)]})
        engine_of(client).store._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
        shutil.copyfile(data / STORE_FILE, kept)
        client.delete("/questions/q2")
        engine_of(client).store._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
    for log in ("-wal", "-shm"):  # as a process's exit leaves it
        (data / (STORE_FILE + log)).unlink(missing_ok=True)
    shutil.copyfile(kept, data / STORE_FILE)
    caplog.set_level(logging.INFO)
    with serving(settings) as client:
        assert "rebuilding the index from the store (the snapshot is of generation 2, the store of 1)" in caplog.text
        found = client.post("/duplicates", json={"question": CORPUS[2], "k": 1}).json()["matches"]
        assert found[0]["id"] == "q2" and found[0]["similarity"] == pytest.approx(1.0)


def _listing(client: Any, namespace: str) -> list[dict[str, Any]]:
    return client.get("/questions", params={"namespace": namespace, "limit": 100}).json()["questions"]  # type: ignore[no-any-return]


def test_a_sqlite_store_loaded_into_postgresql_keeps_its_questions_vectors_feedback_and_model(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], postgres: PostgresServer
) -> None:
    """The move from one SQLite store to replicas: dupq restore with a PostgreSQL --store-url loads a
    backup into an empty store, every question with its id, namespace, metadata, vector and place
    in the listings, the feedback and the model version; a replica running on the empty store takes
    it through the feed, a replica started after copies it, and writes go on from there."""
    data, out, url = tmp_path / "data", tmp_path / "move.sqlite3", postgres.new_database()
    corpus = [
        {"id": f"q{i}", "text": t, "namespace": f"ns{i % 2}", "metadata": {"n": i, "tag": f"t{i % 3}"}}
        for i, t in enumerate(CORPUS)
    ]
    # What COPY's text format escapes: a backslash, a tab, a new line; and text outside ASCII.
    odd = {"id": "odd", "text": "Is a back\\slash, a\ttab or a\nnew line kept? ü 中文 😀", "namespace": "ns0"}
    corpus.append({**odd, "metadata": {"note": "a\ttab\\N"}})
    with serving(make_settings(tiny_model_dir, data)) as client:
        assert client.post("/questions", json={"questions": corpus}).status_code == 201
        client.delete("/questions/q2")  # a gap in the keys
        client.post("/questions", json={"questions": [{**corpus[1], "text": "Is this edited?"}]})  # a new key
        client.post("/feedback", json={"pairs": [{"id1": "q0", "id2": "q4", "is_duplicate": True}]})
        client.post(
            "/feedback", json={"pairs": [{"question1": "Why?", "question2": "Why not?", "is_duplicate": False}]}
        )
        asked = {"questions": [*CORPUS, "Is this edited?"], "k": 5, "namespace": "ns1"}
        before = client.post("/duplicates/batch", json=asked).json()
        listed = {ns: _listing(client, ns) for ns in ("ns0", "ns1")}
        filtered = {"question": CORPUS[3], "k": 10, "namespace": "ns1", "filter": {"tag": "t0"}}
        narrowed = client.post("/duplicates", json=filtered).json()
        version = engine_of(client).encoder.version
        _run(capsys, "backup", "--data-dir", str(data), "--out", str(out))
    with closing(sqlite3.connect(out)) as conn:
        vectors = dict(conn.execute("SELECT id, embedding FROM questions"))
    common = ["--data-dir", str(tmp_path / "unused"), "--store-url", url]
    with serving(make_settings(tiny_model_dir, tmp_path / "a", store_url=url)) as a:  # on the empty store
        loaded = _run(capsys, "restore", str(out), *common)
        assert (loaded["questions"], loaded["feedback"]) == (len(CORPUS), 2)
        with serving(make_settings(tiny_model_dir, tmp_path / "b", store_url=url)) as b:
            for replica in (a, b):
                wait = time.monotonic() + 10
                while replica.get("/ready").json().get("index_size") != len(CORPUS):
                    assert time.monotonic() < wait, "the replica did not take the loaded store"
                    time.sleep(0.05)
                assert replica.post("/duplicates/batch", json=asked).json() == before
                assert {ns: _listing(replica, ns) for ns in ("ns0", "ns1")} == listed
                assert replica.post("/duplicates", json=filtered).json() == narrowed
                assert replica.get("/questions/q1").json() == {**corpus[1], "text": "Is this edited?"}
                assert replica.get("/questions/odd").json() == corpus[-1]
            new = {"id": "new", "text": "Is this written after the move?", "namespace": "ns1"}
            assert b.post("/questions", json={"questions": [new]}).status_code == 201
            assert (
                a.post("/feedback", json={"pairs": [{"id1": "q0", "id2": "new", "is_duplicate": False}]}).status_code
                == 201
            )
            assert _listing(b, "ns1")[-1]["id"] == "new"  # after the loaded ones: its key drawn past theirs
    with closing(psycopg.connect(url)) as conn:
        stored = dict(conn.execute("SELECT id, embedding FROM questions WHERE id != 'new'").fetchall())
        assert {k: bytes(v) for k, v in stored.items()} == vectors  # the vectors themselves, not encoded again
        assert conn.execute("SELECT value FROM meta WHERE name = 'model_version'").fetchone()[0] == version
        assert [r[0] for r in conn.execute("SELECT n FROM feedback ORDER BY n")] == [1, 2, 3]
    # Back: the PostgreSQL store copied into one file beside a running replica, as a data directory's
    # store or another PostgreSQL store.
    back, single, other = tmp_path / "back.sqlite3", tmp_path / "single", postgres.new_database()
    with serving(make_settings(tiny_model_dir, tmp_path / "b", store_url=url)) as b:
        copied = _run(capsys, "backup", "--store-url", url, "--out", str(back))
        with_new = {**asked, "questions": [*asked["questions"], new["text"]]}
        answers = b.post("/duplicates/batch", json=with_new).json()
        listed = {ns: _listing(b, ns) for ns in ("ns0", "ns1")}
        narrowed = b.post("/duplicates", json=filtered).json()
    assert copied == {"out": str(back), "questions": len(CORPUS) + 1, "feedback": 3, "bytes": back.stat().st_size} | {
        "index": None,
        "seconds": copied["seconds"],
    }
    _run(capsys, "restore", str(back), "--data-dir", str(single))
    assert _run(capsys, "restore", str(back), "--store-url", other)["questions"] == len(CORPUS) + 1
    for settings in (
        make_settings(tiny_model_dir, single),
        make_settings(tiny_model_dir, tmp_path / "c", store_url=other),
    ):
        with serving(settings) as client:
            assert client.post("/duplicates/batch", json=with_new).json() == answers
            assert {ns: _listing(client, ns) for ns in ("ns0", "ns1")} == listed
            assert client.post("/duplicates", json=filtered).json() == narrowed
            assert client.get("/questions/odd").json() == corpus[-1]
            pairs = [(n, f.id2, f.is_duplicate) for n, f, _, _ in engine_of(client).stores.truth.iter_feedback()]
            assert pairs == [(1, "q4", True), (2, None, False), (3, "new", False)]
    again = _failure(capsys, "restore", str(out), *common)
    assert again == (
        f"dupq restore: error: the store at {loaded['store']} holds {len(CORPUS) + 1} questions and 3 feedback pairs "
        "already: load into a new database, or one whose questions and feedback were deleted"
    )
    replace = _failure(capsys, "restore", str(out), *common, "--replace")
    assert replace.startswith("dupq restore: error: --replace is for a data directory's store")


def test_a_backup_loaded_into_postgresql_makes_the_first_replica_s_data_directory_too(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    postgres: PostgresServer,
) -> None:
    """dupq restore --store-url URL --replica --data-dir DIR: the backup file and its index snapshot
    become that replica's copy as of the load, so it follows the feed from there (a write made since
    on another replica) and catches the snapshot up, instead of copying the store and building its
    index."""
    data, out, url, first = tmp_path / "data", tmp_path / "move.sqlite3", postgres.new_database(), tmp_path / "r1"
    corpus = [{"id": f"q{i}", "text": t, "namespace": f"ns{i % 2}"} for i, t in enumerate(CORPUS)]
    with serving(make_settings(tiny_model_dir, data)) as client:
        client.post("/questions", json={"questions": corpus})
        engine_of(client).save_snapshot()
        asked = {"questions": CORPUS, "k": 4, "namespace": "ns0"}  # the later question is in ns1
        before = client.post("/duplicates/batch", json=asked).json()
        _run(capsys, "backup", "--data-dir", str(data), "--out", str(out))
    loaded = _run(capsys, "restore", str(out), "--store-url", url, "--replica", "--data-dir", str(first))
    assert (loaded["replica"], loaded["index"]) == (str(first / "replica.sqlite3"), str(first / SNAPSHOT_FILE))
    with serving(make_settings(tiny_model_dir, tmp_path / "r2", store_url=url)) as other:  # copies the store
        later = {"id": "later", "text": "Is this written after the load?", "namespace": "ns1"}
        assert other.post("/questions", json={"questions": [later]}).status_code == 201
    caplog.set_level(logging.INFO)
    caplog.clear()
    with serving(make_settings(tiny_model_dir, first, store_url=url)) as replica:
        assert "copying the whole store" not in caplog.text and "rebuilding the index" not in caplog.text
        assert f"index snapshot loaded: {len(CORPUS)} questions" in caplog.text
        assert "applied 1 changes of the feed" in caplog.text and "1 added, 0 removed" in caplog.text
        assert replica.get("/questions/later").json() == {**later, "metadata": {}}
        after = replica.post("/duplicates/batch", json=asked).json()
        assert [r["matches"] for r in after["results"]] == [r["matches"] for r in before["results"]]
    refused = _failure(capsys, "restore", str(out), "--store-url", url, "--replica", "--data-dir", str(first))
    assert refused == (
        f"dupq restore: error: {first / 'replica.sqlite3'} is there already: give the data directory of a new replica"
    )


def test_a_backup_of_a_postgresql_store_beside_busy_replicas_is_one_state_of_it(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], postgres: PostgresServer
) -> None:
    """Batches of five questions written through a replica while dupq backup copies the store: each
    batch is in the backup whole or not at all, and the writes go on."""
    url, out = postgres.new_database(), tmp_path / "pg.sqlite3"
    with serving(make_settings(tiny_model_dir, tmp_path / "a", store_url=url)) as client:
        for start in range(0, 2000, 250):
            corpus = [{"id": f"q{i}", "text": _text(10_000 + i)} for i in range(start, start + 250)]
            assert client.post("/questions", json={"questions": corpus}).status_code == 201
        with _batches_written(
            lambda batch: client.post("/questions", json={"questions": batch}).status_code
        ) as written:
            before, copied, after = _backup_amid(written, capsys, "--store-url", url, "--out", str(out))
    ids = _ids(out)
    batches = Counter(qid.split("-")[0] for qid in ids if qid.startswith("b"))
    assert set(batches.values()) == {5} and before <= len(batches) <= after + 1 and len(batches) < written[0]
    assert copied["questions"] == len(ids) == 2000 + 5 * len(batches)


def test_a_replica_started_from_a_backup_of_another_s_data_directory_follows_the_feed_from_there(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    postgres: PostgresServer,
) -> None:
    """dupq backup --replica beside a running replica, then writes and a delete, then dupq restore
    --replica into a new data directory: the new replica loads the index snapshot and applies the
    changes since from the feed, instead of copying the whole store and building its index."""
    url, a, b, out = postgres.new_database(), tmp_path / "a", tmp_path / "b", tmp_path / "replica.sqlite3"
    with serving(make_settings(tiny_model_dir, a, store_url=url)) as first:
        first.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(CORPUS[:8])]})
        engine_of(first).save_snapshot()
        copied = _run(capsys, "backup", "--replica", "--data-dir", str(a), "--out", str(out))
        assert (copied["questions"], copied["index"]) == (8, str(out) + ".faiss")
        later = [{"id": f"q{i}", "text": t} for i, t in enumerate(CORPUS[8:], 8)]
        first.post("/questions", json={"questions": later})
        first.delete("/questions/q1")
        put = _run(capsys, "restore", str(out), "--replica", "--data-dir", str(b))
        assert (put["store"], put["index"]) == (str(b / "replica.sqlite3"), str(b / SNAPSHOT_FILE))
        caplog.set_level(logging.INFO)
        caplog.clear()
        with serving(make_settings(tiny_model_dir, b, store_url=url)) as second:
            assert "copying the whole store" not in caplog.text and "rebuilding the index" not in caplog.text
            assert "index snapshot loaded: 8 questions" in caplog.text and "4 added, 1 removed" in caplog.text
            assert second.get("/ready").json()["index_size"] == len(CORPUS) - 1
            assert second.get("/questions/q1").status_code == 404
            found = second.post("/duplicates", json={"question": CORPUS[9], "k": 1}).json()["matches"]
            assert found[0]["id"] == "q9" and found[0]["similarity"] == pytest.approx(1.0)
    refused = _failure(capsys, "backup", "--replica", "--data-dir", str(a), "--store-url", url, "--out", str(out))
    assert refused == (
        "dupq backup: error: --replica names the data directory's copy of the store: give --data-dir, not --store-url"
    )


def test_the_tools_that_read_a_postgresql_store_refuse_a_database_without_one(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], postgres: PostgresServer
) -> None:
    """A URL naming a database that holds no dupq store (a mistyped name, the server's default
    database) is refused in one line: it was given the schema, and backed up as an empty store."""
    url, out = postgres.new_database(), tmp_path / "b.sqlite3"
    flags = ["--store-url", url, "--model-dir", str(tiny_model_dir)]
    for argv in (
        ["backup", "--store-url", url, "--out", str(out)],
        ["feedback", *flags, "--out", str(tmp_path / "pairs.tsv")],
        ["groups", *flags, "--out", str(tmp_path / "groups.jsonl")],
        ["reembed", *flags],
    ):
        refused = _failure(capsys, *argv)
        assert refused.startswith(f"dupq {argv[0]}: error: no dupq store in the database at postgresql://")
        assert refused.endswith("(it has no dupq_schema table): check the URL")
    assert not out.exists()
    with closing(psycopg.connect(url)) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


def test_backup_and_restore_say_in_one_line_what_they_cannot_do(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _failure(capsys, "backup", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "b")) == (
        f"dupq backup: error: no question store at {tmp_path / 'none' / STORE_FILE}"
    )
    data = tmp_path / "data"
    with serving(make_settings(tiny_model_dir, data)) as client:
        client.post("/questions", json={"questions": [{"id": "q0", "text": CORPUS[0]}]})
        for name in (STORE_FILE, STORE_FILE + "-wal"):  # the live store would be replaced under the service
            over = _failure(capsys, "backup", "--data-dir", str(data), "--out", str(data / ".." / "data" / name))
            assert over.endswith("is a file of the store itself: write the backup elsewhere")
        assert client.get("/questions/q0").status_code == 200
    itself = _failure(capsys, "restore", str(data / STORE_FILE), "--data-dir", str(data), "--replace")
    assert itself.endswith("is a file of the store itself, not a backup of it")
    not_a_store = tmp_path / "notes.sqlite3"
    with closing(sqlite3.connect(not_a_store)) as conn:
        conn.execute("CREATE TABLE notes (x)")
    assert _failure(capsys, "restore", str(not_a_store), "--data-dir", str(tmp_path / "d")) == (
        f"dupq restore: error: {not_a_store} is not a dupq question store (no questions table)"
    )
    damaged = tmp_path / "damaged.sqlite3"
    damaged.write_bytes(b"not a database at all" * 100)
    assert _failure(capsys, "restore", str(damaged), "--data-dir", str(tmp_path / "d")) == (
        f"dupq restore: error: {damaged} cannot be read as a question store: file is not a database"
    )
    assert not (tmp_path / "d" / STORE_FILE).exists()
    mixed, pg = tmp_path / "mixed.sqlite3", ["--store-url", "postgresql://dupq@db/dupq"]  # refused before connecting
    _run(capsys, "backup", "--data-dir", str(data), "--out", str(mixed))
    with closing(sqlite3.connect(mixed)) as conn, conn:
        conn.execute(
            "INSERT INTO questions SELECT NULL, 'q1', text, embedding, 'other', updated, namespace, metadata, "
            "seq FROM questions"
        )
    assert _failure(capsys, "restore", str(mixed), *pg).startswith(
        f"dupq restore: error: {mixed} holds vectors of 2 models (1 of "
    )
    with closing(sqlite3.connect(mixed)) as conn:
        conn.execute("PRAGMA user_version = 0")
    assert _failure(capsys, "restore", str(mixed), *pg) == (
        f"dupq restore: error: {mixed} is a store of dupq 0.2 or older (schema version 0): restore it into a data "
        "directory and serve it once with this dupq, which migrates it, then back it up again"
    )


def test_a_damaged_store_is_a_start_up_failure_that_says_so_and_what_to_do(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "data", tmp_path / "backup.sqlite3"
    settings = make_settings(tiny_model_dir, data)
    with serving(settings) as client:
        many = [{"id": f"q{i}", "text": f"{_text(i)} " * 30} for i in range(200)]
        client.post("/questions", json={"questions": many})
        engine_of(client).store._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
        shutil.copyfile(data / STORE_FILE, out)
    for name in (SNAPSHOT_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm"):
        (data / name).unlink(missing_ok=True)
    with open(data / STORE_FILE, "r+b") as file:  # pages in the middle overwritten
        file.seek(file.seek(0, 2) // 2)
        file.write(b"\xff" * 3 * 16384)
    argv = ["serve", "--data-dir", str(data), "--model-dir", str(tiny_model_dir), "--port", "1"]
    capsys.readouterr()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # `dupq serve` sets up the process's logging
    try:
        assert main(argv) == 1  # before it listens
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    said = capsys.readouterr().err
    assert "cannot start: the question store is damaged (database disk image is malformed): restore a backup " in said
    assert "Traceback" not in said
    assert _run(capsys, "restore", str(out), "--data-dir", str(data), "--replace")["questions"] == 200
    with serving(settings) as client:
        assert client.get("/ready").json()["index_size"] == 200
