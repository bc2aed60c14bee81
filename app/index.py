"""The vector index: FAISS inner-product search over unit vectors, keyed by int64 keys.

Kinds:

- ``flat``: exact search (``IndexFlatIP``); deletes remove the vectors at once.
- ``hnsw``: approximate search (``IndexHNSWFlat``, graph-based), for large collections: no
  training step, so it can grow from empty one question at a time, and search cost grows with
  log(N). HNSW cannot remove a node from its graph, so a delete marks the key as a tombstone that
  every search filters out (a FAISS ID selector); when tombstones pass a quarter of the index it
  is rebuilt from the live vectors.

The index is not thread-safe for writes: callers hold a lock around ``add``/``remove`` and let
searches run concurrently with each other only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw"]
INDEX_KINDS: tuple[IndexKind, ...] = ("flat", "hnsw")

# A search allowed at most this many keys scores them exactly (HNSW: or a twentieth of the index).
EXACT_SUBSET = 4096


def check_kind(kind: str) -> None:
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")


class SnapshotError(ValueError):
    """A snapshot that is missing, damaged, or for other data; the caller rebuilds instead."""


class VectorIndex:
    def __init__(
        self, dim: int, kind: IndexKind = "flat", hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 128
    ) -> None:
        check_kind(kind)
        self.dim = dim
        self.kind: IndexKind = kind
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self._tombstones: set[int] = set()
        self._selector: tuple[object, object] | None = None  # excludes the tombstones; rebuilt when they change
        self._index: faiss.IndexIDMap2 = self._empty()
        self.snapshot_meta: dict[str, Any] = {}  # what load() read with the snapshot

    def _empty(self) -> faiss.IndexIDMap2:
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = self.ef_construction
        inner.hnsw.efSearch = self.ef_search
        return faiss.IndexIDMap2(inner)

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._tombstones)

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (N, {self.dim}), got {vectors.shape}")
        return vectors

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under new keys (a key must not be live already)."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        vectors = self._check(vectors)
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        if len(keys):
            self._index.add_with_ids(vectors, keys)

    def remove(self, keys: np.ndarray) -> None:
        """Remove keys; unknown keys are ignored."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if not len(keys):
            return
        if self.kind == "flat":
            self._index.remove_ids(faiss.IDSelectorBatch(keys))
            return
        self._tombstones.update(int(k) for k in keys)
        self._selector = None
        if len(self._tombstones) > max(1000, self._index.ntotal // 4):
            self.compact()

    def compact(self) -> None:
        """Rebuild without the tombstoned vectors (HNSW only; flat removes at once)."""
        live = self.live_keys()
        vectors = (
            np.stack([self._index.reconstruct(int(k)) for k in live])
            if len(live)
            else np.zeros((0, self.dim), np.float32)
        )
        logger.info("rebuilding the %s index without %d deleted vectors", self.kind, len(self._tombstones))
        self._index = self._empty()
        self._tombstones.clear()
        self._selector = None
        self.add(live, vectors)

    def live_keys(self) -> np.ndarray:
        keys = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        if self._tombstones:
            keys = keys[~np.isin(keys, np.fromiter(self._tombstones, dtype=np.int64))]
        return keys

    def search(
        self, vectors: np.ndarray, k: int, allow: np.ndarray | None = None, deny: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``scores, keys`` of shape (Q, k), best first; missing results have key -1. ``allow``
        (keys) restricts the search to those keys, ``deny`` (keys) leaves those out: both inside
        the search (FAISS ID selectors), so that k results come back when k keys qualify. When few
        keys are allowed, they are scored exactly instead (a graph search through a sparse subset
        wanders; a scan of all vectors for a few is waste)."""
        vectors = self._check(vectors)
        if allow is not None and deny is not None and len(deny):
            allow, deny = allow[~np.isin(allow, deny)], None
        if self._index.ntotal == 0 or (allow is not None and not len(allow)):
            return np.full((len(vectors), k), -np.inf, np.float32), np.full((len(vectors), k), -1, np.int64)
        # A flat index with a selector scores only the allowed keys, but passes over all of them;
        # a graph search through a sparse subset wanders, so HNSW scores up to a twentieth exactly.
        exact = EXACT_SUBSET if self.kind == "flat" else max(EXACT_SUBSET, self._index.ntotal // 20)
        if allow is not None and len(allow) <= exact:
            return self._search_subset(vectors, k, allow)
        keep: list[Any] = []  # every selector, alive until the search is done
        conditions: list[Any] = []
        if allow is not None:
            keep.append(faiss.IDSelectorBatch(np.ascontiguousarray(allow, dtype=np.int64)))
            conditions.append(keep[-1])
        if deny is not None and len(deny):
            keep.append(faiss.IDSelectorBatch(np.ascontiguousarray(deny, dtype=np.int64)))
            conditions.append(faiss.IDSelectorNot(keep[-1]))
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # SWIG class missing from faiss's stubs
            params.efSearch = max(self.ef_search, k)
            if self._tombstones:
                conditions.append(self._exclude_tombstones())
        else:
            params = faiss.SearchParameters()
        keep += conditions
        if conditions:
            selector = conditions[0]
            for other in conditions[1:]:
                selector = faiss.IDSelectorAnd(selector, other)
                keep.append(selector)
            params.sel = selector
        scores, keys = self._index.search(vectors, k, params=params)
        if allow is not None and self.kind == "hnsw":
            # The graph search may end with fewer than k of the allowed keys: those rows are
            # scored exactly, so that k come back whenever k are allowed.
            short = np.flatnonzero((keys >= 0).sum(axis=1) < min(k, len(allow)))
            if len(short):
                scores[short], keys[short] = self._search_subset(vectors[short], k, allow)
        return scores, keys

    def _search_subset(self, vectors: np.ndarray, k: int, allow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the allowed keys, the best ``k`` of them. The keys come from the store
        under the engine's read lock, so the index holds them all; one it lacks is left out."""
        allow = np.ascontiguousarray(allow, dtype=np.int64)
        try:
            candidates = self._index.reconstruct_batch(allow)
        except RuntimeError:
            allow = allow[np.isin(allow, faiss.vector_to_array(self._index.id_map))]
            candidates = self._index.reconstruct_batch(allow)
        scores = np.full((len(vectors), k), -np.inf, np.float32)
        keys = np.full((len(vectors), k), -1, np.int64)
        if not len(allow):
            return scores, keys
        sims = vectors @ candidates.T
        top = min(k, len(allow))
        best = np.argpartition(-sims, top - 1, axis=1)[:, :top]
        for row in range(len(vectors)):
            order = best[row][np.argsort(-sims[row, best[row]], kind="stable")]
            scores[row, :top] = sims[row, order]
            keys[row, :top] = allow[order]
        return scores, keys

    def _exclude_tombstones(self) -> object:
        """A FAISS selector of every key but the tombstones, built once per change of them (a
        search would otherwise hash all of them again). Writes are exclusive, so no search sees
        it change; two searches may both build it, harmlessly."""
        if self._selector is None:
            batch = faiss.IDSelectorBatch(np.fromiter(self._tombstones, dtype=np.int64))
            self._selector = (batch, faiss.IDSelectorNot(batch))  # keep `batch` alive with its wrapper
        return self._selector[1]

    # Snapshots --------------------------------------------------------------------------------

    def snapshot(self) -> tuple[np.ndarray, dict[str, Any]]:
        """The index serialized in memory, and its metadata: a memory copy, quick enough to take
        under the lock that keeps writes out, so that writing the file can happen after it."""
        data = faiss.serialize_index(self._index)
        keys = faiss.vector_to_array(self._index.id_map)
        meta = {
            "kind": self.kind,
            "dim": self.dim,
            "max_key": int(keys.max()) if len(keys) else -1,
            "tombstones": sorted(self._tombstones),
            "hnsw": {"m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search},
        }
        return data, meta

    @staticmethod
    def write_snapshot(path: str | Path, data: np.ndarray, meta: dict[str, Any]) -> None:
        """Write a :meth:`snapshot` to ``path`` and its metadata, with the checksum, to the sidecar
        ``path.json``; each file is written to a temporary name, synced, then renamed."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        buffer = data.data  # the array's bytes, not copied
        with open(tmp, "wb") as handle:
            handle.write(buffer)
            handle.flush()
            os.fsync(handle.fileno())
        meta = {**meta, "sha256": hashlib.sha256(buffer).hexdigest()}
        os.replace(tmp, path)
        meta_tmp = path.with_suffix(path.suffix + ".json.tmp")
        with open(meta_tmp, "w", encoding="utf-8") as handle:
            json.dump(meta, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(meta_tmp, path.with_suffix(path.suffix + ".json"))

    def save(self, path: str | Path, tag: str) -> None:
        """Write the index to ``path``; ``tag`` says which vectors it holds (checked by
        :meth:`load`). A caller that must not hold its lock while the file is written (the
        engine) takes :meth:`snapshot` and :meth:`write_snapshot` apart, with its own metadata."""
        data, meta = self.snapshot()
        self.write_snapshot(path, data, {**meta, "tag": tag})

    @classmethod
    def load(cls, path: str | Path, tag: str, kind: IndexKind, dim: int) -> VectorIndex:
        """Load a snapshot written by :meth:`save` with the same ``tag``, kind and dim, or raise
        :class:`SnapshotError` saying why it cannot be used. The metadata, ``max_key`` (the
        largest key ever added) and anything a caller gave :meth:`write_snapshot` included, is in
        ``snapshot_meta``."""
        data, meta = read_snapshot(path, tag, kind, dim)
        index = cls.from_snapshot(data, meta)
        index.snapshot_meta = meta
        return index

    @classmethod
    def from_snapshot(cls, data: np.ndarray, meta: dict[str, Any]) -> VectorIndex:
        """The index of a :meth:`snapshot`'s data and metadata."""
        hnsw = meta.get("hnsw", {})
        index = cls(
            meta["dim"], meta["kind"], hnsw.get("m", 32), hnsw.get("ef_construction", 80), hnsw.get("ef_search", 128)
        )
        try:
            loaded = faiss.deserialize_index(np.ascontiguousarray(data))
        except RuntimeError as err:
            raise SnapshotError(f"snapshot cannot be read: {err}") from err
        if not isinstance(loaded, faiss.IndexIDMap2):
            raise SnapshotError(f"snapshot holds a {type(loaded).__name__}, not an id-mapped index")
        index._index = loaded
        index._tombstones = set(meta.get("tombstones", []))
        return index


def read_snapshot(path: str | Path, tag: str, kind: str, dim: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The bytes and metadata of a snapshot file written by :meth:`VectorIndex.write_snapshot`
    with this ``tag``, kind and dim, checked against its checksum; or :class:`SnapshotError`."""
    path = Path(path)
    meta_path = path.with_suffix(path.suffix + ".json")
    if not path.is_file() or not meta_path.is_file():
        raise SnapshotError("no snapshot")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SnapshotError(f"unreadable snapshot metadata: {err}") from err
    if meta.get("tag") != tag:
        raise SnapshotError(f"snapshot is stale: it holds {meta.get('tag')}, not {tag}")
    if meta.get("kind") != kind or meta.get("dim") != dim:
        raise SnapshotError(f"snapshot is a {meta.get('kind')} index of dim {meta.get('dim')}")
    data = np.fromfile(path, dtype=np.uint8)
    if hashlib.sha256(data.data).hexdigest() != meta.get("sha256"):
        raise SnapshotError("snapshot fails its checksum")
    return data, meta


class NamespacedIndex:
    """One :class:`VectorIndex` per namespace, made on a namespace's first question and dropped
    with its last: a search reads only its namespace's vectors, whether there is one namespace of
    a million questions or thousands of a hundred (docs/benchmarks.md measures both against one
    shared index with a namespace selector). The same locking rules as :class:`VectorIndex`."""

    def __init__(self, dim: int, kind: IndexKind = "flat", hnsw_m: int = 32, ef_search: int = 128) -> None:
        check_kind(kind)
        self.dim = dim
        self.kind: IndexKind = kind
        self.hnsw_m = hnsw_m
        self._ef_search = ef_search
        self.spaces: dict[str, VectorIndex] = {}
        self.snapshot_meta: dict[str, Any] = {}
        self._size = 0  # kept up to date, not summed over thousands of namespaces per request

    def __len__(self) -> int:
        return self._size

    @property
    def ef_search(self) -> int:
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = value
        for space in self.spaces.values():
            space.ef_search = value

    def size(self, namespace: str) -> int:
        space = self.spaces.get(namespace)
        return len(space) if space is not None else 0

    def add(self, keys: np.ndarray, vectors: np.ndarray, namespaces: Sequence[str]) -> None:
        """Add vectors under new keys, each to its namespace."""
        keys = np.asarray(keys, dtype=np.int64)
        for namespace, rows in _by_namespace(namespaces).items():
            space = self.spaces.get(namespace)
            if space is None:
                space = self.spaces[namespace] = VectorIndex(
                    self.dim, self.kind, self.hnsw_m, ef_search=self._ef_search
                )
            before = len(space)
            space.add(keys[rows], vectors[rows])
            self._size += len(space) - before

    def remove(self, removed: Sequence[tuple[int, str]]) -> None:
        """Remove ``(key, namespace)`` pairs; unknown ones are ignored."""
        keys = np.array([key for key, _ in removed], dtype=np.int64)
        for namespace, rows in _by_namespace([ns for _, ns in removed]).items():
            space = self.spaces.get(namespace)
            if space is not None:
                before = len(space)
                space.remove(keys[rows])
                self._size += len(space) - before
                if not len(space):
                    del self.spaces[namespace]

    def drop(self, namespace: str) -> None:
        space = self.spaces.pop(namespace, None)
        if space is not None:
            self._size -= len(space)

    def search(
        self,
        namespace: str,
        vectors: np.ndarray,
        k: int,
        allow: np.ndarray | None = None,
        deny: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        space = self.spaces.get(namespace)
        if space is None:
            return np.full((len(vectors), k), -np.inf, np.float32), np.full((len(vectors), k), -1, np.int64)
        return space.search(vectors, k, allow, deny)

    def snapshot(self) -> tuple[np.ndarray, dict[str, Any]]:
        """Every namespace's index serialized into one buffer, and the metadata that says where
        each one is (``namespaces``) and the largest key any holds (``max_key``)."""
        parts, entries, offset, max_key = [], [], 0, -1
        for name, space in self.spaces.items():
            data, meta = space.snapshot()
            entries.append({**meta, "name": name, "offset": offset, "length": len(data)})
            parts.append(data)
            offset += len(data)
            max_key = max(max_key, meta["max_key"])
        data = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        meta = {"kind": self.kind, "dim": self.dim, "max_key": max_key, "namespaces": entries}
        return data, meta

    @classmethod
    def load(cls, path: str | Path, tag: str, kind: IndexKind, dim: int) -> NamespacedIndex:
        """Load a snapshot written from :meth:`snapshot` with :meth:`VectorIndex.write_snapshot`, or
        raise :class:`SnapshotError`; its metadata is in ``snapshot_meta``."""
        data, meta = read_snapshot(path, tag, kind, dim)
        if "namespaces" not in meta:
            raise SnapshotError("snapshot of dupq 0.2, without namespaces")
        index = cls(dim, kind)
        for entry in meta["namespaces"]:
            space = VectorIndex.from_snapshot(data[entry["offset"] : entry["offset"] + entry["length"]], entry)
            index.spaces[entry["name"]] = space
            index._size += len(space)
        if index.spaces:
            first = next(iter(index.spaces.values()))
            index.hnsw_m, index._ef_search = first.hnsw_m, first.ef_search
        index.snapshot_meta = meta
        return index

    def live(self) -> Iterator[tuple[str, np.ndarray]]:
        """Each namespace with the keys it holds."""
        for name, space in list(self.spaces.items()):
            yield name, space.live_keys()


def _by_namespace(namespaces: Sequence[str]) -> dict[str, np.ndarray]:
    """The rows of each namespace in a list of them."""
    rows: dict[str, list[int]] = {}
    for row, namespace in enumerate(namespaces):
        rows.setdefault(namespace, []).append(row)
    return {namespace: np.array(r, dtype=np.int64) for namespace, r in rows.items()}
