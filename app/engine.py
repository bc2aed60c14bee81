"""The engine: the loaded model, the question store and the vector index, and the operations
the routes call. It owns every resource; :func:`app.main.create_app` starts and stops it.

Writes go store first (the source of truth, committed before any answer), then index, under
the write lock; searches take the read lock across the index search and the text lookup, so a
search never sees half of a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np

from app.batching import Batcher
from app.locks import ReadWriteLock
from app.settings import Settings
from app.store import QuestionStore, describe_skipped, read_question_file
from model.index import SnapshotError, VectorIndex
from model.model_dir import QuestionEncoder, load_encoder

logger = logging.getLogger(__name__)
T = TypeVar("T")


class NotReady(RuntimeError):
    """The model or the index is still loading."""


class StartupError(ValueError):
    """The service cannot start with this configuration; the message says why. A ValueError, so
    that ``dupq``'s subcommands report it in one line like any other bad input."""


@dataclass(frozen=True)
class Match:
    id: str
    question: str
    similarity: float


class Engine:
    def __init__(self, settings: Settings, on_batch: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.threads = settings.cpu_count()
        self.encoder: QuestionEncoder | None = None
        self.store: QuestionStore | None = None
        self.index: VectorIndex | None = None
        self.ready = False
        self.load_error: str | None = None
        self._lock = ReadWriteLock()
        self._on_batch = on_batch
        self._batcher: Batcher[str] | None = None  # questions -> vectors
        self._searcher: Batcher[tuple[np.ndarray, int]] | None = None  # (vector, k) -> matches
        self._workers = ThreadPoolExecutor(max_workers=max(4, 2 * self.threads), thread_name_prefix="engine")
        self._snapshot_generation = -1  # store generation of the snapshot on disk
        self._snapshot_write = threading.Lock()  # one snapshot written at a time
        self._snapshotter: asyncio.Task[None] | None = None

    # Life cycle -------------------------------------------------------------------------------

    @property
    def snapshot_path(self) -> Path:
        return self.settings.data_dir / f"index-{self.settings.index_kind}.faiss"

    def load_model(self) -> None:
        """Load the model and open the store; fast, and fails start-up with a clear message.
        Once done, calling it again does nothing (``dupq serve`` calls it before the server)."""
        if self.encoder is not None and self.store is not None:
            return
        import torch

        torch.set_num_threads(self.threads)
        try:
            self.encoder = load_encoder(
                self.settings.model_dir, backend=self.settings.encoder_backend, threads=self.threads
            )
        except ValueError as err:
            raise StartupError(str(err)) from err
        except Exception as err:
            raise StartupError(f"cannot load the model in {self.settings.model_dir}: {err!r}") from err
        try:
            self.store = QuestionStore(self.settings.data_dir / "questions.sqlite3", self.encoder.dim)
        except (OSError, sqlite3.Error) as err:
            raise StartupError(f"cannot open the question store in {self.settings.data_dir}: {err}") from err
        try:
            self._check_store()
        except StartupError:
            self.store.close()  # and its lock: the next attempt may open it
            self.store = None
            raise

    def _check_store(self) -> None:
        assert self.encoder is not None and self.store is not None
        seed = self.settings.seed_file
        if seed and not seed.is_file() and self.store.count() == 0:
            raise StartupError(f"the store is empty and the seed file {seed} (DUPQ_SEED_FILE) is not a file")
        others = {v: n for v, n in self.store.model_versions().items() if v != self.encoder.version}
        if others and self.settings.on_model_change == "refuse":
            raise StartupError(
                f"the store in {self.settings.data_dir} holds {sum(others.values())} questions embedded by model "
                f"version(s) {', '.join(sorted(others))}, not {self.encoder.version}; set DUPQ_ON_MODEL_CHANGE=reembed "
                "to re-embed them, or serve the model that made them"
            )

    def open(self) -> None:
        """The slow part of start-up: re-embed, load or rebuild the index, seed, warm up."""
        assert self.encoder is not None and self.store is not None
        reembedded = self._reembed()
        self._load_index(trust_snapshot=not reembedded)
        if self.store.count() == 0 and self.settings.seed_file:
            self._seed(self.settings.seed_file)
        for _ in range(3):
            self.encoder.encode(["Is the encoder warm yet?"])
        self.ready = True
        logger.info(
            "ready: model %s, %s index of %d questions",
            self.encoder.full_name,
            self.settings.index_kind,
            len(self.index or ()),
        )

    def _reembed(self) -> int:
        """Re-embed the stored questions of other model versions; returns how many."""
        assert self.encoder is not None and self.store is not None
        stale = sum(n for v, n in self.store.model_versions().items() if v != self.encoder.version)
        if not stale:
            return 0
        logger.warning("re-embedding %d stored questions with model %s", stale, self.encoder.version)
        done, started = 0, time.monotonic()
        for rows in self.store.iter_texts(not_version=self.encoder.version):
            vectors = self.encoder.encode([t for _, t in rows])
            self.store.set_embeddings([k for k, _ in rows], vectors, self.encoder.version)
            done += len(rows)
            logger.info(
                "re-embedded %d/%d questions (%.0f/s)", done, stale, done / max(1e-9, time.monotonic() - started)
            )
        return stale

    def _new_index(self) -> VectorIndex:
        assert self.encoder is not None
        s = self.settings
        return VectorIndex(self.encoder.dim, s.index_kind, hnsw_m=s.hnsw_m, ef_search=s.hnsw_ef_search)

    def _tag(self) -> str:
        """What the index holds: vectors of this model version (a snapshot of another is useless)."""
        assert self.encoder is not None
        return f"vectors of model {self.encoder.version}"

    def _load_index(self, trust_snapshot: bool = True) -> None:
        assert self.encoder is not None and self.store is not None
        try:
            if not trust_snapshot:  # vectors changed in place: the snapshot cannot tell which
                raise SnapshotError("stored questions were re-embedded")
            index = VectorIndex.load(self.snapshot_path, self._tag(), self.settings.index_kind, self.encoder.dim)
        except SnapshotError as why:
            logger.info("rebuilding the index from the store (%s)", why)
        else:
            index.ef_search = self.settings.hnsw_ef_search
            self._snapshot_generation = int(index.snapshot_meta.get("generation", -1))
            logger.info("index snapshot loaded: %d questions", len(index))
            if self._snapshot_generation != self.store.generation():
                # Written before the last changes (a crash, or changes since the last periodic
                # snapshot): replay them from the store instead of rebuilding everything.
                started = time.monotonic()
                added, removed = self._catch_up(index, int(index.snapshot_meta.get("max_key", -1)))
                logger.info(
                    "index caught up with the store: %d added, %d removed since the snapshot, in %.1f s",
                    added,
                    removed,
                    time.monotonic() - started,
                )
            self.index = index
            return
        index = self._new_index()
        started = time.monotonic()
        for keys, vectors in self.store.iter_vectors():
            index.add(keys, vectors)
        logger.info("index rebuilt: %d questions in %.1f s", len(index), time.monotonic() - started)
        self.index = index
        self.save_snapshot()

    def _catch_up(self, index: VectorIndex, max_key: int) -> tuple[int, int]:
        """Bring a snapshot holding every key up to ``max_key`` level with the store: add the rows
        written since (their keys are larger: keys only grow), remove the keys deleted since."""
        assert self.store is not None
        added = 0
        for keys, vectors in self.store.iter_vectors(after=max_key):
            index.add(keys, vectors)
            added += len(keys)
        live = index.live_keys()
        live = live[live <= max_key]
        # isin picks a lookup table over the key range when it is small enough: linear time.
        gone = live[~np.isin(live, self.store.keys(upto=max_key))]
        index.remove(gone)
        return added, len(gone)

    def save_snapshot(self) -> None:
        """Write the index snapshot if the store changed since the last one. Writes wait only
        while the index is copied in memory, not while the copy goes to disk."""
        if self.index is None or self.store is None:
            return
        with self._snapshot_write:
            with self._lock.read():
                generation = self.store.generation()
                if generation == self._snapshot_generation:
                    return
                data, meta = self.index.snapshot()
                size = len(self.index)
            started = time.monotonic()
            VectorIndex.write_snapshot(self.snapshot_path, data, {**meta, "tag": self._tag(), "generation": generation})
            self._snapshot_generation = generation
        logger.info("index snapshot written (%d questions, %.1f s)", size, time.monotonic() - started)

    async def _snapshot_loop(self) -> None:
        """Snapshot the index every ``snapshot_interval_s`` while the store changes, so a restart
        after a crash replays only the changes since the last one."""
        while True:
            await asyncio.sleep(self.settings.snapshot_interval_s)
            if self.ready:
                try:
                    await self._run(self.save_snapshot)
                except Exception:
                    logger.exception("index snapshot failed; the next one will try again")

    def _seed(self, path: Path) -> None:
        assert self.encoder is not None
        parsed, skipped = read_question_file(path, self.settings.max_question_chars)
        if skipped:
            logger.warning(describe_skipped(f"seed file {path}", skipped))
        items = [(qid or f"seed-{n}", text) for n, (qid, text) in enumerate(parsed, 1)]
        logger.info("seeding the empty store with %d questions from %s", len(items), path)
        for start in range(0, len(items), 1024):
            chunk = items[start : start + 1024]
            self._write(chunk, self.encoder.encode([t for _, t in chunk]))

    async def start(self) -> None:
        s = self.settings
        self._batcher = Batcher(
            self._encode_sync, s.batch_max_size, s.batch_wait_ms / 1000.0, s.queue_max, "encoder", self._on_batch
        )
        # Searches run in one thread, one batch of concurrent queries at a time, which FAISS
        # splits over DUPQ_THREADS OpenMP threads. OpenMP's thread count is a per-thread setting,
        # so it is set in the searcher's own thread. One OpenMP thread was measured too: a lone
        # query 2 to 3 ms faster, but 115 to 121 /duplicates per second at 16 and 64 clients
        # instead of 160 to 185 (flat index of 100,000, bench/service.py).
        self._searcher = Batcher(
            self._search,
            s.batch_max_size,
            s.batch_wait_ms / 1000.0,
            s.queue_max,
            "searcher",
            initializer=functools.partial(faiss.omp_set_num_threads, self.threads),
        )
        self._batcher.start()
        self._searcher.start()
        if s.snapshot_interval_s > 0:
            self._snapshotter = asyncio.get_running_loop().create_task(self._snapshot_loop(), name="snapshots")

    async def stop(self) -> None:
        if self._snapshotter is not None:
            self._snapshotter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._snapshotter
        for batcher in (self._batcher, self._searcher):
            if batcher is not None:
                await batcher.stop()
        if self.ready:
            self.save_snapshot()
        self._workers.shutdown(wait=True)
        if self.store is not None:
            self.store.close()

    # Operations -------------------------------------------------------------------------------

    def _encode_sync(self, texts: list[str]) -> np.ndarray:
        assert self.encoder is not None
        return self.encoder.encode(texts)

    @property
    def model_name(self) -> str:
        return self._require_ready().full_name

    @property
    def queue_depth(self) -> int:
        return sum(b.depth for b in (self._batcher, self._searcher) if b is not None)

    def index_size(self) -> int:
        return len(self.index) if self.index is not None else 0

    def _require_ready(self) -> QuestionEncoder:
        if not self.ready or self.encoder is None:
            raise NotReady(self.load_error or "the model and the index are still loading")
        return self.encoder

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._workers, fn, *args)

    async def encode(self, texts: list[str]) -> np.ndarray:
        self._require_ready()
        assert self._batcher is not None
        unique = list(dict.fromkeys(texts))  # a question asked twice is encoded once
        vectors: np.ndarray = await self._batcher.submit(unique)
        if len(unique) == len(texts):
            return vectors
        row = {t: i for i, t in enumerate(unique)}
        return vectors[[row[t] for t in texts]]

    async def similarity(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        vectors = await self.encode([q for pair in pairs for q in pair])
        # Products summed in float64, in the same order whichever side comes first: symmetric.
        # (Plain ufuncs: einsum's and clip's Python-side dispatch cost more than the arithmetic.)
        v = vectors.astype(np.float64)
        sims = (v[0::2] * v[1::2]).sum(axis=1)
        return np.minimum(np.maximum(sims, -1.0, out=sims), 1.0, out=sims)

    def probability(self, similarities: np.ndarray) -> np.ndarray:
        return self._require_ready().probability(similarities)

    @property
    def threshold(self) -> float:
        if self.settings.threshold is not None:
            return self.settings.threshold
        return self._require_ready().threshold

    async def add(self, items: Sequence[tuple[str | None, str]]) -> tuple[list[str], int]:
        """Upsert questions; an item without id gets a generated one. Durable on return."""
        ids = [qid or f"q-{uuid.uuid4().hex}" for qid, _ in items]
        vectors = await self.encode([text for _, text in items])
        # The same id twice in one request: the last one wins, as if sent one after the other.
        last = {qid: i for i, qid in enumerate(ids)}
        keep = sorted(last.values())
        await self._run(self._write, [(ids[i], items[i][1]) for i in keep], vectors[keep])
        return ids, self.index_size()

    def _write(self, items: list[tuple[str, str]], vectors: np.ndarray) -> None:
        assert self.store is not None and self.index is not None and self.encoder is not None
        with self._lock.write():
            old, new = self.store.upsert(items, vectors, self.encoder.version)
            self.index.remove(np.array(old, dtype=np.int64))
            self.index.add(np.array(new, dtype=np.int64), vectors)

    async def get(self, qid: str) -> tuple[str, str] | None:
        self._require_ready()
        assert self.store is not None
        found = await self._run(self.store.get, qid)
        return (found.id, found.text) if found else None

    async def delete(self, qid: str) -> bool:
        self._require_ready()
        return await self._run(self._delete, qid)

    def _delete(self, qid: str) -> bool:
        assert self.store is not None and self.index is not None
        with self._lock.write():
            key = self.store.delete(qid)
            if key is None:
                return False
            self.index.remove(np.array([key], dtype=np.int64))
            return True

    async def duplicates(self, texts: list[str], k: int) -> list[list[Match]]:
        vectors = await self.encode(texts)
        assert self._searcher is not None
        matches: list[list[Match]] = await self._searcher.submit([(v, k) for v in vectors])
        return matches

    def _search(self, queries: list[tuple[np.ndarray, int]]) -> list[list[Match]]:
        """One index search for a batch of (vector, k) queries from concurrent requests: for a
        flat index one matrix product instead of one pass over all vectors per query."""
        assert self.store is not None and self.index is not None
        k_most = max(k for _, k in queries)
        with self._lock.read():
            scores, keys = self.index.search(np.stack([v for v, _ in queries]), k_most)
            found = self.store.by_keys(sorted({int(x) for x in keys.ravel() if x >= 0}))
        results = []
        for (_, k), row_scores, row_keys in zip(queries, scores, keys, strict=True):
            matches = []
            for score, key in zip(row_scores[:k], row_keys[:k], strict=True):
                question = found.get(int(key))
                if question is not None:
                    matches.append(Match(question.id, question.text, float(min(1.0, max(-1.0, score)))))
            results.append(matches)
        return results
