"""The engine: the loaded model, the question store and the vector index, and the operations the
routes call. :func:`app.main.create_app`'s lifespan builds it and starts and stops it; ``dupq
index`` builds it the same way.

Start-up has two steps, in this order everywhere: :func:`open_model_and_store` (fast, and fails
with a one-line :class:`StartupError`), then :meth:`Engine.build` (slow: re-embedding, the index,
the seed file, the warm-up), which returns a complete engine.

Writes go store first (the source of truth, committed before any answer), then index, under the
write lock; searches take the read lock across the index search and the text lookup, so a search
never sees half of a write.

The store is a SQLite file in the data directory (the default), or a PostgreSQL database shared
by several replicas (``DUPQ_STORE_URL``). Then the engine reads from its local copy of it and
writes to PostgreSQL, and a :class:`app.replica.Follower` applies the store's change feed, its own
writes included, to the copy and the index under the same write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
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
from tqdm import tqdm

from app.batching import Batcher
from app.feed import Applied, FeedBatch, ModelMismatch
from app.groups import find_groups
from app.index import IndexParams, NamespacedIndex, SnapshotError, SnapshotFile, snapshot_tag
from app.locks import ReadWriteLock
from app.pgstaged import StagedRows, remove_staged_rows
from app.pgstore import PostgresStore, StoreUnavailable
from app.question_file import Skipped, describe_skipped, read_questions
from app.replica import COPY_FILE, Follower
from app.schemas import Limits, QuestionIn
from app.settings import Settings
from app.staged import (
    Reembedded,
    Staged,
    StagedVectors,
    load_staged_index,
    reembed,
    remove_staged,
    staged_index_path,
)
from app.store import (
    DEFAULT_NAMESPACE,
    SEEDING,
    Feedback,
    NewQuestion,
    QuestionStore,
    Store,
    StoredQuestion,
    StoreFull,
    StoreTooNew,
    TextRow,
    damaged,
)
from model.encoder import QuestionEncoder, load_encoder

logger = logging.getLogger(__name__)
T = TypeVar("T")

STORE_FILE = "questions.sqlite3"


class NotReady(RuntimeError):
    """The model or the index is still loading, or loading failed."""


class StartupError(ValueError):
    """The service cannot start with this configuration; the message says why. A ValueError, so
    that ``dupq``'s subcommands report it in one line like any other bad input."""


def damaged_store(err: BaseException) -> StartupError | None:
    """``err`` as a :class:`StartupError` that says what to do, if SQLite found the store damaged."""
    if damaged(err):
        return StartupError(
            f"the question store is damaged ({err}): restore a backup (dupq restore, docs/operations.md#backups)"
        )
    return None


class StartupStopped(Exception):
    """The service was asked to stop while :meth:`Engine.build` re-embedded the store, waited for
    the replica that does, or rebuilt the index: what it did so far is kept (re-embedded batches
    are committed), and the next start goes on from there."""


@dataclass(frozen=True)
class Match:
    id: str
    question: str
    similarity: float
    namespace: str
    metadata: str  # the stored JSON object, as text


Conditions = tuple[tuple[str, tuple[str, ...]], ...]  # (metadata key, values as term_value writes them)


@dataclass(frozen=True)
class Scope:
    """Where a search looks: one namespace, only the questions whose metadata meets
    ``conditions`` (None: all of them), never those of ``exclude_ids`` or ``exclude_keys``."""

    namespace: str = DEFAULT_NAMESPACE
    conditions: Conditions | None = None
    exclude_ids: tuple[str, ...] = ()
    exclude_keys: tuple[int, ...] = ()

    @property
    def plain(self) -> bool:
        return self.conditions is None and not self.exclude_ids and not self.exclude_keys


class UnknownIds(LookupError):
    """Ids that name no stored question where the request needs one (a 404 that names them and
    where they were)."""

    def __init__(self, where: Sequence[tuple[Sequence[str | int], str]]) -> None:
        super().__init__(", ".join(qid for _, qid in where))
        self.where = where


@dataclass(frozen=True)
class Group:
    representative: str
    ids: list[str]


@dataclass
class Stores:
    """The stores of a service: ``local``, the SQLite store of its data directory, is the source
    of truth by itself, or a replica's copy of ``primary``, a PostgreSQL store."""

    local: QuestionStore
    primary: PostgresStore | None = None

    @property
    def truth(self) -> Store:
        return self.primary or self.local

    def close(self) -> None:
        self.local.close()
        if self.primary is not None:
            self.primary.close()


