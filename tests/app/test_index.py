import threading
from pathlib import Path

import numpy as np
import pytest

import app.index
from app.index import IndexParams, SnapshotError, VectorIndex, read_index_at
from app.locks import ReadWriteLock


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(vectors: np.ndarray, keys: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), keys[order]


def test_flat_index_equals_brute_force_with_deletes() -> None:
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 500, 32), _unit(rng, 20, 32)
    keys = np.arange(1000, 1500, dtype=np.int64)
    index = VectorIndex(32, "flat")
    index.add(keys, vectors)
    gone = keys[::3]
    index.remove(gone)
    assert len(index) == 500 - len(gone)
    live = ~np.isin(keys, gone)
    want_scores, want_keys = _brute_force(vectors[live], keys[live], queries, 10)
    scores, found = index.search(queries, 10)
    np.testing.assert_array_equal(found, want_keys)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_hnsw_recall_and_deleted_keys_never_come_back() -> None:
    rng = np.random.default_rng(1)
    vectors, queries = _unit(rng, 3000, 32), _unit(rng, 50, 32)
    keys = np.arange(3000, dtype=np.int64)
    index = VectorIndex(32, "hnsw", hnsw_m=16, ef_search=128)
    index.add(keys, vectors)
    gone = keys[:300]
    index.remove(gone)
    assert len(index) == 2700
    _, want = _brute_force(vectors[300:], keys[300:], queries, 10)
    _, found = index.search(queries, 10)
    assert not np.isin(found, gone).any()
    recall = np.mean([len(set(f) & set(w)) / 10 for f, w in zip(found, want, strict=True)])
    assert recall >= 0.95


def test_ef_search_grows_with_the_index_above_a_million() -> None:
    params = IndexParams()
    assert [params.ef_for(n) for n in (0, 1_000_000, 1_000_001, 3_000_000, 10_000_000, 50_000_000)] == [
        128,
        128,
        129,
        384,
        1024,
        1024,
    ]
    assert IndexParams(ef_grows=False).ef_for(10_000_000) == 128


def test_a_grown_ef_search_is_what_the_search_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """With growth from 200 questions on, a 4,000-question graph searched with efSearch 10 is
    searched with 80 (the cap), and finds more of the exact top 10 than with 10 held fixed."""
    monkeypatch.setattr(app.index, "EF_GROWS_FROM", 200)
    rng = np.random.default_rng(7)
    vectors, queries = _unit(rng, 4000, 48), _unit(rng, 200, 48)
    keys = np.arange(4000, dtype=np.int64)
    index = VectorIndex(48, "hnsw", hnsw_m=4, ef_search=10)
    index.add(keys, vectors)
    assert index.params.ef_for(len(index)) == 80
    _, want = _brute_force(vectors, keys, queries, 10)

    def recall() -> float:
        _, found = index.search(queries, 10)
        return float(np.mean([len(set(f) & set(w)) / 10 for f, w in zip(found, want, strict=True)]))

    grown = recall()
    index.ef_search = 10  # held at 10 whatever the size
    assert index.params.ef_for(len(index)) == 10
    fixed = recall()
    assert grown > fixed + 0.05, (grown, fixed)


def test_hnsw_is_rebuilt_without_tombstones_once_they_pile_up() -> None:
    rng = np.random.default_rng(2)
    index = VectorIndex(16, "hnsw", hnsw_m=8)
    keys = np.arange(4000, dtype=np.int64)
    vectors = _unit(rng, 4000, 16)
    index.add(keys, vectors)
    index.remove(keys[:900])
    assert not index.rebuild_due()  # a quarter or less: filtered out by searches
    index.remove(keys[900:1500])
    assert index.rebuild_due() and len(index) == 2500 and index._index.ntotal == 4000
    lock = ReadWriteLock()
    assert index.rebuild(lock.read, lock.write)
    assert len(index) == 2500 and index._index.ntotal == 2500 and not index.rebuild_due()
    np.testing.assert_array_equal(np.sort(index.live_keys()), keys[1500:])
    _, found = index.search(vectors[2000:2001], 1)
    assert found[0, 0] == 2000


