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
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw"]
INDEX_KINDS: tuple[IndexKind, ...] = ("flat", "hnsw")


class SnapshotError(ValueError):
    """A snapshot that is missing, damaged, or for other data; the caller rebuilds instead."""


class VectorIndex:
    def __init__(
        self, dim: int, kind: IndexKind = "flat", hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 128
    ) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")
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

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``scores, keys`` of shape (Q, k), best first; missing results have key -1."""
        vectors = self._check(vectors)
        if self._index.ntotal == 0:
            return np.full((len(vectors), k), -np.inf, np.float32), np.full((len(vectors), k), -1, np.int64)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # SWIG class missing from faiss's stubs
            params.efSearch = max(self.ef_search, k)
            if self._tombstones:
                params.sel = self._exclude_tombstones()
            scores, keys = self._index.search(vectors, k, params=params)
        else:
            scores, keys = self._index.search(vectors, k)
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
        if _sha256(path) != meta.get("sha256"):
            raise SnapshotError("snapshot fails its checksum")
        hnsw = meta.get("hnsw", {})
        index = cls(dim, kind, hnsw.get("m", 32), hnsw.get("ef_construction", 80), hnsw.get("ef_search", 128))
        try:
            loaded = faiss.read_index(str(path))
        except RuntimeError as err:
            raise SnapshotError(f"snapshot cannot be read: {err}") from err
        if not isinstance(loaded, faiss.IndexIDMap2):
            raise SnapshotError(f"snapshot holds a {type(loaded).__name__}, not an id-mapped index")
        index._index = loaded
        index._tombstones = set(meta.get("tombstones", []))
        index.snapshot_meta = meta
        return index


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