def open_model_and_store(settings: Settings) -> tuple[QuestionEncoder, Stores]:
    """The fast part of start-up: load the model, open the store (taking its lock; connecting to
    PostgreSQL and migrating its schema) and check that they fit together. Raises
    :class:`StartupError` with the reason."""
    try:
        encoder = load_encoder(settings.model_dir, threads=settings.cpu_count())
    except ValueError as err:
        raise StartupError(str(err)) from err
    except Exception as err:
        raise StartupError(f"cannot load the model in {settings.model_dir}: {err!r}") from err
    primary = None
    url = settings.store_url
    if url is not None and url.startswith("postgres"):
        try:
            primary = PostgresStore(url, encoder.dim, settings.store_timeout_s, settings.store_connect_timeout_s)
        except (StoreTooNew, StoreUnavailable) as err:
            raise StartupError(str(err)) from err
        except Exception as err:
            raise StartupError(f"cannot open the PostgreSQL store: {err}") from err
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # the snapshot's, whichever file the store is
        path = settings.data_dir / (COPY_FILE if primary else STORE_FILE)
        local = QuestionStore(settings.sqlite_path() or path, encoder.dim, synchronous="NORMAL" if primary else "FULL")
    except StoreTooNew as err:
        if primary:
            primary.close()
        raise StartupError(str(err)) from err
    except (OSError, sqlite3.Error) as err:
        if primary:
            primary.close()
        raise damaged_store(err) or StartupError(
            f"cannot open the question store in {settings.data_dir}: {err}"
        ) from err
    stores = Stores(local, primary)
    try:
        _check_store(settings, encoder, stores.truth)
    except (StartupError, StoreUnavailable, sqlite3.DatabaseError) as err:
        stores.close()  # and its lock: the next attempt may open it
        if isinstance(err, sqlite3.DatabaseError) and not damaged(err):
            raise
        raise damaged_store(err) or StartupError(str(err)) from err
    return encoder, stores


def seeding_due(store: Store) -> bool:
    """Whether start-up seeds the store (when ``DUPQ_SEED_FILE`` is set): it is empty and was never
    seeded, or a seeding began and did not end. A store seeded and emptied since stays empty."""
    state = store.meta(SEEDING)
    return state == "started" or (state is None and store.count() == 0)


def _read_seed(settings: Settings, path: Path) -> tuple[list[QuestionIn], list[Skipped]]:
    """The questions of a seed file and the lines skipped, or a :class:`StartupError` that says why
    the file cannot be read (not UTF-8, a CSV without a text column, a damaged gzip stream)."""
    try:
        return read_questions(path, Limits(settings.max_question_chars, settings.max_batch), lambda q: q)
    except ValueError as err:
        raise StartupError(f"the seed file (DUPQ_SEED_FILE) cannot be read: {err}") from err


def _check_store(settings: Settings, encoder: QuestionEncoder, store: Store) -> None:
    seed = settings.seed_file
    if seed and seeding_due(store):
        if not seed.is_file():
            why = "is empty" if store.count() == 0 else "was being seeded when it stopped"
            raise StartupError(f"the store {why} and the seed file {seed} (DUPQ_SEED_FILE) is not a file")
        _read_seed(settings, seed)  # a file that cannot be read fails now, in one line, not at /ready
    others = {v: n for v, n in store.model_versions().items() if v != encoder.version}
    if others and settings.on_model_change == "refuse":
        raise StartupError(
            f"the store in {settings.data_dir} holds {sum(others.values())} questions embedded by model "
            f"version(s) {', '.join(sorted(others))}, not {encoder.version}; set DUPQ_ON_MODEL_CHANGE=reembed "
            "to re-embed them, or serve the model that made them"
        )


SNAPSHOT_FILE = "index.faiss"  # and index.faiss.json beside it


def _snapshot_path(settings: Settings) -> Path:
    return settings.data_dir / SNAPSHOT_FILE


def _remove_old_snapshots(data_dir: Path) -> None:
    """dupq before 0.4 kept one snapshot per index kind (index-flat.faiss, index-hnsw.faiss): the
    format changed, so they can only take disk space."""
    for path in sorted(data_dir.glob("index-*.faiss*")):
        logger.info("removing %s, an index snapshot of an older dupq", path)
        path.unlink(missing_ok=True)


def index_tag(encoder: QuestionEncoder, primary: PostgresStore | None) -> str:
    """What this service's index holds (:func:`app.index.snapshot_tag`)."""
    return snapshot_tag(encoder.version, primary.store_id if primary else None)


