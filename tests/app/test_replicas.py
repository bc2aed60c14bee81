"""Several replicas on one PostgreSQL store: each sees the others' writes within a second, a
replica killed with SIGKILL loses nothing and catches up, a PostgreSQL restart fails no read and
loses no acknowledged write, replicas of different models never mix vectors."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from app.client import STORE_UNAVAILABLE
from app.engine import StartupStopped
from app.main import create_app
from app.pgstore import REEMBED_LOCK, PostgresStore
from app.replica import Follower
from app.store import NewQuestion, QuestionStore
from tests.postgres import PostgresServer

from ..conftest import CORPUS, build_tiny_model
from .conftest import engine_of, make_settings, serving, wait_ready
from .server import Server
from .test_durability import _text


def _replica(model_dir: Path, data_dir: Path, url: str, **overrides: Any) -> Any:
    return serving(make_settings(model_dir, data_dir, store_url=url, **overrides))


def _within(seconds: float, check: Callable[[], bool]) -> float:
    """How long ``check`` took to come true; fails if it did not within ``seconds``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.01)
    return time.monotonic() - started


def _level(server: Any, committed: int) -> bool:
    """Whether the replica is ready and holds ``committed`` questions: while it catches up after a
    fault, on a busy machine, /ready may answer 503 (lagging), which is not yet, not a failure."""
    status, body = server.request("GET", "/ready")
    return bool(status == 200 and body["index_size"] == committed)


def _finds(client: TestClient, text: str, qid: str, namespace: str = "default") -> bool:
    body = {"question": text, "k": 1, "namespace": namespace}
    matches = client.post("/duplicates", json=body).json()["matches"]
    return bool(matches) and matches[0]["id"] == qid


