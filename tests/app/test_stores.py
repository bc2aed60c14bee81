"""The same cases on both stores: the SQLite store of a data directory and the PostgreSQL store
that replicas share (a real server, tests/postgres.py)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from app.pgstore import PostgresStore, StoreUnavailable
from app.store import Feedback, NewQuestion, QuestionStore, Store, StoreTooNew
from tests.postgres import PostgresServer


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _open(url: str | None, tmp_path: Path) -> Store:
    return PostgresStore(url, dim=4) if url else QuestionStore(tmp_path / "q.sqlite3", dim=4)


@pytest.fixture
def store(store_url: str | None, tmp_path: Path) -> Iterator[Store]:
    opened = _open(store_url, tmp_path)
    yield opened
    opened.close()


def test_upsert_replaces_by_id_with_a_new_key(store: Store) -> None:
    old, new = store.upsert([NewQuestion.of("a", "A?"), NewQuestion.of("b", "B?", "ns", {"x": 1})], _vectors(2), "v1")
    assert old == [] and len(set(new)) == 2
    old2, new2 = store.upsert([NewQuestion.of("a", "A again?")], _vectors(1, 1), "v1")
    assert old2 == [(new[0], "default")] and new2[0] > max(new)  # a key is never reused
    found = store.get("a")
    assert found is not None and (found.key, found.text) == (new2[0], "A again?")
    b = store.get("b")
    assert b is not None and (b.namespace, b.metadata) == ("ns", '{"x":1}')
    assert store.count() == 2 and store.count("ns") == 1 and store.namespace_sizes() == {"default": 1, "ns": 1}
    assert store.model_versions() == {"v1": 2}


def test_deletes_by_id_and_by_namespace(store: Store) -> None:
    _, keys = store.upsert([NewQuestion.of(q, q, "ns" if q > "b" else "default") for q in "abcd"], _vectors(4), "v")
    assert store.delete_ids(["a", "zz"]) == [(keys[0], "default")]
    assert store.delete_ids(["a"]) == [] and store.get("a") is None
    assert store.delete_namespace("ns") == 2 and store.delete_namespace("ns") == 0
    assert store.count() == 1 and store.get("b") is not None


def test_reembedding_reads_the_texts_of_other_versions_and_replaces_vectors(store: Store) -> None:
    _, keys = store.upsert([NewQuestion.of("a", "A?"), NewQuestion.of("b", "B?", "ns")], _vectors(2), "v1")
    assert list(store.iter_texts(not_version="v2")) == [[(keys[0], "A?", "default"), (keys[1], "B?", "ns")]]
    if isinstance(store, PostgresStore):
        store.claim_model("v2")  # first, as a replica of the new model does: the old ones stop writing
    store.set_embeddings(keys, _vectors(2, 5), "v2")
    assert store.model_versions() == {"v2": 2} and list(store.iter_texts(not_version="v2")) == []
    ids, vectors = store.namespace_vectors("default")
    assert ids == ["a"] and np.allclose(vectors, _vectors(2, 5)[:1])


def test_feedback_is_kept_in_order(store: Store) -> None:
    pairs = [Feedback("A?", "B?", True, "a", None), Feedback("C?", "D?", False)]
    assert store.add_feedback(pairs, "v1") == 2
    kept = list(store.iter_feedback())
    assert [(pair, version) for _, pair, version, _ in kept] == [(p, "v1") for p in pairs]
    assert kept[0][0] < kept[1][0]


def test_a_failed_write_leaves_nothing(store: Store) -> None:
    with pytest.raises(ValueError):  # three vectors for two questions: refused part-way
        store.upsert([NewQuestion.of("a", "A?"), NewQuestion.of("b", "B?")], _vectors(3), "v")
    assert store.count() == 0


def test_a_newer_schema_is_refused_with_a_clear_message(store_url: str | None, tmp_path: Path) -> None:
    _open(store_url, tmp_path).close()
    if store_url:
        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute("UPDATE dupq_schema SET version = 99")
    else:
        with sqlite3.connect(tmp_path / "q.sqlite3") as conn:
            conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreTooNew, match=r"99.*upgrade dupq"):
        _open(store_url, tmp_path)


def test_the_postgresql_feed_lists_every_change_in_commit_order(postgres: PostgresServer) -> None:
    store = PostgresStore(postgres.new_database(), dim=4)
    try:
        store.claim_model("v")
        _, (a, b) = store.upsert([NewQuestion.of("a", "A?"), NewQuestion.of("b", "B?", "ns")], _vectors(2), "v")
        _, (a2,) = store.upsert([NewQuestion.of("a", "A2?")], _vectors(1), "v")
        store.delete_ids(["b"])
        store.delete_namespace("default")
        feed = store.read_feed(0, 100)
        assert [(c.op, c.key, c.namespace) for c in feed.changes] == [
            ("model", None, None),
            ("add", a, "default"),
            ("add", b, "ns"),
            ("remove", a, "default"),
            ("add", a2, "default"),
            ("remove", b, "ns"),
            ("drop", None, "default"),
        ]
        assert [c.seq for c in feed.changes] == sorted(c.seq for c in feed.changes)
        assert feed.rows == {}  # every row the adds name is gone since
        assert [c.op for c in store.read_feed(feed.changes[2].seq, 2).changes] == ["remove", "add"]
        assert store.prune_feed(0.0) == 7 and store.read_feed(0, 100).floor == feed.position
    finally:
        store.close()


def test_a_write_to_another_model_s_store_is_refused(postgres: PostgresServer) -> None:
    from app.pgstore import ModelChanged

    store = PostgresStore(postgres.new_database(), dim=4)
    try:
        store.upsert([NewQuestion.of("a", "A?")], _vectors(1), "v1")  # a fresh store takes v1
        store.claim_model("v2")
        with pytest.raises(ModelChanged, match="model v2"):
            store.upsert([NewQuestion.of("b", "B?")], _vectors(1), "v1")
        assert store.get("b") is None and store.model_version() == "v2"
    finally:
        store.close()


def test_an_unreachable_postgresql_is_a_clear_error(tmp_path: Path) -> None:
    where = re.escape("cannot reach PostgreSQL at postgresql://nobody@127.0.0.1:1/x within")  # no password
    with pytest.raises(StoreUnavailable, match=where) as raised:
        PostgresStore("postgresql://nobody:secret@127.0.0.1:1/x", dim=4, connect_timeout=1.0)
    assert str(raised.value).endswith(
        'within 1 s: connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused'
    )
    assert "secret" not in str(raised.value) and isinstance(raised.value, OSError)  # one line from a command


def test_a_replica_copy_that_meets_another_model_keeps_the_copy_it_had(tmp_path: Path) -> None:
    from app.feed import ModelMismatch, Row

    copy = QuestionStore(tmp_path / "replica.sqlite3", dim=4, synchronous="NORMAL")
    try:

        def rows(versions: list[str]) -> Callable[[Callable[[list[Row]], None]], int]:
            def fill(sink: Callable[[list[Row]], None]) -> int:
                sink(
                    [
                        Row(k, f"q{k}", f"Q{k}?", _vectors(1, k).tobytes(), v, "default", "{}", k)
                        for k, v in enumerate(versions, 1)
                    ]
                )
                return 7

            return fill

        assert copy.reset("db-1", rows(["v1", "v1"]), "v1") == 2
        with pytest.raises(ModelMismatch):
            copy.reset("db-2", rows(["v1", "v2"]), "v1")
        assert copy.count() == 2 and copy.meta("source") == "db-1" and copy.meta("feed_position") == "7"
    finally:
        copy.close()