class Engine:
    """Everything the routes need, loaded: use :meth:`build`, then :meth:`start` in the event loop."""

    def __init__(
        self,
        settings: Settings,
        encoder: QuestionEncoder,
        store: QuestionStore,
        index: NamespacedIndex,
        snapshot_generation: int,
        on_batch: Callable[[int], None] | None = None,
        primary: PostgresStore | None = None,
        follower: Follower | None = None,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.store = store  # every read; every write too, unless there is a primary
        self.primary = primary
        self.stores = Stores(store, primary)
        self.follower = follower
        self.tag = index_tag(encoder, primary)
        self.index = index
        self.threads = settings.cpu_count()
        self.snapshot_path = _snapshot_path(settings)
        self._lock = ReadWriteLock()
        self._workers = ThreadPoolExecutor(max_workers=max(4, 2 * self.threads), thread_name_prefix="engine")
        self._snapshot_generation = snapshot_generation  # store generation of the snapshot on disk
        self._snapshot_write = threading.Lock()  # one snapshot written at a time
        self._snapshotter: asyncio.Task[None] | None = None
        self._grouping = threading.Lock()  # one duplicate-groups pass at a time: each takes every core
        self._changes = 0  # questions added or deleted since the last snapshot (under the write lock)
        # Index rebuilds (auto's switch to HNSW, dropping HNSW tombstones) run one at a time in a
        # thread of their own on one OpenMP thread, so that searches keep the other cores.
        self._rebuilder = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="rebuild", initializer=functools.partial(faiss.omp_set_num_threads, 1)
        )
        self._rebuilds: set[str] = set()  # namespaces queued or being rebuilt
        self._rebuilds_lock = threading.Lock()
        self._stopping = threading.Event()
        self._following: threading.Thread | None = None
        if follower is not None:
            follower.apply = self._apply_feed
        wait = settings.batch_wait_ms / 1000.0
        self._batcher: Batcher[str] = Batcher(  # questions -> vectors
            self.encoder.encode, settings.batch_max_size, wait, settings.queue_max, "encoder", on_batch
        )
        # Searches run in one thread, one batch of concurrent queries at a time, which FAISS
        # splits over DUPQ_THREADS OpenMP threads. OpenMP's thread count is a per-thread setting,
        # so it is set in the searcher's own thread. One OpenMP thread was measured too: a lone
        # query 2 to 3 ms faster, but 115 to 121 /duplicates per second at 16 and 64 clients
        # instead of 160 to 185 (flat index of 100,000, bench/service.py).
        self._searcher: Batcher[tuple[np.ndarray, int, Scope]] = Batcher(  # (vector, k, scope) -> matches
            self._search,
            settings.batch_max_size,
            wait,
            settings.queue_max,
            "searcher",
            initializer=functools.partial(faiss.omp_set_num_threads, self.threads),
        )

    @classmethod
    def build(
        cls,
        settings: Settings,
        encoder: QuestionEncoder,
        stores: Stores,
        on_batch: Callable[[int], None] | None = None,
        progress: bool = False,
        status: Callable[[str], None] = lambda step: None,
        stopping: threading.Event | None = None,
    ) -> Engine:
        """The slow part of start-up: re-embed what another model version embedded (taking what
        ``dupq reembed`` staged), bring a replica's copy level with its PostgreSQL store, load the
        index (its snapshot, or the one ``dupq reembed`` staged) or rebuild it, seed a new store
        (:func:`seeding_due`), warm the encoder up. ``progress`` shows bars; ``status`` is told how
        far the long steps are, in a line (for ``/ready``'s 503). Once ``stopping`` is set, the
        re-embedding, the wait for another replica's, a replica's copy of the store (left as it
        was), the index rebuild and the seeding end at their next step with
        :class:`StartupStopped` (a seeding stopped, or killed, is done again from the top at the
        next start)."""
        step = _stoppable(status, stopping)
        store, primary, follower = stores.local, stores.primary, None
        if primary is not None:
            primary.claim_model(encoder.version)  # before re-embedding: replicas of an old model stop writing
            done = None
            if any(version != encoder.version for version in primary.model_versions()):  # else no lock to wait for
                reembeds = f"the replica that re-embeds the stored questions with model {encoder.version}"
                with primary.reembedding(functools.partial(_waiting, reembeds, "re-embedding", step, [])):
                    done = _reembed(settings, encoder, primary, progress, step)
                if done is not None:  # after the lock: the others need not wait for it
                    remove_staged_rows(primary, encoder.version)  # used, or of no use once it is re-embedded
            follower = Follower(primary, store, encoder.version)
            try:
                copied = follower.prepare(step)
            except ModelMismatch as err:  # another replica re-embedded meanwhile
                raise StartupError(f"the store holds vectors of model {err}, not {encoder.version}") from err
        else:
            done, copied = _reembed(settings, encoder, store, progress, step), False
        tag = index_tag(encoder, primary)
        staged = None
        # Re-embedded now, here or (a replica's copy) by another replica: the index dupq reembed staged
        # for the new vectors, if any, is worth more than a rebuild.
        if (done is not None or copied) and staged_index_path(settings.data_dir, encoder.version).is_file():
            step("loading the index staged by dupq reembed")
            params, taken = index_params(settings), done.taken_keys if done is not None else np.empty(0, np.int64)
            staged = load_staged_index(settings.data_dir, encoder.version, tag, params, store, taken)
        if staged is not None:
            index, generation = staged, -1
        else:
            distrust = "stored questions were re-embedded" if done is not None else None
            distrust = "this replica copied the whole store" if copied else distrust
            index, generation = _load_index(settings, tag, encoder.dim, store, distrust, status=step)
        remove_staged(settings.data_dir, encoder.version)  # used, or of no use once the store is re-embedded
        engine = cls(settings, encoder, store, index, generation, on_batch, primary, follower)
        if generation < 0:  # rebuilt or staged: snapshot it now; a caught-up snapshot waits for the next one
            engine.save_snapshot()
        if settings.seed_file and seeding_due(stores.truth):
            if primary is None:
                engine._seed(settings.seed_file, progress, step)
            else:  # replicas started together on an empty store: one seeds it, the others find it seeded
                with primary.seeding(
                    functools.partial(_waiting, "the replica that seeds the store", "seeding", step, [])
                ):
                    if seeding_due(primary):
                        engine._seed(settings.seed_file, progress, step)
                engine._follow_own_write()  # what another replica seeded, here before /ready says 200
        for _ in range(3):
            encoder.encode(["Is the encoder warm yet?"])
        logger.info("ready: model %s, %s index of %d questions", encoder.full_name, index.kind, len(index))
        return engine

    # Life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._batcher.start()
        self._searcher.start()
        with self._lock.read():
            due = self.index.due()
        self._schedule_rebuilds(due)
        if self.follower is not None:
            self._following = threading.Thread(
                target=self.follower.run, args=(self._stopping, self.settings.feed_poll_s), name="follower", daemon=True
            )
            self._following.start()
        if self.settings.snapshot_interval_s > 0:
            self._snapshotter = asyncio.get_running_loop().create_task(self._snapshot_loop(), name="snapshots")

    async def stop(self) -> None:
        if self._snapshotter is not None:
            self._snapshotter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._snapshotter
        self._stopping.set()  # a rebuild in progress gives up at its next chunk; the old index stays
        for batcher in (self._batcher, self._searcher):
            await batcher.stop()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, functools.partial(self._rebuilder.shutdown, wait=True))
        if self._following is not None:
            await loop.run_in_executor(None, self._following.join)
        try:  # the store is whole whatever happens here, and the next start catches up from it
            self.save_snapshot()
        except OSError as err:  # a full disk, say: said in a line
            logger.error("index snapshot not written at shutdown (%s); the next start catches up with the store", err)
        except Exception:
            logger.exception("index snapshot not written at shutdown; the next start catches up with the store")
        self._workers.shutdown(wait=True)
        self.stores.close()

    def save_snapshot(self) -> None:
        """Write the index snapshot if the store changed since the last one. The index is streamed
        to the file (the page cache) under the read lock, so writes wait meanwhile and searches do
        not; the file is synced after the lock is released."""
        with self._snapshot_write, contextlib.ExitStack() as stack:  # the file is removed unless committed
            with self._lock.read():
                generation = self.store.generation()
                if generation == self._snapshot_generation and not self._changes:
                    return
                started = time.monotonic()
                file = stack.enter_context(SnapshotFile(self.snapshot_path))
                meta = self.index.write_to(file)
                size = len(self.index)
                self._changes = 0
            held = time.monotonic() - started
            file.commit({**meta, "tag": self.tag, "generation": generation})
            self._snapshot_generation = generation
        release_memory()
        logger.info(
            "index snapshot written (%d questions, %.1f s, of which %.1f s with writes held)",
            size,
            time.monotonic() - started,
            held,
        )

    async def _snapshot_loop(self) -> None:
        """Snapshot the index every ``snapshot_interval_s`` while the store changes, or as soon as
        ``snapshot_changes`` questions have been added or deleted since the last one, so that a
        restart after a crash replays only the changes since then. It is written from a worker
        thread (:meth:`save_snapshot`): searches go on, writes wait while the index is streamed."""
        interval, changes = self.settings.snapshot_interval_s, self.settings.snapshot_changes
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, interval))
            if time.monotonic() - last < interval and not (changes and self._changes >= changes):
                continue
            last = time.monotonic()
            try:
                await self._run(self.save_snapshot)
                if self.primary is not None:
                    await self._run(self.primary.prune_feed, self.settings.feed_retention_s)
            except StoreUnavailable as err:
                logger.warning("the change feed was not pruned: %s", err)
            except OSError as err:  # a full disk, say: said in a line at each try, not a traceback
                logger.error("index snapshot not written (%s); the next one will try again", err)
            except Exception:
                logger.exception("index snapshot failed; the next one will try again")

    def _schedule_rebuilds(self, namespaces: Sequence[str]) -> None:
        """Queue a background :meth:`NamespacedIndex.rebuild` for each namespace that needs one
        and has none queued or running."""
        with self._rebuilds_lock:
            fresh = [ns for ns in namespaces if ns not in self._rebuilds]
            if self._stopping.is_set():
                return
            self._rebuilds.update(fresh)
            for namespace in fresh:
                self._rebuilder.submit(self._rebuild, namespace)

    async def wait_rebuilds(self) -> None:
        """Return once no index rebuild is queued or running (``dupq index`` waits so that the
        snapshot it leaves holds the structure each namespace's size calls for)."""
        loop = asyncio.get_running_loop()
        while self._rebuilds:
            await loop.run_in_executor(None, lambda: self._rebuilder.submit(lambda: None).result())

    def _rebuild(self, namespace: str) -> None:
        try:
            if self.index.rebuild(namespace, self._lock.read, self._lock.write, self._stopping.is_set):
                with self._lock.write():
                    self._changes += 1  # the next snapshot saves the new structure
                release_memory()  # the old index's
        except Exception:
            logger.exception("index rebuild of namespace %r failed; the old index stays", namespace)
            return
        finally:
            with self._rebuilds_lock:
                self._rebuilds.discard(namespace)
        with self._lock.read():
            due = self.index.due([namespace])
        self._schedule_rebuilds(due)  # writes during the rebuild may have made another one due

    def _seed(self, path: Path, progress: bool, status: Callable[[str], None]) -> None:
        """Seed the store from ``path``, recording in it that a seeding began and that it ended:
        one that did not end (stopped through ``status``, or the process killed) is done again
        from the top at the next start, its questions upserted under the same ids."""
        parsed, skipped = _read_seed(self.settings, path)
        if skipped:
            logger.warning(describe_skipped(f"seed file {path}", skipped))
        items = [NewQuestion.of(q.id or f"seed-{n}", q.text, q.namespace, q.metadata) for n, q in enumerate(parsed, 1)]
        truth = self.stores.truth
        again = " again (the last seeding did not end)" if truth.meta(SEEDING) == "started" else ""
        logger.info("seeding the store%s with %d questions from %s", again, len(items), path)
        truth.set_meta(SEEDING, "started")
        with tqdm(total=len(items), desc="seeding", unit="question", disable=not progress) as bar:
            for start in range(0, len(items), 1024):
                status(f"seeding the store: {start:,} of {len(items):,} questions")
                chunk = items[start : start + 1024]
                self._write(chunk, self.encoder.encode([q.text for q in chunk]))
                bar.update(len(chunk))
        truth.set_meta(SEEDING, "done")

    # Operations -------------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.encoder.full_name

    @property
    def threshold(self) -> float:
        return self.encoder.threshold if self.settings.threshold is None else self.settings.threshold

    @property
    def queue_depth(self) -> int:
        return self._batcher.depth + self._searcher.depth

    def index_size(self) -> int:
        return len(self.index)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._workers, fn, *args)

    async def encode(self, texts: list[str]) -> np.ndarray:
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
        return self.encoder.probability(similarities)

    async def add(self, items: Sequence[NewQuestion]) -> tuple[list[str], int]:
        """Upsert questions; an item with an empty id gets a generated one. Durable on return."""
        items = [item if item.id else dataclasses.replace(item, id=f"q-{uuid.uuid4().hex}") for item in items]
        vectors = await self.encode([item.text for item in items])
        # The same id twice in one request: the last one wins, as if sent one after the other.
        last = {item.id: i for i, item in enumerate(items)}
        keep = sorted(last.values())
        await self._run(self._write, [items[i] for i in keep], vectors[keep])
        return [item.id for item in items], self.index_size()

    def _write(self, items: list[NewQuestion], vectors: np.ndarray) -> None:
        if self.primary is not None:
            self.primary.upsert(items, vectors, self.encoder.version)
            self._follow_own_write()
            return
        namespaces = [item.namespace for item in items]
        with self._lock.write():
            old, new = self.store.upsert(items, vectors, self.encoder.version)
            self.index.remove(old)
            self.index.add(np.array(new, dtype=np.int64), vectors, namespaces)
            self._changes += len(old) + len(new)
            due = self.index.due(list(dict.fromkeys(namespaces)))
        if due:
            self._schedule_rebuilds(due)

    def _follow_own_write(self) -> None:
        """After a write committed in PostgreSQL: apply the feed up to it here, so that this
        replica's next read sees it. Should the store vanish in between, or this replica's copy
        have no room left, the write stands (it is committed) and the follower applies it once the
        store is back, or there is room."""
        assert self.follower is not None
        try:
            self.follower.follow()
        except (StoreUnavailable, StoreFull) as err:
            logger.warning("a write was committed but is not yet in this replica's index: %s", err)

    def _apply_feed(self, batch: FeedBatch) -> Applied:
        """Apply a batch of the change feed to the local copy and the index, together."""
        with self._lock.write():
            applied = self.store.apply_feed(batch, self.encoder.version)
            for namespace in applied.dropped:
                self.index.drop(namespace)
            self.index.remove(applied.removed)
            if applied.added:
                keys = np.array([key for key, _, _ in applied.added], dtype=np.int64)
                vectors = np.frombuffer(b"".join(v for _, _, v in applied.added), dtype=np.float32)
                self.index.add(keys, vectors.reshape(len(keys), self.encoder.dim), [ns for _, ns, _ in applied.added])
            self._changes += applied.count
            due = self.index.due(list(dict.fromkeys(ns for _, ns, _ in applied.added)))
        if due:
            self._schedule_rebuilds(due)
        return applied

    @property
    def problem(self) -> str | None:
        """Why this replica must not serve (it met another model's vectors in the store)."""
        return self.follower.problem if self.follower is not None else None

    def feed_lag(self) -> float | None:
        """Seconds since this replica last knew it was level with its store (None: no PostgreSQL)."""
        return self.follower.lag() if self.follower is not None else None

    async def get(self, qid: str) -> StoredQuestion | None:
        return await self._run(self.store.get, qid)

    async def delete(self, qid: str) -> bool:
        return await self.delete_ids([qid]) == 1

    async def delete_ids(self, ids: Sequence[str]) -> int:
        """Delete questions by id, in one transaction; unknown ids are ignored. Durable on return."""
        return await self._run(self._delete_ids, list(dict.fromkeys(ids)))

    def _delete_ids(self, ids: list[str]) -> int:
        if self.primary is not None:
            n = len(self.primary.delete_ids(ids))
            self._follow_own_write()
            return n
        with self._lock.write():
            removed = self.store.delete_ids(ids)
            self.index.remove(removed)
            self._changes += len(removed)
            due = self.index.due(list(dict.fromkeys(ns for _, ns in removed)))
        if due:
            self._schedule_rebuilds(due)
        return len(removed)

    async def delete_namespace(self, namespace: str) -> int:
        """Delete every question of a namespace, in one transaction. Durable on return."""
        return await self._run(self._delete_namespace, namespace)

    def _delete_namespace(self, namespace: str) -> int:
        if self.primary is not None:
            n = self.primary.delete_namespace(namespace)
            self._follow_own_write()
            return n
        with self._lock.write():
            n = self.store.delete_namespace(namespace)
            self.index.drop(namespace)
            self._changes += n
            return n

    async def duplicates(self, texts: list[str], k: int, scope: Scope | None = None) -> list[list[Match]]:
        vectors = await self.encode(texts)
        scope = scope or Scope()
        matches: list[list[Match]] = await self._searcher.submit([(v, k, scope) for v in vectors])
        return matches

    async def duplicates_of(self, qid: str, k: int) -> tuple[StoredQuestion, list[Match]] | None:
        """The duplicates of a stored question within its namespace, from its stored vector,
        itself left out; None if there is no such question."""
        found = await self._run(self.store.vector_of, qid)
        if found is None:
            return None
        question, vector = found
        scope = Scope(question.namespace, exclude_keys=(question.key,))
        (matches,) = await self._searcher.submit([(vector, k, scope)])
        return question, matches

    def _search(self, queries: list[tuple[np.ndarray, int, Scope]]) -> list[list[Match]]:
        """One index search per namespace for a batch of plain queries from concurrent requests
        (for a flat index one matrix product instead of one pass over all vectors per query), one
        each for a query with a filter or exclusions. The filter's keys are read under the read
        lock, so that they and the index agree."""
        raw: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0), np.zeros(0, np.int64))] * len(queries)
        plain: dict[str, list[int]] = {}
        with self._lock.read():
            for i, (vector, k, scope) in enumerate(queries):
                if scope.plain:
                    plain.setdefault(scope.namespace, []).append(i)
                    continue
                allow = None
                if scope.conditions is not None:
                    allow = self.store.filter_keys(scope.namespace, scope.conditions)
                deny = np.concatenate(
                    [self.store.keys_of(scope.exclude_ids, scope.namespace), np.array(scope.exclude_keys, np.int64)]
                )
                scores, keys = self.index.search(scope.namespace, vector[None, :], k, allow, deny)
                raw[i] = (scores[0], keys[0])
            for namespace, rows in plain.items():
                k_most = max(queries[i][1] for i in rows)
                scores, keys = self.index.search(namespace, np.stack([queries[i][0] for i in rows]), k_most)
                for j, i in enumerate(rows):
                    raw[i] = (scores[j], keys[j])
            wanted = {int(x) for _, keys in raw for x in keys if x >= 0}
            found = self.store.by_keys(sorted(wanted))
        results = []
        for (_, k, _), (row_scores, row_keys) in zip(queries, raw, strict=True):
            matches = []
            for score, key in zip(row_scores[:k], row_keys[:k], strict=True):
                question = found.get(int(key))
                if question is not None:
                    similarity = float(min(1.0, max(-1.0, score)))
                    matches.append(Match(question.id, question.text, similarity, question.namespace, question.metadata))
            results.append(matches)
        return results

    async def page(
        self, namespace: str | None, after: tuple[str, int] | None, limit: int
    ) -> list[tuple[StoredQuestion, int]]:
        return await self._run(self.store.page, namespace, after, limit)

    async def groups(
        self, namespace: str, threshold: float, min_size: int, conditions: Conditions | None
    ) -> list[Group]:
        """Disjoint groups of duplicates among the stored questions of a namespace (those that
        pass ``conditions``), largest first: see :func:`app.groups.find_groups`."""
        return await self._run(self._groups, namespace, threshold, min_size, conditions)

    def _groups(self, namespace: str, threshold: float, min_size: int, conditions: Conditions | None) -> list[Group]:
        # The vectors are read from the store in one transaction: no lock is held while the groups
        # are found (seconds), and writes go on meanwhile.
        keys = self.store.filter_keys(namespace, conditions) if conditions is not None else None
        ids, vectors = self.store.namespace_vectors(namespace, keys)
        with self._grouping:
            found = find_groups(vectors, threshold, min_size, threads=self.threads)
        return [Group(ids[rep], [ids[m] for m in members]) for rep, members in found]

    async def add_feedback(self, pairs: Sequence[Feedback]) -> int:
        """Store moderators' labelled pairs; pairs that name stored questions get their texts.
        Raises :class:`UnknownIds` (nothing stored) when an id names no question."""
        return await self._run(self._add_feedback, pairs)

    def _add_feedback(self, pairs: Sequence[Feedback]) -> int:
        resolved, unknown = [], []
        for n, pair in enumerate(pairs):
            texts = []
            for field, qid, text in (("1", pair.id1, pair.question1), ("2", pair.id2, pair.question2)):
                if qid is None:
                    texts.append(text)
                    continue
                found = self.store.get(qid)
                if found is None:
                    unknown.append((("pairs", n, f"id{field}"), qid))
                texts.append(found.text if found else "")
            resolved.append(dataclasses.replace(pair, question1=texts[0], question2=texts[1]))
        if unknown:
            raise UnknownIds(unknown)
        return self.stores.truth.add_feedback(resolved, self.encoder.version)

    def token_counts(self, texts: list[str]) -> list[int]:
        """How many tokens the encoder reads of each text (after truncation to max_tokens)."""
        return [len(ids) for ids in self.encoder.token_ids(texts)]