@contextmanager
def _private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for one test, which may stop and start it."""
    try:
        server = PostgresServer()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    try:
        yield server
    finally:
        server.close()


def test_a_write_on_one_replica_is_seen_by_the_others_within_a_second(
    tiny_model_dir: Path, tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.new_database()
    with ExitStack() as stack:
        a, b, c = (stack.enter_context(_replica(tiny_model_dir, tmp_path / name, url)) for name in "abc")
        item = {"id": "x1", "text": CORPUS[0], "namespace": "site", "metadata": {"lang": "en"}}
        assert a.post("/questions", json={"questions": [item]}).status_code == 201
        assert a.get("/questions/x1").status_code == 200  # read-your-writes on the same replica, at once
        for other in (b, c):
            _within(1.0, lambda o=other: o.get("/questions/x1").status_code == 200)  # type: ignore[misc]
            assert other.get("/questions/x1").json() == item
            assert _finds(other, CORPUS[0], "x1", "site")
        # An upsert on b, seen on a and c; a delete on c, seen on a and b.
        b.post("/questions", json={"questions": [{**item, "text": CORPUS[4]}]})
        for other in (a, c):
            _within(1.0, lambda o=other: o.get("/questions/x1").json()["text"] == CORPUS[4])  # type: ignore[misc]
            assert _finds(other, CORPUS[4], "x1", "site")
        assert c.delete("/questions/x1").status_code == 204
        for other in (a, b):
            _within(1.0, lambda o=other: o.get("/questions/x1").status_code == 404)  # type: ignore[misc]
            assert not _finds(other, CORPUS[4], "x1", "site")
        # Bulk writes and a namespace dropped; every replica ends with the same index.
        questions = [{"id": f"q{i}", "text": text, "namespace": f"ns{i % 2}"} for i, text in enumerate(CORPUS)]
        a.post("/questions", json={"questions": questions[:8]})
        b.post("/questions", json={"questions": questions[8:]})
        assert c.post("/questions/delete", json={"namespace": "ns1"}).json() == {"deleted": len(CORPUS) // 2}
        sizes = lambda: {r.get("/ready").json()["index_size"] for r in (a, b, c)}  # noqa: E731
        _within(1.0, lambda: sizes() == {len(CORPUS) // 2})
        assert {r.get("/questions", params={"namespace": "ns1"}).json()["questions"] == [] for r in (a, b, c)} == {True}


def test_a_replica_away_longer_than_the_feed_keeps_copies_the_store_again(
    tiny_model_dir: Path, tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.new_database()
    with _replica(tiny_model_dir, tmp_path / "a", url) as a:
        a.post("/questions", json={"questions": [{"id": "q0", "text": CORPUS[0]}]})
    with _replica(tiny_model_dir, tmp_path / "b", url) as b:
        b.post("/questions", json={"questions": [{"id": "q1", "text": CORPUS[1]}]})
        b.delete("/questions/q0")
        assert engine_of(b).primary.prune_feed(0.0) > 0  # type: ignore[union-attr]
    with _replica(tiny_model_dir, tmp_path / "a", url) as a:
        assert a.get("/questions/q1").status_code == 200 and a.get("/questions/q0").status_code == 404
        assert a.get("/ready").json()["index_size"] == 1 and _finds(a, CORPUS[1], "q1")


def test_a_replica_of_a_new_model_reembeds_and_those_of_the_old_one_stop_serving(
    tiny_model_dir: Path, tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.new_database()
    other_model = build_tiny_model(tmp_path / "other-model", seed=1, version_prefix="other")
    with _replica(tiny_model_dir, tmp_path / "a", url) as old:
        old.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(CORPUS[:4])]})
        with _replica(other_model, tmp_path / "b", url, on_model_change="reembed") as new:
            assert new.get("/ready").json()["index_size"] == 4 and _finds(new, CORPUS[2], "q2")
            _within(2.0, lambda: old.get("/ready").status_code == 503)
            assert "model" in old.get("/ready").json()["detail"]
            refused = old.post("/questions", json={"questions": [{"id": "z", "text": CORPUS[5]}]})
            assert refused.status_code == 503 and "Retry-After" in refused.headers
            assert new.post("/questions", json={"questions": [{"id": "n", "text": CORPUS[5]}]}).status_code == 201
            assert engine_of(new).primary.model_versions() == {engine_of(new).encoder.version: 5}  # type: ignore[union-attr]


def test_replicas_of_a_new_model_reembed_the_store_one_at_a_time(
    tiny_model_dir: Path, tmp_path: Path, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica started on a new model while another re-embeds the store (holds the lock) waits
    for it, says so in /ready, encodes nothing meanwhile, and then finds the store done."""
    url = postgres.new_database()
    other_model = build_tiny_model(tmp_path / "other-model", seed=1, version_prefix="other")
    with _replica(tiny_model_dir, tmp_path / "a", url) as old:
        old.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(CORPUS[:4])]})
        old_version = engine_of(old).encoder.version
    versions = "SELECT model_version, count(*) FROM questions GROUP BY model_version"
    with psycopg.connect(url, autocommit=True) as other_replica, psycopg.connect(url, autocommit=True) as look:
        other_replica.execute("SELECT pg_advisory_lock(%s)", (REEMBED_LOCK,))
        with TestClient(create_app(make_settings(other_model, tmp_path / "b", store_url=url))) as new:
            step = "waiting for the replica that re-embeds the stored questions with model other"
            _within(10.0, lambda: step in new.get("/ready").json().get("detail", ""))
            time.sleep(0.5)
            assert new.get("/ready").status_code == 503
            assert look.execute(versions).fetchall() == [(old_version, 4)]  # it encoded nothing meanwhile
            assert "another replica holds the store's re-embedding lock" in caplog.text
            other_replica.execute("SELECT pg_advisory_unlock(%s)", (REEMBED_LOCK,))
            wait_ready(new)
            new_version = engine_of(new).encoder.version
            assert look.execute(versions).fetchall() == [(new_version, 4)] and _finds(new, CORPUS[2], "q2")


def _keepalives(conn: psycopg.Connection[Any]) -> tuple[list[Any], dict[str, str]]:
    names = ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")
    server = [conn.execute(f"SHOW {name}").fetchone() for name in names]
    client = {k: v for k, v in conn.info.get_parameters().items() if k.startswith(("keepalives", "tcp_"))}
    return server, client


