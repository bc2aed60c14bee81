"""The vector index: FAISS inner-product search over unit vectors, keyed by int64 keys.

Each namespace's vectors are in one :class:`VectorIndex`, whose structure is one of:

- ``flat``: exact search over float32 vectors (``IndexFlatIP``); deletes remove at once.
- ``hnsw``: approximate search (an HNSW graph, ``IndexHNSWSQ``) over the vectors in float16, half
  the memory of float32 with no training step and scores within about 1e-4 of float32's, so that
  recall is the graph's alone (docs/experiments.md weighs it against float32 and 8-bit codes).
  It grows one question at a time and its search cost grows with log(N). HNSW cannot remove a
  node from its graph, so a delete marks the key as a tombstone that every search filters out (a
  FAISS ID selector); when tombstones pass a quarter of the index it is rebuilt without them (below).

The index *kind* (``DUPQ_INDEX_KIND``) says which structure a namespace gets: ``flat`` always,
``hnsw`` always, or ``auto`` (the default): flat, exact, while the namespace is small, HNSW from
``hnsw_from`` questions on. Changing structure (and dropping tombstones) is a :meth:`rebuild`:
the new index is built beside the old one, outside the lock, from copies taken a chunk at a time;
the writes made meanwhile are kept in a journal and replayed onto the new index, which is then
swapped in under the write lock. Searches go on against the old one the whole time.

The index is not thread-safe for writes: callers hold a lock around ``add``/``remove`` and let
searches run concurrently with each other only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

logger = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "hnsw"]
INDEX_KINDS: tuple[IndexKind, ...] = ("auto", "flat", "hnsw")
Structure = Literal["flat", "hnsw"]
SNAPSHOT_FORMAT = 2  # dupq 0.4: a structure per namespace, HNSW over float16

# HNSW's recall at a fixed efSearch falls as the graph grows: over bench/ann.py's joined collection
# (real questions and made-up joins of two), efSearch 128 finds 0.984 of the exact top 10 at
# 300,000 questions and 0.9865 at a million (over HTTP), but 0.9288 at ten million, where 1,024
# finds 0.9815 (docs/benchmarks.md). So above EF_GROWS_FROM questions a namespace's efSearch grows
# in proportion to its size, up to EF_GROWTH_CAP times the configured one.
EF_GROWS_FROM = 1_000_000
EF_GROWTH_CAP = 8
# A search allowed at most this many keys scores them exactly (HNSW: or a twentieth of the index).
EXACT_SUBSET = 4096
# A rebuild copies this many vectors per hold of the read lock, and replays the writes made
# meanwhile outside the lock until at most this many are left for the swap under the write lock.
REBUILD_CHUNK = 20_000
SWAP_BACKLOG = 2_000
CATCH_UP_ROUNDS = 8  # then the rest is replayed under the write lock, however many writes keep coming

Section = Callable[[], AbstractContextManager[Any]]  # a lock's read or write section


def check_kind(kind: str) -> None:
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")


class SnapshotError(ValueError):
    """A snapshot that is missing, damaged, or for other data; the caller rebuilds instead."""


@dataclass(frozen=True)
class IndexParams:
    """How every namespace's index is made: the kind, auto's switching size, HNSW's settings."""

    kind: IndexKind = "auto"
    # auto: a namespace of this many questions or more is searched by HNSW. Up to 10,000 256-d
    # vectors an exact scan costs about what HNSW does (0.32 against 0.20 ms a query, one thread);
    # past it, the vectors outgrow the CPU's cache and it costs 1.1 ms at 20,000 and 7.2 ms at
    # 100,000 against 0.26 and 0.39 ms (python bench/crossover.py, docs/benchmarks.md).
    hnsw_from: int = 10_000
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128  # up to EF_GROWS_FROM questions; more above (ef_for)
    ef_grows: bool = True  # False: ef_search at any size (benchmarks that measure one)

    def ef_for(self, size: int) -> int:
        """The efSearch of a search in an HNSW index of ``size`` questions."""
        if not self.ef_grows or size <= EF_GROWS_FROM:
            return self.ef_search
        return min(self.ef_search * EF_GROWTH_CAP, -(-self.ef_search * size // EF_GROWS_FROM))

    def structure_for(self, size: int) -> Structure:
        if self.kind == "auto":
            return "hnsw" if size >= self.hnsw_from else "flat"
        return self.kind


class VectorIndex:
    def __init__(
        self,
        dim: int,
        kind: IndexKind = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        hnsw_from: int = 10_000,
        structure: Structure | None = None,
    ) -> None:
        check_kind(kind)
        self.dim = dim
        self.params = IndexParams(kind, hnsw_from, hnsw_m, ef_construction, ef_search)
        self.structure: Structure = structure or self.params.structure_for(0)
        self._tombstones: set[int] = set()
        self._selector: tuple[object, object] | None = None  # excludes the tombstones; rebuilt when they change
        # While a rebuild runs: the writes made since it began, in order ("add"/"remove", keys, vectors).
        self._journal: list[tuple[str, np.ndarray, np.ndarray | None]] | None = None
        self._index: faiss.IndexIDMap2 = self._empty(self.structure)
        self.snapshot_meta: dict[str, Any] = {}  # what load() read with the snapshot

    @property
    def kind(self) -> IndexKind:
        return self.params.kind

    @property
    def ef_search(self) -> int:
        return self.params.ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        """Search with this efSearch at any size (it no longer grows with the index)."""
        self.params = replace(self.params, ef_search=value, ef_grows=False)

    def _empty(self, structure: Structure) -> faiss.IndexIDMap2:
        if structure == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        fp16: Any = faiss.ScalarQuantizer.QT_fp16  # an int; faiss's stubs expect the class
        inner = faiss.IndexHNSWSQ(self.dim, fp16, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = self.params.ef_construction
        inner.hnsw.efSearch = self.params.ef_search
        return faiss.IndexIDMap2(inner)

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._tombstones)

    @property
    def rebuilding(self) -> bool:
        return self._journal is not None

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
            if self._journal is not None:
                self._journal.append(("add", keys, vectors))

    def remove(self, keys: np.ndarray) -> None:
        """Remove keys the index holds (the caller knows them from the store)."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if not len(keys):
            return
        if self._journal is not None:
            self._journal.append(("remove", keys, None))
        if self.structure == "flat":
            self._index.remove_ids(faiss.IDSelectorBatch(keys))
            return
        self._tombstones.update(int(k) for k in keys)
        self._selector = None

    def live_keys(self) -> np.ndarray:
        keys = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        if self._tombstones:
            keys = keys[~np.isin(keys, np.fromiter(self._tombstones, dtype=np.int64))]
        return keys

    # Rebuilds ---------------------------------------------------------------------------------

    def rebuild_due(self) -> bool:
        """Whether :meth:`rebuild` has work: a flat index that auto wants as HNSW now, or an HNSW
        index whose tombstones pass a quarter of it."""
        if self._journal is not None:
            return False
        if self.structure == "flat":
            return self.params.structure_for(len(self)) == "hnsw"
        return len(self._tombstones) > max(1000, int(self._index.ntotal) // 4)

    def rebuild(self, read: Section, write: Section, cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Build an HNSW index of the live vectors beside this one and swap it in; returns whether
        it did. Call it outside the caller's lock, giving the lock's ``read`` and ``write``
        sections: the vectors are copied a chunk at a time under ``read`` (HNSW positions never
        move; a flat index is copied at once, since a delete moves its vectors), the graph is
        built outside the lock, the writes made meanwhile are replayed from the journal (outside
        the lock too, until few are left or after a few rounds), and the swap happens under
        ``write``. Vectors copied from an HNSW index come out of float16 and go back in
        unchanged. The new index needs as much memory as the old one until the swap.
        ``cancelled`` is asked between chunks (shutdown): the old index stays."""
        with read():
            if not self.rebuild_due():
                return False
            self._journal = []
            total = int(self._index.ntotal)
            source: Structure = self.structure
            first = self._copy(0, total) if source == "flat" else None
        started = time.monotonic()
        new = self._empty("hnsw")
        done = 0  # journal entries replayed onto the new index
        tombstones: set[int] = set()
        try:
            for start in range(0, total, REBUILD_CHUNK):
                if cancelled():
                    raise _Cancelled
                end = min(total, start + REBUILD_CHUNK)
                if first is not None:
                    keys, vectors = first[0][start:end], first[1][start:end]
                else:
                    with read():
                        keys, vectors = self._copy(start, end)
                new.add_with_ids(vectors, keys)
            first = None
            for _ in range(CATCH_UP_ROUNDS):  # catch up with the writes made meanwhile, outside the lock
                if cancelled():
                    raise _Cancelled
                with read():
                    pending = self._journal[done:]
                if sum(len(keys) for _, keys, _ in pending) <= SWAP_BACKLOG:
                    break
                _replay(new, pending, tombstones)
                done += len(pending)
        except _Cancelled:
            with write():
                self._journal = None
            return False
        except BaseException:
            with write():
                self._journal = None
            raise
        with write():
            _replay(new, self._journal[done:], tombstones)
            self._journal = None
            # A key deleted before it was copied is in no index: only held keys stay tombstones.
            held = np.fromiter(tombstones, dtype=np.int64)
            held = held[np.isin(held, faiss.vector_to_array(new.id_map))]
            before = len(self)
            self._index, self.structure = new, "hnsw"
            self._tombstones, self._selector = {int(k) for k in held}, None
            if len(self) != before:  # a bug, not a state to serve: say so loudly
                logger.error("index rebuild changed the size from %d to %d", before, len(self))
        logger.info(
            "index of %d questions rebuilt as %s from %s in %.1f s",
            len(self),
            "hnsw",
            source,
            time.monotonic() - started,
        )
        return True

    def _copy(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """The live keys and vectors at positions [start, end)."""
        ids = faiss.rev_swig_ptr(self._index.id_map.data(), int(self._index.ntotal))
        keys = np.array(ids[start:end], dtype=np.int64)
        vectors = self._index.index.reconstruct_n(start, end - start) if end > start else np.zeros((0, self.dim))
        if self._tombstones:
            live = ~np.isin(keys, np.fromiter(self._tombstones, dtype=np.int64))
            keys, vectors = keys[live], vectors[live]
        return keys, np.ascontiguousarray(vectors, dtype=np.float32)

    # Search -----------------------------------------------------------------------------------

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
        hnsw = self.structure == "hnsw"
        exact = max(EXACT_SUBSET, self._index.ntotal // 20) if hnsw else EXACT_SUBSET
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
        if hnsw:
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # SWIG class missing from faiss's stubs
            params.efSearch = max(self.params.ef_for(len(self)), k)
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
        if allow is not None and hnsw:
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

    def write_to(self, file: SnapshotFile) -> dict[str, Any]:
        """Stream the index into a snapshot file being written; returns its metadata (where it is in
        the file, its structure, the largest key it holds, its tombstones). Writes must wait
        meanwhile (the caller's read lock): FAISS writes the index as it is, with no copy in memory
        (a million questions: 0.9 to 2.4 s into the page cache, against 4.1 to 5.7 s to serialize
        them in memory first, which also held the index twice)."""
        offset, length = file.write_index(self._index)
        keys = faiss.vector_to_array(self._index.id_map)
        return {
            "format": SNAPSHOT_FORMAT,
            "kind": self.kind,
            "structure": self.structure,
            "dim": self.dim,
            "max_key": int(keys.max()) if len(keys) else -1,
            "tombstones": sorted(self._tombstones),
            "hnsw": {"m": self.params.hnsw_m, "ef_construction": self.params.ef_construction},
            "offset": offset,
            "length": length,
        }

    def save(self, path: str | Path, tag: str) -> None:
        """Write the index to ``path``; ``tag`` says which vectors it holds (checked by
        :meth:`load`)."""
        with SnapshotFile(path) as file:
            meta = self.write_to(file)
            file.commit({**meta, "tag": tag})

    @classmethod
    def load(cls, path: str | Path, tag: str, params: IndexParams, dim: int) -> VectorIndex:
        """Load a snapshot written by :meth:`save` with the same ``tag``, kind and dim, or raise
        :class:`SnapshotError` saying why it cannot be used. The metadata, ``max_key`` (the
        largest key ever added) and anything a caller gave :meth:`SnapshotFile.commit` included, is in
        ``snapshot_meta``."""
        meta = read_snapshot(path, tag, params.kind, dim)
        size = Path(path).stat().st_size
        index = cls.from_faiss(read_index_at(path, 0, size), meta, params)
        index.snapshot_meta = meta
        return index

    @classmethod
    def from_faiss(cls, loaded: faiss.Index, meta: dict[str, Any], params: IndexParams) -> VectorIndex:
        """The index of a :meth:`snapshot` read back, and its metadata. The graph's degree and
        build breadth are the snapshot's; the search settings and auto's switching size are
        ``params``'."""
        structure = meta.get("structure")
        if structure not in ("flat", "hnsw"):
            raise SnapshotError(f"snapshot of an unknown structure {structure!r}")
        hnsw = meta.get("hnsw", {})
        params = replace(params, hnsw_m=hnsw.get("m", params.hnsw_m))
        params = replace(params, ef_construction=hnsw.get("ef_construction", params.ef_construction))
        index = cls(meta["dim"], params.kind, params.hnsw_m, params.ef_construction, params.ef_search)
        index.params, index.structure = params, structure
        if not isinstance(loaded, faiss.IndexIDMap2):
            raise SnapshotError(f"snapshot holds a {type(loaded).__name__}, not an id-mapped index")
        inner = faiss.downcast_index(loaded.index)
        expected = faiss.IndexFlatIP if structure == "flat" else faiss.IndexHNSWSQ
        if not isinstance(inner, expected):
            raise SnapshotError(f"snapshot of a {structure} index holds a {type(inner).__name__}")
        index._index = loaded
        index._tombstones = set(meta.get("tombstones", []))
        return index


class _Cancelled(Exception):
    pass


def _replay(
    index: faiss.IndexIDMap2, journal: Sequence[tuple[str, np.ndarray, np.ndarray | None]], tombstones: set[int]
) -> None:
    """Apply journalled writes to a new HNSW index: adds go in, removes become tombstones."""
    for op, keys, vectors in journal:
        if op == "add" and vectors is not None:
            index.add_with_ids(vectors, keys)
        else:
            tombstones.update(int(k) for k in keys)


class SnapshotFile:
    """A snapshot being written: indexes streamed one after another into ``path.tmp`` with the
    sha256 of their bytes, then :meth:`commit` syncs it, renames it to ``path`` and writes the
    metadata, with the checksum, to the sidecar ``path.json`` (written to a temporary name, synced,
    renamed). Used as a context manager, a file not committed is removed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        self._handle = open(self._tmp, "wb")  # noqa: SIM115  # closed by commit() or abort()
        self._hash = hashlib.sha256()
        self._offset = 0

    def __enter__(self) -> SnapshotFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def write_index(self, index: faiss.Index) -> tuple[int, int]:
        """Append a FAISS index; returns where it is: (offset, length)."""
        start = self._offset
        faiss.write_index(index, faiss.PyCallbackIOWriter(self._write))  # type: ignore[attr-defined]  # not in the stubs
        return start, self._offset - start

    def write_bytes(self, data: bytes) -> tuple[int, int]:
        """Append bytes of the caller's (read back by :func:`read_bytes_at`); returns where they
        are: (offset, length)."""
        start = self._offset
        self._write(data)
        return start, len(data)

    def _write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._handle.write(chunk)
        self._offset += len(chunk)

    def commit(self, meta: dict[str, Any]) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._tmp, self.path)
        _write_meta(self.path, {**meta, "sha256": self._hash.hexdigest()})

    def abort(self) -> None:
        if not self._handle.closed:
            with suppress(OSError):  # it flushes: on a full disk, fails as the write did
                self._handle.close()
            self._tmp.unlink(missing_ok=True)


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    """Write a snapshot's sidecar ``path.json`` whole: to a temporary name, synced, renamed."""
    meta_tmp = path.with_suffix(path.suffix + ".json.tmp")
    with open(meta_tmp, "w", encoding="utf-8") as handle:
        json.dump(meta, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(meta_tmp, path.with_suffix(path.suffix + ".json"))


def retag_snapshot(path: Path, tag: str, new_tag: str) -> bool:
    """Give the snapshot at ``path`` tagged ``tag`` the tag ``new_tag`` (its sidecar rewritten; the
    vectors, and so the checksum, are the same): a SQLite service's snapshot made a replica's of
    the PostgreSQL store that the same rows were loaded into. False if it is tagged otherwise."""
    meta = json.loads(path.with_suffix(path.suffix + ".json").read_text(encoding="utf-8"))
    if meta.get("tag") != tag:
        return False
    _write_meta(path, {**meta, "tag": new_tag})
    return True


def snapshot_tag(model_version: str, store_id: str | None) -> str:
    """What an index holds: vectors of this model version (a snapshot of another is useless), of
    which PostgreSQL store for a replica's."""
    of = f" of store {store_id}" if store_id else ""
    return f"vectors of model {model_version}{of}"


def read_snapshot(path: str | Path, tag: str, kind: str, dim: int) -> dict[str, Any]:
    """The metadata of a snapshot file written through a :class:`SnapshotFile` with this
    ``tag``, kind and dim, once the file passes its checksum; or :class:`SnapshotError`. The file
    is hashed as it is read from disk, before FAISS reads any of it (:func:`read_index_at`)."""
    path = Path(path)
    meta_path = path.with_suffix(path.suffix + ".json")
    if not path.is_file() or not meta_path.is_file():
        raise SnapshotError("no snapshot")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SnapshotError(f"unreadable snapshot metadata: {err}") from err
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"snapshot of format {meta.get('format', 1)}, not {SNAPSHOT_FORMAT} (an older dupq)")
    if meta.get("tag") != tag:
        raise SnapshotError(f"snapshot is stale: it holds {meta.get('tag')}, not {tag}")
    if meta.get("kind") != kind or meta.get("dim") != dim:
        raise SnapshotError(f"snapshot is a {meta.get('kind')} index of dim {meta.get('dim')}")
    with open(path, "rb") as handle:
        if hashlib.file_digest(handle, "sha256").hexdigest() != meta.get("sha256"):
            raise SnapshotError("snapshot fails its checksum")
    return meta


def read_bytes_at(path: str | Path, offset: int, length: int) -> bytes:
    """The bytes at ``[offset, offset + length)`` of a file; :class:`SnapshotError` if it cannot be
    read or is shorter."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
    except OSError as err:
        raise SnapshotError(f"snapshot cannot be read: {err.strerror}") from err
    if len(data) != length:
        raise SnapshotError(f"snapshot entry of {length} bytes held {len(data)}")
    return data


def read_index_at(path: str | Path, offset: int, length: int) -> faiss.Index:
    """The FAISS index serialized at ``[offset, offset + length)`` of a file, read by FAISS from
    the file itself (one copy: reading the bytes, then deserializing them, took 2.9 s at a million
    questions, this 0.9 s); :class:`SnapshotError` if it cannot be read or is not that long."""
    with open(path, "rb", buffering=0) as handle:
        handle.seek(offset)
        consumed = 0

        def read(size: int) -> bytes:
            nonlocal consumed
            data = handle.read(min(size, length - consumed))
            consumed += len(data)
            return data

        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(read))  # type: ignore[attr-defined]  # not in the stubs
        except RuntimeError as err:
            raise SnapshotError(f"snapshot cannot be read: {err}") from err
    if consumed != length:
        raise SnapshotError(f"snapshot entry of {length} bytes held {consumed}")
    return index


class NamespacedIndex:
    """One :class:`VectorIndex` per namespace, made on a namespace's first question and dropped
    with its last: a search reads only its namespace's vectors, whether there is one namespace of
    a million questions or thousands of a hundred (docs/benchmarks.md measures both against one
    shared index with a namespace selector). Under ``auto`` each namespace is flat or HNSW by its
    own size. The same locking rules as :class:`VectorIndex`."""

    def __init__(self, dim: int, params: IndexParams | None = None) -> None:
        self.params = params or IndexParams()
        check_kind(self.params.kind)
        self.dim = dim
        self.spaces: dict[str, VectorIndex] = {}
        self.snapshot_meta: dict[str, Any] = {}
        self._size = 0  # kept up to date, not summed over thousands of namespaces per request

    @property
    def kind(self) -> IndexKind:
        return self.params.kind

    def __len__(self) -> int:
        return self._size

    def size(self, namespace: str) -> int:
        space = self.spaces.get(namespace)
        return len(space) if space is not None else 0

    def structures(self) -> dict[str, int]:
        """How many namespaces are searched exactly (flat) and approximately (hnsw) now."""
        counts = {"flat": 0, "hnsw": 0}
        for space in list(self.spaces.values()):
            counts[space.structure] += 1
        return counts

    def _new_space(self, size: int) -> VectorIndex:
        p = self.params
        return VectorIndex(
            self.dim, p.kind, p.hnsw_m, p.ef_construction, p.ef_search, p.hnsw_from, p.structure_for(size)
        )

    def expect(self, sizes: dict[str, int]) -> None:
        """Make the indexes of namespaces about to be loaded with this many questions each, in the
        structure that size calls for (a start-up rebuild, instead of a flat index then a switch)."""
        for namespace, size in sizes.items():
            if namespace not in self.spaces:
                self.spaces[namespace] = self._new_space(size)

    def add(self, keys: np.ndarray, vectors: np.ndarray, namespaces: Sequence[str]) -> None:
        """Add vectors under new keys, each to its namespace."""
        keys = np.asarray(keys, dtype=np.int64)
        for namespace, rows in _by_namespace(namespaces).items():
            space = self.spaces.get(namespace)
            if space is None:
                space = self.spaces[namespace] = self._new_space(0)
            before = len(space)
            space.add(keys[rows], vectors[rows])
            self._size += len(space) - before

    def remove(self, removed: Sequence[tuple[int, str]]) -> None:
        """Remove ``(key, namespace)`` pairs the index holds."""
        keys = np.array([key for key, _ in removed], dtype=np.int64)
        for namespace, rows in _by_namespace([ns for _, ns in removed]).items():
            space = self.spaces.get(namespace)
            if space is not None:
                before = len(space)
                space.remove(keys[rows])
                self._size += len(space) - before
                if not len(space):  # a rebuild of it, if one runs, ends on an orphan
                    del self.spaces[namespace]

    def drop(self, namespace: str) -> None:
        space = self.spaces.pop(namespace, None)
        if space is not None:
            self._size -= len(space)

    def due(self, namespaces: Sequence[str] | None = None) -> list[str]:
        """The namespaces (of ``namespaces``, or all) whose index wants a :meth:`rebuild`."""
        names = self.spaces if namespaces is None else namespaces
        return [n for n in names if (space := self.spaces.get(n)) is not None and space.rebuild_due()]

    def rebuild(self, namespace: str, read: Section, write: Section, cancelled: Callable[[], bool]) -> bool:
        """:meth:`VectorIndex.rebuild` of a namespace's index (its size does not change)."""
        with read():
            space = self.spaces.get(namespace)
        return space is not None and space.rebuild(read, write, cancelled)

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

    def write_to(self, file: SnapshotFile) -> dict[str, Any]:
        """Stream every namespace's index into a snapshot file (see :meth:`VectorIndex.write_to`);
        returns the metadata that says where each one is (``namespaces``) and the largest key any
        holds (``max_key``)."""
        entries, max_key = [], -1
        for name, space in list(self.spaces.items()):
            meta = space.write_to(file)
            entries.append({**meta, "name": name})
            max_key = max(max_key, meta["max_key"])
        return {
            "format": SNAPSHOT_FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "max_key": max_key,
            "namespaces": entries,
        }

    @classmethod
    def load(cls, path: str | Path, tag: str, params: IndexParams, dim: int) -> NamespacedIndex:
        """Load a snapshot written by :meth:`write_to` into a :class:`SnapshotFile`, or raise
        :class:`SnapshotError`; its metadata is in ``snapshot_meta``."""
        meta = read_snapshot(path, tag, params.kind, dim)
        index = cls(dim, params)
        for entry in meta["namespaces"]:
            loaded = read_index_at(path, entry["offset"], entry["length"])
            space = VectorIndex.from_faiss(loaded, entry, params)
            index.spaces[entry["name"]] = space
            index._size += len(space)
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
