"""The store, the namespaced index and the groups against brute-force references: namespaces,
metadata filters and exclusions included."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from app import groups as groups_module
from app.groups import find_groups
from app.index import EXACT_SUBSET, IndexParams, NamespacedIndex, SnapshotFile, VectorIndex
from app.store import SCHEMA_VERSION, NewQuestion, QuestionStore, StoreTooNew, term_value

DIM = 16


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _corpus(n: int = 600, seed: int = 0) -> tuple[list[NewQuestion], np.ndarray]:
    rng = np.random.default_rng(seed)
    items = [
        NewQuestion.of(
            f"q{i}",
            f"Question {i}?",
            f"ns{rng.integers(3)}",
            {"colour": ["red", "green", "blue"][rng.integers(3)], "n": int(rng.integers(10)), "flag": bool(i % 2)},
        )
        for i in range(n)
    ]
    return items, _unit(n, seed)


def _brute(items: list[NewQuestion], vectors: np.ndarray, keys: list[int]) -> dict:  # type: ignore[type-arg]
    return {key: (item, vector) for key, item, vector in zip(keys, items, vectors, strict=True)}


def _reference(
    rows: dict,
    namespace: str,
    query: np.ndarray,
    k: int,
    where: dict | None = None,
    deny: set | None = None,  # type: ignore[type-arg]
) -> list[int]:
    """The k best keys by brute force: same namespace, metadata passing, not denied."""
    import json

    scored = []
    for key, (item, vector) in rows.items():
        metadata = json.loads(item.metadata)
        if item.namespace != namespace or (deny and key in deny):
            continue
        if where and not all(term_value(metadata.get(name)) in values for name, values in where.items()):
            continue
        scored.append((-float(vector @ query), key))
    return [key for _, key in sorted(scored)[:k]]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_matches_brute_force_with_namespaces_filters_and_exclusions(tmp_path: Path, kind: str) -> None:
    items, vectors = _corpus()
    store = QuestionStore(tmp_path / "q.sqlite3", DIM)
    _, keys = store.upsert(items, vectors, "v")
    rows = _brute(items, vectors, keys)
    index = NamespacedIndex(DIM, IndexParams(kind=kind))  # type: ignore[arg-type]
    index.add(np.array(keys), vectors, [item.namespace for item in items])
    assert len(index) == len(items) and sum(index.size(f"ns{i}") for i in range(3)) == len(items)
    queries = _unit(20, 1)
    recalls = []
    for qi, query in enumerate(queries):
        namespace = f"ns{qi % 3}"
        where = [
            None,
            {"colour": {term_value("red")}},
            {"colour": {term_value("red"), term_value("blue")}, "n": {term_value(3)}},
        ][qi % 3]
        deny_ids = [f"q{j}" for j in range(0, 60, 3)] if qi % 2 else []
        conditions = tuple((name, tuple(values)) for name, values in where.items()) if where else None
        allow = store.filter_keys(namespace, conditions) if conditions else None
        deny = store.keys_of(deny_ids, namespace)
        _, found = index.search(namespace, query[None, :], 10, allow, deny)
        got = [int(k) for k in found[0] if k >= 0]
        expected = _reference(rows, namespace, query, 10, where, set(deny.tolist()))
        if kind == "flat":
            assert got == expected, (qi, got, expected)  # exact: the same keys in the same order
        elif allow is not None:  # scored exactly, from float16 copies: the same scores within 1e-3
            scores = [[float(rows[key][1] @ query) for key in keys] for keys in (got, expected)]
            np.testing.assert_allclose(scores[0], scores[1], atol=1e-3)
        recalls.append(len(set(got) & set(expected)) / max(1, len(expected)))
        assert len(got) == len(expected)  # k back whenever k pass
    assert np.mean(recalls) >= 0.98
    store.close()


def test_a_rare_filter_still_returns_k_and_a_broad_one_goes_through_the_selector(tmp_path: Path) -> None:
    n = 3 * EXACT_SUBSET
    vectors = _unit(n, 2)
    index = VectorIndex(DIM, "flat")
    index.add(np.arange(n), vectors)
    query = _unit(1, 3)
    order = np.argsort(-(vectors @ query[0]), kind="stable")
    for allow in (order[-7:], order[n // 2 :]):  # the 7 worst (exact path), and half (selector path)
        _, keys = index.search(query, 5, allow=np.sort(allow))
        assert keys[0].tolist() == [int(k) for k in order if k in set(allow.tolist())][:5]
    _, keys = index.search(query, 3, deny=order[:2])
    assert keys[0].tolist() == order[2:5].tolist()
    _, keys = index.search(query, 3, allow=np.array([], np.int64))
    assert keys[0].tolist() == [-1, -1, -1]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "auto"])
def test_a_namespaced_snapshot_round_trips(tmp_path: Path, kind: str) -> None:
    items, vectors = _corpus(90)
    params = IndexParams(kind=kind, hnsw_from=20)  # type: ignore[arg-type]
    index = NamespacedIndex(DIM, params)
    index.expect({"ns0": 30})  # auto: ns0 is made as HNSW, the others start flat
    index.add(np.arange(90), vectors, [item.namespace for item in items])
    if kind == "auto":
        assert index.structures() == {"flat": 2, "hnsw": 1} and sorted(index.due()) == ["ns1", "ns2"]
    index.remove([(0, items[0].namespace), (1, items[1].namespace)])
    with SnapshotFile(tmp_path / "i.faiss") as file:
        file.commit({**index.write_to(file), "tag": "t"})
    loaded = NamespacedIndex.load(tmp_path / "i.faiss", "t", params, DIM)
    assert loaded.structures() == index.structures()
    assert loaded.snapshot_meta["max_key"] == 89 and len(loaded) == 88
    for namespace in index.spaces:
        a = index.search(namespace, vectors[:5], 4)
        b = loaded.search(namespace, vectors[:5], 4)
        assert np.array_equal(a[1], b[1])
    dropped = next(iter(loaded.spaces))
    gone = loaded.size(dropped)
    loaded.drop(dropped)
    assert len(loaded) == 88 - gone == sum(loaded.size(ns) for ns in loaded.spaces)


def test_store_namespaces_terms_pages_and_deletes(tmp_path: Path) -> None:
    store = QuestionStore(tmp_path / "q.sqlite3", DIM)
    items, vectors = _corpus(50)
    _, keys = store.upsert(items, vectors, "v")
    red = store.filter_keys("ns0", (("colour", (term_value("red"),)),))
    expected = [k for k, item in zip(keys, items, strict=True) if item.namespace == "ns0" and '"red"' in item.metadata]
    assert red.tolist() == sorted(expected)
    # An upsert moves a question to another namespace, replaces its terms and keeps its place.
    first = store.page("ns1", None, 1)[0][0]
    moved = NewQuestion.of(first.id, "Moved?", "ns2", {"colour": "none"})
    old, (new_key,) = store.upsert([moved], _unit(1, 9), "v")
    assert old == [(first.key, "ns1")]
    assert store.filter_keys("ns2", (("colour", (term_value("none"),)),)).tolist() == [new_key]
    assert first.key not in store.filter_keys("ns1", (("flag", (term_value(True), term_value(False))),)).tolist()
    walked = [q.id for q, _ in store.page("ns2", None, 1000)]
    assert first.id in walked and store.count("ns2") == len(walked)
    back = NewQuestion.of(first.id, "Back?", "ns1")
    store.upsert([back], _unit(1, 10), "v")
    assert store.page("ns1", None, 1)[0][0].id == first.id  # its first insertion still orders it
    # All namespaces, in (namespace, insertion) order, page by page.
    everything, after = [], None
    while page := store.page(None, after, 7):
        everything += [(q.namespace, q.id) for q, _ in page]
        after = (page[-1][0].namespace, page[-1][1])
    assert len(everything) == 50 and len(set(everything)) == 50
    assert [ns for ns, _ in everything] == sorted(ns for ns, _ in everything)
    assert store.delete_namespace("ns0") == sum(1 for ns, _ in everything if ns == "ns0")
    assert store.filter_keys("ns0", (("colour", (term_value("red"),)),)).tolist() == []
    two = [item.id for item in items if item.namespace != "ns0" and item.id != first.id][:2]
    present = [(q.key, q.namespace) for q in map(store.get, two) if q is not None]
    assert len(present) == 2
    assert store.delete_ids([*two, "missing"]) == present
    assert all(store.get(qid) is None for qid in two)
    store.close()


def test_a_store_of_dupq_0_2_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE questions (key INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL,
            embedding BLOB NOT NULL, model_version TEXT NOT NULL, updated REAL NOT NULL);
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('generation', '4');
        """
    )
    for i, vector in enumerate(_unit(3, 0)):
        old.execute(
            "INSERT INTO questions (id, text, embedding, model_version, updated) VALUES (?, ?, ?, 'v', 0)",
            (f"o{i}", f"Old {i}?", vector.tobytes()),
        )
    old.commit()
    old.close()
    store = QuestionStore(path, DIM)
    assert store.get("o1") is not None and store.get("o1").namespace == "default"  # type: ignore[union-attr]
    assert store.get("o1").metadata == "{}" and store.generation() == 4  # type: ignore[union-attr]
    assert [q.id for q, _ in store.page("default", None, 10)] == ["o0", "o1", "o2"]
    plan = store._reader.execute(
        "EXPLAIN QUERY PLAN SELECT model_version, COUNT(*) FROM questions GROUP BY model_version"
    ).fetchall()
    assert "questions_model_version" in str(plan) and store.model_versions() == {"v": 3}  # schema 3's index
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreTooNew, match="upgrade dupq"):
        QuestionStore(path, DIM)
    with pytest.raises(StoreTooNew):
        QuestionStore(path, DIM, read_only=True)