def test_every_connection_to_the_store_notices_a_side_gone_within_seconds(postgres: PostgresServer) -> None:
    """Each connection keeps TCP keepalives of a few seconds both ways: a replica gone without
    closing its connection (power lost, network cut) would otherwise hold a lock (the write lock,
    in a transaction, which every write waits for; the re-embedding lock) for two hours, and a
    query would wait as long on a server gone. The URL's own settings are kept."""
    url = postgres.new_database()
    client = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5", "keepalives_count": "3"}
    client["tcp_user_timeout"] = "25000"
    expected = ([("10",), ("5",), ("3",), ("25000",)], client)
    store = PostgresStore(url, dim=4)
    try:
        with store.pool.connection() as conn:
            assert _keepalives(conn) == expected
        with store.reembedding(lambda: None) as holder:
            assert _keepalives(holder) == expected
        with store.listen() as listener:
            assert _keepalives(listener) == expected
    finally:
        store.close()
    own = PostgresStore(url + "?keepalives_idle=30", dim=4)
    try:
        with own.pool.connection() as conn:
            assert _keepalives(conn) == (expected[0], {**client, "keepalives_idle": "30"})
    finally:
        own.close()


def test_a_replica_of_the_store_s_own_model_does_not_wait_for_the_re_embedding_lock(
    tiny_model_dir: Path, tmp_path: Path, postgres: PostgresServer
) -> None:
    """Only a replica that has questions to re-embed takes the lock: the others start at once, even
    while a replica of another model holds it."""
    url = postgres.new_database()
    with _replica(tiny_model_dir, tmp_path / "a", url) as first:
        first.post("/questions", json={"questions": [{"id": "q0", "text": CORPUS[0]}]})
    with psycopg.connect(url, autocommit=True) as other_replica:
        other_replica.execute("SELECT pg_advisory_lock(%s)", (REEMBED_LOCK,))
        with _replica(tiny_model_dir, tmp_path / "b", url) as second:
            assert second.get("/ready").json()["index_size"] == 1 and _finds(second, CORPUS[0], "q0")


def test_a_replica_waiting_for_another_to_re_embed_stops_when_asked(
    tiny_model_dir: Path, tmp_path: Path, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = postgres.new_database()
    with _replica(tiny_model_dir, tmp_path / "a", url) as old:
        old.post("/questions", json={"questions": [{"id": "q0", "text": CORPUS[0]}]})
    other_model = build_tiny_model(tmp_path / "other-model", seed=1, version_prefix="other")
    with psycopg.connect(url, autocommit=True) as other_replica:
        other_replica.execute("SELECT pg_advisory_lock(%s)", (REEMBED_LOCK,))
        try:
            new = TestClient(create_app(make_settings(other_model, tmp_path / "b", store_url=url)))
            new.__enter__()
            _within(10.0, lambda: "waiting for the replica" in new.get("/ready").json().get("detail", ""))
            stopping = threading.Thread(target=new.__exit__, args=(None, None, None))
            stopping.start()
            stopping.join(10)  # it waited for the lock, as long as the other replica re-embedded
            assert not stopping.is_alive()
        finally:
            other_replica.execute("SELECT pg_advisory_unlock(%s)", (REEMBED_LOCK,))
    assert "start-up stopped: asked to stop while waiting for the replica that re-embeds" in caplog.text


def test_a_replica_waiting_for_the_re_embedding_lock_says_in_one_line_that_postgresql_went_away(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other_model = build_tiny_model(tmp_path / "other-model", seed=1, version_prefix="other")
    with _private_postgres() as pg:
        url = pg.new_database()
        with _replica(tiny_model_dir, tmp_path / "a", url) as old:
            old.post("/questions", json={"questions": [{"id": "q0", "text": CORPUS[0]}]})
        other_replica = psycopg.connect(url, autocommit=True)
        other_replica.execute("SELECT pg_advisory_lock(%s)", (REEMBED_LOCK,))
        with TestClient(create_app(make_settings(other_model, tmp_path / "b", store_url=url))) as new:
            _within(10.0, lambda: "waiting for the replica" in new.get("/ready").json().get("detail", ""))
            pg.stop()
            _within(10.0, lambda: "start-up failed" in new.get("/ready").json().get("detail", ""))
            detail = new.get("/ready").json()["detail"]
        other_replica.close()
        pg.start()  # for the fixture to stop
    assert detail.startswith("not ready: start-up failed: PostgreSQL at postgresql://") and "is unreachable" in detail
    assert "Traceback" not in caplog.text


def test_while_postgresql_is_down_reads_go_on_and_writes_answer_503_then_resume_by_themselves(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with (
        _private_postgres() as pg,
        _replica(
            tiny_model_dir, tmp_path / "a", pg.new_database(), store_timeout_s=0.5, max_lag_s=0.5, feed_poll_s=0.1
        ) as a,
    ):
        a.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(CORPUS)]})
        pg.stop()
        refused = a.post("/questions", json={"questions": [{"id": "new", "text": "Is it down?"}]})
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
        assert refused.json()["detail"].startswith(STORE_UNAVAILABLE)  # the client tells it by that
        assert a.get("/questions/q3").status_code == 200 and _finds(a, CORPUS[3], "q3")
        assert a.post("/similarity", json={"question1": CORPUS[0], "question2": CORPUS[1]}).status_code == 200
        _within(3.0, lambda: a.get("/ready").status_code == 503)
        assert "behind the store's change feed" in a.get("/ready").json()["detail"]
        pg.start()
        ok = {"questions": [{"id": "new", "text": "Is it back?"}]}
        _within(10.0, lambda: a.post("/questions", json=ok).status_code == 201)
        _within(3.0, lambda: a.get("/ready").status_code == 200)
        assert a.get("/questions/new").json()["text"] == "Is it back?"


