"""Dynamic batching: concurrent requests that need encoding share one encoder call.

Requests queue their questions; one worker takes everything waiting (up to ``max_size``
questions) and runs the encoder once in its own thread; while it runs, the next batch gathers.
Under load (the previous batch served several requests) the worker also waits up to
``max_wait`` for more to join a batch that is not full; a lone request never waits. The queue is bounded: when it is
full a request fails at once with :class:`Overloaded` instead of waiting without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

logger = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The encoder queue is full; the client should retry later."""


class EncodeBatcher:
    def __init__(
        self,
        encode: Callable[[list[str]], np.ndarray],
        max_size: int,
        max_wait: float,
        max_queue: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._encode = encode
        self.max_size = max_size
        self.max_wait = max_wait
        self.max_queue = max_queue
        self._on_batch = on_batch or (lambda n: None)
        self._pending: deque[tuple[list[str], asyncio.Future[np.ndarray]]] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._worker: asyncio.Task[None] | None = None
        self._last_requests = 0  # requests in the previous batch: >1 means requests are arriving together

    @property
    def depth(self) -> int:
        """Questions waiting for the encoder."""
        return self._queued

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="encode-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for _, future in self._pending:
            if not future.done():
                future.set_exception(Overloaded("shutting down"))
        self._executor.shutdown(wait=True)

    async def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors (N, D) of ``texts``, computed in a batch shared with concurrent callers."""
        if self._queued + len(texts) > self.max_queue and self._queued > 0:
            raise Overloaded(f"{self._queued} questions are waiting for the encoder")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        self._queued += len(texts)
        self._wake.set()
        return await future

    def _take(self) -> list[tuple[list[str], asyncio.Future[np.ndarray]]]:
        taken: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
        size = 0
        while self._pending and (not taken or size + len(self._pending[0][0]) <= self.max_size):
            texts, future = self._pending.popleft()
            self._queued -= len(texts)
            if future.cancelled():
                continue  # the client went away
            taken.append((texts, future))
            size += len(texts)
        return taken

    async def _run(self) -> None:
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
                texts = [t for ts, _ in batch for t in ts]
                self._on_batch(len(texts))
                try:
                    vectors = await loop.run_in_executor(self._executor, self._encode, texts)
                except Exception as err:  # hand the failure to every waiting request
                    logger.exception("encoder failed on a batch of %d questions", len(texts))
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                start = 0
                for ts, future in batch:
                    if not future.done():
                        future.set_result(vectors[start : start + len(ts)])
                    start += len(ts)
