"""The Python client's retries: what it sends again, and what it must not (a service scripted with
httpx's MockTransport: the failures of a real one cannot be made on demand)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

import app.client
from app.client import STORE_UNAVAILABLE, Client, DupqError

Step = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.client.time, "sleep", lambda seconds: None)


def _scripted(*steps: Step) -> tuple[Client, list[httpx.Request]]:
    """A client of a service that answers each request with the next step (the last one repeats)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return steps[min(len(seen), len(steps)) - 1](request)

    return Client("http://dupq", transport=httpx.MockTransport(handle)), seen


def _answer(status: int, body: object, retry_after: str | None = None) -> Step:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return lambda request: httpx.Response(status, json=body, headers=headers)


def _fail(error: type[httpx.TransportError]) -> Step:
    def step(request: httpx.Request) -> httpx.Response:
        raise error("scripted", request=request)

    return step


STORE_DOWN = _answer(503, {"detail": f"{STORE_UNAVAILABLE}: connection refused; retry later"}, "2")
NOT_READY = _answer(503, {"detail": "not ready: loading the model"}, "5")


def test_reads_are_sent_again_after_any_failure() -> None:
    ready = _answer(200, {"status": "ready", "index_size": 3})
    for failure in (_fail(httpx.ConnectError), _fail(httpx.ReadTimeout), NOT_READY, STORE_DOWN):
        client, seen = _scripted(failure, ready)
        assert client.ready()["index_size"] == 3 and len(seen) == 2


def test_an_add_sends_the_same_ids_again_so_a_repeat_cannot_store_a_question_twice() -> None:
    def stored(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"ids": [q["id"] for q in json.loads(request.content)["questions"]]})

    client, seen = _scripted(_fail(httpx.ReadTimeout), STORE_DOWN, stored)
    answer = client.add_questions([{"text": "How old are you?"}, {"id": "q-2", "text": "What is your age?"}])
    sent = [[q["id"] for q in json.loads(request.content)["questions"]] for request in seen]
    assert len(sent) == 3 and sent[0] == sent[1] == sent[2] == answer["ids"]
    assert sent[0][0].startswith("q-") and len(sent[0][0]) == 34 and sent[0][1] == "q-2"


def test_feedback_is_sent_again_only_where_the_service_surely_did_not_store_it() -> None:
    stored = _answer(201, {"stored": 1})
    pair = [{"question1": "How old are you?", "question2": "What is your age?", "is_duplicate": True}]
    for failure in (_fail(httpx.ConnectError), _fail(httpx.ConnectTimeout), NOT_READY, _answer(429, {}, "1")):
        client, seen = _scripted(failure, stored)
        assert client.feedback(pair) == 1 and len(seen) == 2
    client, seen = _scripted(_fail(httpx.ReadTimeout), stored)
    with pytest.raises(httpx.ReadTimeout):  # stored or not: the caller decides, not a blind repeat
        client.feedback(pair)
    assert len(seen) == 1
    client, seen = _scripted(STORE_DOWN, stored)
    with pytest.raises(DupqError) as err:
        client.feedback(pair)
    assert err.value.status == 503 and len(seen) == 1


def test_a_delete_repeated_after_an_unknown_outcome_that_finds_the_question_gone_is_done() -> None:
    gone = _answer(404, {"detail": "no question with id 'q-1'"})
    for failure in (_fail(httpx.ReadTimeout), STORE_DOWN):
        client, seen = _scripted(failure, gone)
        assert client.delete_question("q-1") is None and len(seen) == 2
    client, seen = _scripted(_fail(httpx.ConnectError), gone)  # never sent: the 404 is the answer
    with pytest.raises(DupqError) as err:
        client.delete_question("q-1")
    assert err.value.status == 404


def test_the_last_failure_is_raised_once_the_retries_are_spent() -> None:
    client, seen = _scripted(NOT_READY)
    client.retries = 2
    with pytest.raises(DupqError) as err:
        client.info()
    assert err.value.status == 503 and len(seen) == 3