def test_a_replica_ahead_of_a_store_restored_from_a_dump_copies_it_again(
    tiny_model_dir: Path, tmp_path: Path, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """pg_dump, more writes, then the database restored from the dump (pg_restore into a new one,
    the replicas pointed at it): a replica that kept its copy is ahead of the restored feed, whose
    next changes will be other ones. It copies the store again, where it followed from its own
    position and kept what the restored store no longer holds."""
    url, dump = postgres.new_database(), tmp_path / "dupq.dump"
    with _replica(tiny_model_dir, tmp_path / "a", url) as a:
        a.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(CORPUS[:6])]})
        subprocess.run([str(postgres.bindir / "pg_dump"), "-Fc", "-f", str(dump), url], check=True)
        a.post("/questions", json={"questions": [{"id": "later", "text": "Is this after the dump?"}]})
        a.delete("/questions/q1")
    restored = postgres.new_database()
    subprocess.run([str(postgres.bindir / "pg_restore"), "-d", restored, str(dump)], check=True)
    caplog.set_level(logging.INFO)
    with _replica(tiny_model_dir, tmp_path / "a", restored) as a:
        assert "copying the whole store from" in caplog.text and "before this copy's position" in caplog.text
        assert "rebuilding the index from the store (this replica copied the whole store)" in caplog.text
        assert a.get("/questions/later").status_code == 404 and a.get("/questions/q1").status_code == 200
        assert a.get("/ready").json()["index_size"] == 6 and _finds(a, CORPUS[1], "q1")
        assert a.post("/questions", json={"questions": [{"id": "new", "text": "Is this new?"}]}).status_code == 201
        assert a.get("/questions/new").status_code == 200


