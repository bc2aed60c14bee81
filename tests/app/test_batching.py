import asyncio
import threading

import numpy as np
import pytest

from app.batching import Batcher, Overloaded

from .conftest import engine_of


def test_concurrent_requests_share_one_encoder_call() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def encode(texts: list[str]) -> np.ndarray:
        gate.wait(5)  # the first call blocks until every request has queued behind it
        calls.append(len(texts))
        return np.array([[float(len(t))] for t in texts], dtype=np.float32)

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(encode, max_size=64, max_wait=0.001, max_queue=100)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["a"]))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(batcher.submit(["b" * i, "c"])) for i in range(1, 11)]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert calls == [1, 20]  # the 10 waiting requests were encoded together
    assert results[3][:, 0].tolist() == [3.0, 1.0]  # each caller gets its own rows, in order


def test_a_failing_request_does_not_fail_its_batch_companions() -> None:
    calls: list[list[str]] = []
    gate = threading.Event()

    def encode(texts: list[str]) -> np.ndarray:
        gate.wait(5)
        calls.append(list(texts))
        if "poison" in texts:
            raise ValueError("cannot encode 'poison'")
        return np.array([[float(len(t))] for t in texts], dtype=np.float32)

    async def scenario() -> list[object]:
        batcher = Batcher(encode, max_size=64, max_wait=0.001, max_queue=100)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["a"]))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(batcher.submit(items)) for items in (["bb"], ["poison", "c"], ["dddd"])]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    # One shared call failed; each of its three requests then ran alone.
    assert calls == [["a"], ["bb", "poison", "c", "dddd"], ["bb"], ["poison", "c"], ["dddd"]]
    assert isinstance(results[2], ValueError)
    assert [r[:, 0].tolist() for r in (results[0], results[1], results[3])] == [[1.0], [2.0], [4.0]]


def test_a_full_queue_refuses_at_once() -> None:
    gate = threading.Event()

    def encode(texts: list[str]) -> np.ndarray:
        gate.wait(5)
        return np.zeros((len(texts), 1), dtype=np.float32)

    async def scenario() -> None:
        batcher = Batcher(encode, max_size=4, max_wait=0.0, max_queue=4)
        batcher.start()
        running = asyncio.create_task(batcher.submit(["x"]))
        await asyncio.sleep(0.05)  # now inside the encoder
        queued = asyncio.create_task(batcher.submit(["a", "b", "c"]))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await batcher.submit(["d", "e"])
        gate.set()
        await asyncio.gather(running, queued)
        await batcher.stop()

    asyncio.run(scenario())


def test_overload_is_a_503_with_retry_after(client) -> None:  # type: ignore[no-untyped-def]
    engine = engine_of(client)

    async def refuse(texts: list[str]) -> np.ndarray:
        raise Overloaded("42 questions are waiting for the encoder")

    engine._batcher.submit = refuse
    response = client.post("/similarity", json={"question1": "a?", "question2": "b?"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "overloaded" in response.json()["detail"]


def test_the_initializer_runs_in_the_thread_that_runs_the_batches() -> None:
    # How the engine sets FAISS's OpenMP threads: that setting holds only in the thread that makes it.
    faiss = pytest.importorskip("faiss")
    seen: list[tuple[int, int]] = []

    def run(items: list[int]) -> np.ndarray:
        seen.append((threading.get_ident(), faiss.omp_get_max_threads()))
        return np.array(items)

    async def scenario() -> None:
        batcher = Batcher(run, 8, 0.0, 100, initializer=lambda: faiss.omp_set_num_threads(1))
        batcher.start()
        await batcher.submit([1])
        await batcher.submit([2])
        await batcher.stop()

    before = faiss.omp_get_max_threads()
    asyncio.run(scenario())
    assert seen[0] == seen[1] and seen[0][1] == 1
    assert faiss.omp_get_max_threads() == before  # this thread is untouched
