from pathlib import Path

import numpy as np
import pytest

from app.index import SnapshotError, VectorIndex


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


def test_hnsw_compacts_when_tombstones_pile_up() -> None:
    rng = np.random.default_rng(2)
    index = VectorIndex(16, "hnsw", hnsw_m=8)
    keys = np.arange(4000, dtype=np.int64)
    vectors = _unit(rng, 4000, 16)
    index.add(keys, vectors)
    index.remove(keys[:1500])  # more than a quarter: rebuilt without them
    assert len(index) == 2500 and index._index.ntotal == 2500
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
    loaded = VectorIndex.load(path, tag="7:v1", kind=kind, dim=16)  # type: ignore[arg-type]
    assert len(loaded) == 198
    np.testing.assert_array_equal(loaded.search(vectors[:5], 3)[1], index.search(vectors[:5], 3)[1])
    with pytest.raises(SnapshotError, match="stale"):
        VectorIndex.load(path, tag="8:v1", kind=kind, dim=16)  # type: ignore[arg-type]
    with open(path, "r+b") as handle:  # damage one byte
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(SnapshotError, match="checksum"):
        VectorIndex.load(path, tag="7:v1", kind=kind, dim=16)  # type: ignore[arg-type]
    with pytest.raises(SnapshotError, match="no snapshot"):
        VectorIndex.load(tmp_path / "absent.faiss", tag="7:v1", kind=kind, dim=16)  # type: ignore[arg-type]


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
