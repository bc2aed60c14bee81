"""Dynamic batching: concurrent requests share one call of a batch function.

The engine runs two batchers: one turns questions into vectors (one encoder call), the other
turns query vectors into matches (one index search, a matrix product instead of one pass over the
index per request). Requests queue their items; one worker takes everything waiting (up to
``max_size`` items) and runs the function once in its own thread; while it runs, the next batch
gathers. Under load (the previous batch served several requests) the worker also waits up to
``max_wait`` for more to join a batch that is not full; a lone request never waits. The queue is
bounded: when it is full a request fails at once with :class:`Overloaded` instead of waiting
without end. When a batch of several requests fails, each request is run again alone, so an error
reaches only the request that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Results = Any  # a sequence with one entry per item (a list, or an array with one row per item)


class Overloaded(RuntimeError):
    """The queue is full; the client should retry later."""


class Batcher(Generic[Item]):
    def __init__(
        self,
        run: Callable[[list[Item]], Results],
        max_size: int,
        max_wait: float,
        max_queue: int,
        name: str = "batcher",
        on_batch: Callable[[int], None] | None = None,
        initializer: Callable[[], object] | None = None,
    ) -> None:
        """``initializer`` runs once in the worker thread that will run every batch (settings
        that are per thread, such as OpenMP's thread count)."""
        self._run_batch = run
        self.max_size = max_size
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.name = name
        self._on_batch = on_batch or (lambda n: None)
        self._pending: deque[tuple[Sequence[Item], asyncio.Future[Results]]] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=initializer)
        self._worker: asyncio.Task[None] | None = None
        self._last_requests = 0  # requests in the previous batch: >1 means requests are arriving together

    @property
    def depth(self) -> int:
        """Items waiting."""
        return self._queued

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for _, future in self._pending:
            if not future.done():
                future.set_exception(Overloaded("shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, items: Sequence[Item]) -> Results:
        """The results for ``items``, in order, computed in a batch shared with concurrent callers."""
        if self._queued + len(items) > self.max_queue and self._queued > 0:
            raise Overloaded(f"{self._queued} items are waiting for the {self.name}")
        future: asyncio.Future[Results] = asyncio.get_running_loop().create_future()
        self._pending.append((items, future))
        self._queued += len(items)
        self._wake.set()
        return await future

    def _take(self) -> list[tuple[Sequence[Item], asyncio.Future[Results]]]:
        taken: list[tuple[Sequence[Item], asyncio.Future[Results]]] = []
        size = 0
        while self._pending and (not taken or size + len(self._pending[0][0]) <= self.max_size):
            items, future = self._pending.popleft()
            self._queued -= len(items)
            if future.cancelled():
                continue  # the client went away
            taken.append((items, future))
            size += len(items)
        return taken

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                if self._queued < self.max_size and self.max_wait > 0 and self._last_requests > 1:
                    # Under load, wait a moment for more requests to join; a lone request goes at once.
                    await asyncio.sleep(self.max_wait)
                batch = self._take()
                if not batch:
                    continue
                self._last_requests = len(batch)
                items = [item for chunk, _ in batch for item in chunk]
                self._on_batch(len(items))
                try:
                    results = await loop.run_in_executor(self._executor, self._run_batch, items)
                except Exception as err:
                    if len(batch) > 1:
                        await self._one_by_one(batch)
                    else:
                        logger.exception("%s failed on a request of %d items", self.name, len(items))
                        _fail(batch[0][1], err)
                    continue
                start = 0
                for chunk, future in batch:
                    if not future.done():
                        future.set_result(results[start : start + len(chunk)])
                    start += len(chunk)

    async def _one_by_one(self, batch: list[tuple[Sequence[Item], asyncio.Future[Results]]]) -> None:
        """A batch of several requests failed: run each request's items alone, so that a bad one
        (one that validation let through) fails by itself and its batch companions still get
        their results."""
        loop = asyncio.get_running_loop()
        logger.warning("%s failed on a batch of %d requests; running each alone", self.name, len(batch))
        for items, future in batch:
            if future.done():
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, list(items))
            except Exception as err:
                logger.exception("%s failed on a request of %d items", self.name, len(items))
                _fail(future, err)
            else:
                if not future.done():
                    future.set_result(results)


def _fail(future: asyncio.Future[Results], err: Exception) -> None:
    if not future.done():
        future.set_exception(err)