def release_memory() -> None:
    """Hand the C heap's free memory back to the system (glibc's ``malloc_trim``). An index freed
    by a rebuild, and the buffers of a snapshot or of a bulk load, are freed into glibc's arenas,
    which keep them: without this, a service loaded with 100,000 questions over HTTP stayed about
    140 MiB larger than the same service started from its snapshot (docs/benchmarks.md)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  # glibc only (not musl)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def _stoppable(status: Callable[[str], None], stopping: threading.Event | None) -> Callable[[str], None]:
    """``status``, which first ends start-up with :class:`StartupStopped` once ``stopping`` is set."""

    def step(text: str) -> None:
        if stopping is not None and stopping.is_set():
            raise StartupStopped(f"asked to stop while {text}")
        status(text)

    return step


def _waiting(holder: str, lock: str, status: Callable[[str], None], told: list[bool]) -> None:
    """While another replica holds a lock of the store (``lock``: what it is for): say so, in the
    log once."""
    step = f"waiting for {holder}"
    if not told:
        logger.warning("%s (another replica holds the store's %s lock)", step, lock)
        told.append(True)
    status(step)


def _reembed(
    settings: Settings, encoder: QuestionEncoder, store: Store, progress: bool, status: Callable[[str], None]
) -> Reembedded | None:
    """Re-embed the stored questions of other model versions, taking the vectors that ``dupq
    reembed`` staged for this model where their questions did not change; None if there were none."""
    stale = sum(n for v, n in store.model_versions().items() if v != encoder.version)
    if not stale:
        return None
    staged: Staged | None
    if isinstance(store, PostgresStore):
        staged = StagedRows.find(store, encoder.version, encoder.dim)
    else:
        staged = StagedVectors.find(settings.data_dir, encoder.version, encoder.dim)
    of = f", taking the vectors staged in {staged.name}" if staged is not None else ""
    logger.warning("re-embedding %d stored questions with model %s%s", stale, encoder.version, of)

    def put(rows: Sequence[TextRow], vectors: np.ndarray, encoded: np.ndarray) -> None:
        store.set_embeddings([row[0] for row in rows], vectors, encoder.version)

    so_far = 0
    try:
        with tqdm(total=stale, desc="re-embedding", unit="question", disable=not progress) as bar:

            def advanced(n: int) -> None:
                nonlocal so_far
                so_far += n
                bar.update(n)
                status(f"re-embedding the stored questions with model {encoder.version}: {so_far:,} of {stale:,}")

            done = reembed(encoder, store, staged, put, advanced)
    finally:
        if staged is not None:
            staged.close()
    logger.warning(
        "re-embedded %d questions in %.1f s: %d staged, %d encoded",
        done.staged + done.encoded,
        done.seconds,
        done.staged,
        done.encoded,
    )
    return done


def index_params(settings: Settings) -> IndexParams:
    return IndexParams(settings.index_kind, settings.hnsw_from, settings.hnsw_m, ef_search=settings.hnsw_ef_search)


def _load_index(
    settings: Settings,
    tag: str,
    dim: int,
    store: QuestionStore,
    distrust: str | None,
    status: Callable[[str], None] = lambda step: None,
) -> tuple[NamespacedIndex, int]:
    """The index, from its snapshot caught up with the store, or rebuilt from the store; and the
    store generation of the snapshot on disk (-1: none usable). ``distrust``: why no snapshot
    can be caught up (vectors replaced in place, a replica's copy made anew), if so."""
    params = index_params(settings)
    _remove_old_snapshots(settings.data_dir)
    try:
        if distrust is not None:  # the snapshot cannot tell which vectors changed
            raise SnapshotError(distrust)
        index = NamespacedIndex.load(_snapshot_path(settings), tag, params, dim)
        if (generation := int(index.snapshot_meta.get("generation", -1))) > store.generation():
            # A store's generation only grows: this one is older than what the snapshot holds (one
            # copied back from a backup), whose rows deleted since would not be caught up.
            raise SnapshotError(f"the snapshot is of generation {generation}, the store of {store.generation()}")
    except SnapshotError as why:
        logger.info("rebuilding the index from the store (%s)", why)
    else:
        logger.info("index snapshot loaded: %d questions", len(index))
        if generation != store.generation():
            # Written before the last changes (a crash, or changes since the last periodic
            # snapshot): replay them from the store instead of rebuilding everything.
            started = time.monotonic()
            added, removed = _catch_up(index, store, int(index.snapshot_meta.get("max_key", -1)))
            logger.info(
                "index caught up with the store: %d added, %d removed since the snapshot, in %.1f s",
                added,
                removed,
                time.monotonic() - started,
            )
        return index, generation
    index = NamespacedIndex(dim, params)
    sizes = store.namespace_sizes()
    index.expect(sizes)  # each namespace built in the structure its size calls for
    started = time.monotonic()
    for keys, vectors, namespaces in store.iter_vectors():
        index.add(keys, vectors, namespaces)
        status(f"rebuilding the index from the store: {len(index):,} of {sum(sizes.values()):,} questions")
    logger.info("index rebuilt: %d questions in %.1f s", len(index), time.monotonic() - started)
    return index, -1


def _catch_up(index: NamespacedIndex, store: QuestionStore, max_key: int) -> tuple[int, int]:
    """Bring a snapshot holding every key up to ``max_key`` level with the store: add the rows
    written since (their keys are larger: keys only grow), remove the keys deleted since."""
    added = 0
    for keys, vectors, namespaces in store.iter_vectors(after=max_key):
        index.add(keys, vectors, namespaces)
        added += len(keys)
    stored = store.keys(upto=max_key)
    gone: list[tuple[int, str]] = []
    for namespace, live in index.live():
        live = live[live <= max_key]
        # isin picks a lookup table over the key range when it is small enough: linear time.
        gone += [(int(key), namespace) for key in live[~np.isin(live, stored)]]
    index.remove(gone)
    return added, len(gone)