def test_a_replica_whose_position_a_restored_store_has_passed_since_copies_it_again(
    tiny_model_dir: Path,
    tmp_path: Path,
    postgres: PostgresServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As above, but a new replica took writes on the restored store before the old one started:
    its feed is past the old copy's position again, with other changes at the same numbers (each
    change is told by its number and its commit time)."""
    url, dump = postgres.new_database(), tmp_path / "dupq.dump"
    with _replica(tiny_model_dir, tmp_path / "a", url) as a:
        a.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(CORPUS[:6])]})
        subprocess.run([str(postgres.bindir / "pg_dump"), "-Fc", "-f", str(dump), url], check=True)
        a.post(
            "/questions", json={"questions": [{"id": f"later{i}", "text": f"Is {i} after the dump?"} for i in (1, 2)]}
        )
        a.delete("/questions/q1")
    restored = postgres.new_database()
    subprocess.run([str(postgres.bindir / "pg_restore"), "-d", restored, str(dump)], check=True)
    with _replica(tiny_model_dir, tmp_path / "b", restored) as b:  # a new one: it copies the restored store
        for i in range(5):
            b.post("/questions", json={"questions": [{"id": f"new{i}", "text": CORPUS[6 + i]}]})
    caplog.set_level(logging.INFO)
    with _replica(tiny_model_dir, tmp_path / "a", restored) as a:
        assert "copying the whole store from" in caplog.text and "is another one than the copy's" in caplog.text
        assert a.get("/questions/later1").status_code == 404 and a.get("/questions/q1").status_code == 200
        assert a.get("/questions/new4").status_code == 200 and a.get("/ready").json()["index_size"] == 11
    caplog.clear()
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")  # the commit times read in another time zone: the same
    with _replica(tiny_model_dir, tmp_path / "a", restored) as a:  # copied once, not at every start
        assert "copying the whole store" not in caplog.text and a.get("/ready").json()["index_size"] == 11


def test_a_write_that_the_replica_s_full_copy_cannot_take_is_committed_and_taken_once_there_is_room(
    tiny_model_dir: Path, tmp_path: Path, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk of a replica's copy is full (its page limit, SQLite's SQLITE_FULL): a write there
    is committed in PostgreSQL, so it is a 201, not the 507 of a write refused; /ready says why the
    replica falls behind, the log says it once, not at every try, and given room it catches up."""
    url = postgres.new_database()
    long_text = " ".join(["How do I learn to play the guitar?"] * 25)
    more = [{"id": f"long{i}", "text": f"{i}: {long_text}"} for i in range(50)]
    with _replica(tiny_model_dir, tmp_path / "a", url, max_lag_s=0.5, feed_poll_s=0.1) as a:
        a.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(CORPUS)]})
        copy = engine_of(a).stores.local
        with copy._write_lock:
            pages = copy._writer.execute("PRAGMA page_count").fetchone()[0]
            copy._writer.execute(f"PRAGMA max_page_count = {pages}")
        assert a.post("/questions", json={"questions": more}).status_code == 201
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM questions WHERE id LIKE 'long%'").fetchone() == (50,)
        assert a.get("/questions/long0").status_code == 404  # not in this replica's copy yet
        assert _finds(a, CORPUS[3], "q3")  # reads go on
        _within(3.0, lambda: a.get("/ready").status_code == 503)
        detail = a.get("/ready").json()["detail"]
        assert "behind the store's change feed" in detail and "no room left for the question store" in detail
        time.sleep(0.5)  # several tries of the follower
        assert caplog.text.count("cannot apply the store's change feed (no room left") == 1
        assert "Traceback" not in caplog.text
        with copy._write_lock:
            copy._writer.execute(f"PRAGMA max_page_count = {2**30}")
        _within(3.0, lambda: a.get("/ready").status_code == 200)
        assert a.get("/questions/long49").json()["text"] == more[49]["text"]
        assert "this replica's copy has room again; this replica caught up with its feed" in caplog.text