def test_a_read_only_store_reads_beside_its_owner(tmp_path: Path) -> None:
    owner = QuestionStore(tmp_path / "q.sqlite3", DIM)
    owner.upsert([NewQuestion.of("a", "A?")], _unit(1, 0), "v")
    reader = QuestionStore(tmp_path / "q.sqlite3", DIM, read_only=True)
    assert reader.get("a") is not None and reader.namespace_vectors("default")[0] == ["a"]
    with pytest.raises(sqlite3.OperationalError):
        reader._reader.execute("DELETE FROM questions")
    owner.close()


def _clustered(n_groups: int, size: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = _unit(n_groups, seed)
    x = np.repeat(centres, size, axis=0) + noise * rng.standard_normal((n_groups * size, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("exact_max", [100_000, 50])  # exact neighbours, and the IVF path
def test_groups_keep_the_rule_and_find_planted_clusters(monkeypatch: pytest.MonkeyPatch, exact_max: int) -> None:
    monkeypatch.setattr(groups_module, "EXACT_MAX", exact_max)
    vectors = _clustered(40, 5, 0.05, 0)
    found = find_groups(vectors, threshold=0.9, min_size=2)
    members = [m for _, group in found for m in group]
    assert len(members) == len(set(members))
    for rep, group in found:
        assert group[0] == rep and all(float(vectors[rep] @ vectors[m]) >= 0.9 - 1e-6 for m in group)
    assert [len(g) for _, g in found] == sorted((len(g) for _, g in found), reverse=True)
    # The planted clusters come back whole: each group is one cluster.
    assert sum(len(g) for _, g in found) >= 0.95 * len(vectors)
    assert all(len({m // 5 for m in g}) == 1 for _, g in found)
    # A neighbourhood larger than the first k is followed to its end.
    big = _clustered(1, 100, 0.01, 1)
    assert [len(g) for _, g in find_groups(big, 0.9)] == [100]
    assert find_groups(np.zeros((0, DIM), np.float32), 0.5) == []


def test_an_hnsw_search_through_a_broad_filter_returns_k_allowed_keys() -> None:
    n = 3 * EXACT_SUBSET
    vectors = _unit(n, 4)
    index = VectorIndex(DIM, "hnsw", hnsw_m=8, ef_search=16)
    index.add(np.arange(n), vectors)
    allow = np.sort(np.random.default_rng(5).choice(n, size=EXACT_SUBSET + 100, replace=False))
    _, keys = index.search(_unit(8, 6), 100, allow=allow)
    assert ((keys >= 0).sum(axis=1) == 100).all() and np.isin(keys, allow).all()