def test_empty_index_search() -> None:
    _, keys = VectorIndex(8, "flat").search(np.ones((2, 8), np.float32) / np.sqrt(8), 3)
    assert (keys == -1).all() and keys.shape == (2, 3)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_snapshot_round_trip_and_refusals(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(3)
    vectors = _unit(rng, 200, 16)
    index = VectorIndex(16, kind)  # type: ignore[arg-type]
    index.add(np.arange(200, dtype=np.int64), vectors)
    index.remove(np.array([5, 6], dtype=np.int64))
    path = tmp_path / "index.faiss"
    index.save(path, tag="7:v1")
    params = IndexParams(kind=kind)  # type: ignore[arg-type]
    loaded = VectorIndex.load(path, tag="7:v1", params=params, dim=16)
    assert len(loaded) == 198
    np.testing.assert_array_equal(loaded.search(vectors[:5], 3)[1], index.search(vectors[:5], 3)[1])
    with pytest.raises(SnapshotError, match="stale"):
        VectorIndex.load(path, tag="8:v1", params=params, dim=16)
    with open(path, "r+b") as handle:  # damage one byte
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(SnapshotError, match="checksum"):
        VectorIndex.load(path, tag="7:v1", params=params, dim=16)
    with pytest.raises(SnapshotError, match="cannot be read"):  # an entry cut short
        read_index_at(path, 0, path.stat().st_size - 1)
    with pytest.raises(SnapshotError, match="no snapshot"):
        VectorIndex.load(tmp_path / "absent.faiss", tag="7:v1", params=params, dim=16)
    with pytest.raises(SnapshotError, match=r"a (flat|hnsw) index"):
        VectorIndex.load(path, tag="7:v1", params=IndexParams(kind="auto"), dim=16)


def test_hnsw_deletes_after_a_search_are_honoured() -> None:
    rng = np.random.default_rng(4)
    vectors = _unit(rng, 2000, 16)
    index = VectorIndex(16, "hnsw", hnsw_m=8)
    index.add(np.arange(2000, dtype=np.int64), vectors)
    index.remove(np.array([0], dtype=np.int64))
    assert index.search(vectors[1:2], 1)[1][0, 0] == 1  # the selector for {0} is built here
    index.remove(np.array([1], dtype=np.int64))  # ...and must not be reused now
    _, found = index.search(vectors[:2], 5)
    assert not np.isin(found, [0, 1]).any()


def test_auto_switches_to_hnsw_beside_the_old_index_while_writes_and_searches_go_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The switch copies in chunks; between chunks (the ``cancelled`` hook runs there, outside the
    lock) writes land in the journal, and a thread searches the whole time. Afterwards the index is
    HNSW, of the right size, with every write replayed and no deleted key."""
    monkeypatch.setattr(app.index, "REBUILD_CHUNK", 100)
    monkeypatch.setattr(app.index, "SWAP_BACKLOG", 30)
    rng = np.random.default_rng(5)
    vectors = _unit(rng, 2000, 16)
    index = VectorIndex(16, "auto", hnsw_m=8, hnsw_from=1000)
    assert index.structure == "flat"
    index.add(np.arange(999, dtype=np.int64), vectors[:999])
    assert not index.rebuild_due()
    index.add(np.array([999]), vectors[999:1000])
    assert index.rebuild_due() and index.structure == "flat"
    lock = ReadWriteLock()
    live = set(range(1000))
    state = {"next": 1000, "calls": 0}

    def write_between_chunks() -> bool:  # 30 adds and 10 deletes per call
        state["calls"] += 1
        with lock.write():
            start = state["next"]
            new = np.arange(start, start + 30, dtype=np.int64)
            index.add(new, vectors[start : start + 30])
            gone = np.array(sorted(live)[::7][:10], dtype=np.int64)
            index.remove(gone)
            live.update(int(k) for k in new)
            live.difference_update(int(k) for k in gone)
            state["next"] += 30
        return False

    failures: list[BaseException] = []
    done = threading.Event()

    def search() -> None:
        while not done.is_set():
            try:
                with lock.read():
                    _, found = index.search(vectors[:8], 5)
                    assert (found >= 0).all()
            except BaseException as err:  # reported below
                failures.append(err)
                return

    searcher = threading.Thread(target=search)
    searcher.start()
    try:
        assert index.rebuild(lock.read, lock.write, write_between_chunks)
    finally:
        done.set()
        searcher.join()
    assert not failures
    assert state["calls"] > 10  # the journal had work: chunk copies and catch-up rounds
    assert index.structure == "hnsw" and not index.rebuilding
    assert len(index) == len(live)
    assert set(index.live_keys().tolist()) == live
    _, found = index.search(vectors[: state["next"]], 1)
    hits = [int(k) for k in found[:, 0]]
    assert not set(hits) - live
    assert np.mean([h == q for q, h in enumerate(hits) if q in live]) > 0.95
    index.save(tmp_path / "i.faiss", "t")  # the next start loads it as HNSW
    loaded = VectorIndex.load(tmp_path / "i.faiss", "t", IndexParams(kind="auto", hnsw_from=1000), 16)
    assert loaded.structure == "hnsw" and len(loaded) == len(live)


def test_a_cancelled_rebuild_leaves_the_old_index() -> None:
    rng = np.random.default_rng(6)
    index = VectorIndex(16, "auto", hnsw_from=100)
    index.add(np.arange(300, dtype=np.int64), _unit(rng, 300, 16))
    lock = ReadWriteLock()
    assert not index.rebuild(lock.read, lock.write, lambda: True)
    assert index.structure == "flat" and not index.rebuilding and len(index) == 300
    index.add(np.array([300]), _unit(rng, 1, 16))  # no journal left behind
    assert index.rebuild(lock.read, lock.write) and index.structure == "hnsw" and len(index) == 301