@pytest.mark.slow
def test_three_replicas_with_writers_on_each_and_one_killed_lose_nothing(
    tiny_model_dir: Path, tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.new_database()
    servers = [Server(tiny_model_dir, tmp_path / f"r{i}", DUPQ_STORE_URL=url).start() for i in range(3)]
    acknowledged: dict[str, str] = {}
    stop = threading.Event()

    def write_loop(n: int, server: Server) -> None:
        i = 0
        while not stop.is_set():
            qid, text = f"w{n}-{i}", _text(3 * i + n)
            try:
                status, _ = server.request("POST", "/questions", {"questions": [{"id": qid, "text": text}]}, timeout=5)
            except OSError:
                return  # killed
            if status == 201:
                acknowledged[qid] = text
            i += 1

    writers = [threading.Thread(target=write_loop, args=(n, s)) for n, s in enumerate(servers)]
    try:
        for w in writers:
            w.start()
        time.sleep(1.5)
        servers[1].kill()
        time.sleep(1.5)
        stop.set()
        for w in writers:
            w.join(10)
        assert len([q for q in acknowledged if q.startswith("w1-")]) > 3 and len(acknowledged) > 20
        # Every write committed is in PostgreSQL: the acknowledged ones, and perhaps one the killed
        # replica committed but never answered. The survivors and the restarted replica hold exactly those.
        with psycopg.connect(url) as conn:
            committed = conn.execute("SELECT count(*) FROM questions").fetchone()[0]  # type: ignore[index]
        assert len(acknowledged) <= committed <= len(acknowledged) + 1
        survivors = [servers[0], servers[2]]
        for server in survivors:
            _within(10.0, lambda s=server: _level(s, committed))
            for qid, text in acknowledged.items():
                expected = {"id": qid, "text": text, "namespace": "default", "metadata": {}}
                assert server.request("GET", f"/questions/{qid}") == (200, expected)
        restarted = Server(tiny_model_dir, tmp_path / "r1", port=servers[1].port, DUPQ_STORE_URL=url).start()
        servers[1] = restarted
        assert restarted.request("GET", "/ready")[1]["index_size"] == committed
        for qid, text in list(acknowledged.items())[::7]:
            _, found = restarted.request("POST", "/duplicates", {"question": text, "k": 1})
            assert found["matches"][0]["id"] == qid
    finally:
        stop.set()
        for server in servers:
            server.stop()


@pytest.mark.slow
def test_a_postgresql_restart_amid_reads_and_writes_fails_no_read_and_loses_no_acknowledged_write(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with _private_postgres() as pg:
        url = pg.new_database()
        env = {"DUPQ_STORE_URL": url, "DUPQ_STORE_TIMEOUT_S": "0.5", "DUPQ_FEED_POLL_S": "0.2"}
        servers = [Server(tiny_model_dir, tmp_path / f"r{i}", **env).start() for i in range(2)]
        seed = [{"id": f"q{i}", "text": text} for i, text in enumerate(CORPUS)]
        assert servers[0].request("POST", "/questions", {"questions": seed})[0] == 201
        for server in servers:  # the other replica follows within a poll: a read before that is lag, not a failure
            _within(10.0, lambda s=server: _level(s, len(CORPUS)))  # type: ignore[misc]
        acknowledged: dict[str, str] = {}
        failures: list[tuple[str, int]] = []
        refused, resumed = [0], [0]
        back = threading.Event()
        stop = threading.Event()

        def read_loop(server: Server) -> None:
            i = 0
            while not stop.is_set():
                for status, what in (
                    (server.request("GET", f"/questions/q{i % len(CORPUS)}")[0], "GET"),
                    (server.request("POST", "/duplicates", {"question": CORPUS[i % len(CORPUS)]})[0], "duplicates"),
                ):
                    if status != 200:
                        failures.append((what, status))
                i += 1

        def write_loop(n: int, server: Server) -> None:
            i = 0
            while not stop.is_set():
                qid, text = f"w{n}-{i}", _text(2 * i + n)
                status, _ = server.request("POST", "/questions", {"questions": [{"id": qid, "text": text}]})
                if status == 201:
                    acknowledged[qid] = text
                    resumed[0] += back.is_set()
                elif status == 503:
                    refused[0] += 1
                else:
                    failures.append(("write", status))
                i += 1

        threads = [threading.Thread(target=read_loop, args=(s,)) for s in servers]
        threads += [threading.Thread(target=write_loop, args=(n, s)) for n, s in enumerate(servers)]
        try:
            for t in threads:
                t.start()
            time.sleep(1.0)
            pg.stop()
            time.sleep(2.0)
            pg.start()
            back.set()
            _within(15.0, lambda: resumed[0] >= 10)  # writes resume by themselves
            stop.set()
            for t in threads:
                t.join(10)
            assert failures == [] and refused[0] > 0
            with psycopg.connect(url) as conn:
                committed = conn.execute("SELECT count(*) FROM questions").fetchone()[0]  # type: ignore[index]
            for server in servers:
                _within(10.0, lambda s=server: _level(s, committed))
                for qid, text in acknowledged.items():
                    assert server.request("GET", f"/questions/{qid}")[1]["text"] == text
        finally:
            stop.set()
            for server in servers:
                server.stop()


def test_a_replica_s_copy_of_the_store_says_how_far_it_is_and_stops_when_told_leaving_its_copy(
    tiny_model_dir: Path, tmp_path: Path, postgres: PostgresServer
) -> None:
    """Start-up's status is told after each batch of the copy (/ready's 503 shows it), and a
    shutdown, which makes it raise, ends the copy there: the old copy stays, the next start copies."""
    url = postgres.new_database()
    with _replica(tiny_model_dir, tmp_path / "a", url) as a:
        a.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(CORPUS)]})
        version = engine_of(a).encoder.version
    primary = PostgresStore(url, dim=24)
    copy = QuestionStore(tmp_path / "b" / "replica.sqlite3", dim=24)
    try:
        primary.dump = functools.partial(PostgresStore.dump, primary, batch=5)  # type: ignore[method-assign]
        told: list[str] = []

        def stop_after_a_batch(text: str) -> None:
            told.append(text)
            if len(told) == 2:
                raise StartupStopped(f"asked to stop while {text}")

        with pytest.raises(StartupStopped):
            Follower(primary, copy, version).prepare(stop_after_a_batch)
        assert told == [f"copying the store from PostgreSQL: {n} of about 12 questions" for n in (0, 5)]
        assert copy.count() == 0 and copy.meta("source") is None
        told.clear()
        assert Follower(primary, copy, version).prepare(told.append)  # copied, all of it
        assert copy.count() == 12 and told[-1] == "copying the store from PostgreSQL: 12 of about 12 questions"
    finally:
        copy.close()
        primary.close()


def test_replicas_started_together_on_an_empty_store_seed_it_once(
    tiny_model_dir: Path, tmp_path: Path, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica that finds another seeding the store (holding the seeding lock) waits, says so in
    /ready, and then serves what the other seeded instead of seeding it again."""
    url = postgres.new_database()
    seed = tmp_path / "seed.txt"
    seed.write_text("How old are you?\nWhy is the sky blue?\n")
    version = json.loads((tiny_model_dir / "config.json").read_text())["version"]
    settings = make_settings(tiny_model_dir, tmp_path / "b", store_url=url, seed_file=seed)
    other_replica = PostgresStore(url, dim=24)
    try:
        with ExitStack() as lock:
            lock.enter_context(other_replica.seeding(lambda: None))
            with TestClient(create_app(settings)) as new:
                _within(
                    10.0, lambda: "waiting for the replica that seeds the store" in new.get("/ready").json()["detail"]
                )
                # What the other replica seeds meanwhile (from a file of its own, in this test).
                vectors = np.eye(24, dtype=np.float32)[:3]
                other_replica.upsert([NewQuestion.of(f"s{i}", t) for i, t in enumerate(CORPUS[:3])], vectors, version)
                other_replica.set_meta("seeding", "done")
                lock.close()  # the lock released: the new replica goes on
                wait_ready(new)
                assert new.get("/ready").json()["index_size"] == 3 and new.get("/questions/s1").status_code == 200
                assert other_replica.count() == 3  # not seeded again
    finally:
        other_replica.close()
    assert "another replica holds the store's seeding lock" in caplog.text
    assert "seeding the store with" not in caplog.text


def test_a_replica_s_whole_copy_does_not_leave_a_log_as_large_as_itself(
    tiny_model_dir: Path, tmp_path: Path, postgres: PostgresServer
) -> None:
    """A whole copy is one transaction, so it goes through the copy's write-ahead log: the log is
    folded into the file at once, where it stayed as large as the copy (1.35 GB more at a million
    questions), at start-up and after a clean stop alike."""
    url = postgres.new_database()
    with _replica(tiny_model_dir, tmp_path / "a", url) as a:
        for start in range(0, 1000, 250):
            questions = [{"id": f"q{i}", "text": _text(i)} for i in range(start, start + 250)]
            assert a.post("/questions", json={"questions": questions}).status_code == 201
    copy, log = tmp_path / "b" / "replica.sqlite3", tmp_path / "b" / "replica.sqlite3-wal"
    with _replica(tiny_model_dir, tmp_path / "b", url) as b:
        assert b.get("/ready").json()["index_size"] == 1000
        assert log.stat().st_size < copy.stat().st_size / 10
    assert not log.exists() or log.stat().st_size == 0
