"""The lean /similarity path answers exactly as FastAPI's route would, and valid requests take it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import app.fastpath
from app.main import create_app
from tests.app.conftest import make_settings, serving, wait_ready

JSON = {"content-type": "application/json"}
VALID: list[tuple[bytes, dict[str, str]]] = [
    (b'{"question1": "How old are you?", "question2": "What is your age?"}', JSON),
    (b'{"question1": " How old are you? ", "question2": "How old are you?", "threshold": 0.5}', JSON),
    (b'{"question1": "a", "question2": "b", "threshold": null}', {"content-type": "application/json; charset=utf-8"}),
    ('{"question1": "¿Qué edad tienes?", "question2": "caf\\u00e9"}'.encode(), JSON),
]
INVALID: list[tuple[bytes, dict[str, str]]] = [
    (b"", JSON),
    (b"not json", JSON),
    (b"[1, 2]", JSON),
    (b"\xff\xfe\x00", JSON),
    (b'{"question1": "only one"}', JSON),
    (b'{"question1": "a", "question2": "b", "extra": 1}', JSON),
    (b'{"question1": "   ", "question2": "b"}', JSON),
    (b'{"question1": 5, "question2": "b"}', JSON),
    (b'{"question1": "a", "question2": "b", "threshold": 2}', JSON),
    (b'{"question1": "a", "question2": "b", "threshold": NaN}', JSON),  # Python's json reads NaN
    (b'{"question1": "a", "question2": "b", "threshold": -Infinity}', JSON),
    (b'{"question1": "' + b"x" * 201 + b'", "question2": "b"}', JSON),  # over max_question_chars
]
OTHER_TYPES: list[tuple[bytes, dict[str, str]]] = [
    (VALID[0][0], {}),  # FastAPI refuses a body without a content type
    (VALID[0][0], {"content-type": "text/plain"}),
    (VALID[0][0], {"content-type": "application/vnd.api+json"}),
]


@pytest.fixture
def clients(tiny_model_dir: Path, tmp_path: Path) -> Iterator[tuple[TestClient, TestClient]]:
    limits: dict[str, Any] = {"max_batch": 8, "max_question_chars": 200}
    fast = create_app(make_settings(tiny_model_dir, tmp_path / "fast", **limits))
    plain = create_app(make_settings(tiny_model_dir, tmp_path / "plain", fast_path=False, **limits))
    with TestClient(fast) as f, TestClient(plain) as p:
        wait_ready(f)
        wait_ready(p)
        yield f, p


@pytest.fixture
def replays(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The bodies the lean path handed on to FastAPI."""
    handed_on: list[bytes] = []
    original = app.fastpath._replay

    def spy(body: bytes, receive: Any) -> Any:
        handed_on.append(body)
        return original(body, receive)

    monkeypatch.setattr(app.fastpath, "_replay", spy)
    return handed_on


def _answer(client: TestClient, body: bytes, headers: dict[str, str]) -> tuple[int, str | None, bytes]:
    response = client.post("/similarity", content=body, headers=headers)
    return response.status_code, response.headers.get("content-type"), response.content


@pytest.mark.parametrize("case", VALID + INVALID + OTHER_TYPES)
def test_the_lean_path_answers_as_fastapi_does(
    clients: tuple[TestClient, TestClient], case: tuple[bytes, dict[str, str]]
) -> None:
    fast, plain = clients
    assert _answer(fast, *case) == _answer(plain, *case)


def test_valid_requests_take_the_lean_path_and_invalid_ones_fastapi(
    clients: tuple[TestClient, TestClient], replays: list[bytes]
) -> None:
    fast, _ = clients
    for body, headers in VALID:
        assert fast.post("/similarity", content=body, headers=headers).status_code == 200
    assert replays == []
    for body, headers in INVALID:
        assert fast.post("/similarity", content=body, headers=headers).status_code == 422
    assert replays == [body for body, _ in INVALID]
    metrics = fast.get("/metrics").text
    assert f'dupq_requests_total{{method="POST",route="/similarity",status="200"}} {len(VALID)}.0' in metrics
    assert f'dupq_requests_total{{method="POST",route="/similarity",status="422"}} {len(INVALID)}.0' in metrics


def test_the_lean_path_keeps_the_api_key_and_the_body_cap(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_model_dir, tmp_path / "data", api_key="s3cret", max_body_bytes=1024)
    with serving(settings) as client:
        body = VALID[0][0]
        assert client.post("/similarity", content=body, headers=JSON).status_code == 401
        auth = {**JSON, "authorization": "Bearer s3cret"}
        assert client.post("/similarity", content=body, headers=auth).status_code == 200
        big = b'{"question1": "' + b"x" * 2000 + b'", "question2": "b"}'
        too_large = client.post("/similarity", content=big, headers=auth)
        assert too_large.status_code == 413 and "1024" in too_large.json()["detail"]


def test_nan_and_infinity_are_a_422_that_names_them(clients: tuple[TestClient, TestClient]) -> None:
    for client in clients:
        body = b'{"question1": NaN, "question2": "b", "threshold": Infinity}'
        response = client.post("/similarity", content=body, headers=JSON)
        assert response.status_code == 422
        assert {(e["loc"][-1], e["input"]) for e in response.json()["detail"]} == {
            ("question1", "nan"),
            ("threshold", "inf"),
        }


def test_an_unexpected_failure_is_a_json_500_on_both_paths(
    clients: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(pairs: Any) -> Any:
        raise RuntimeError("encoder exploded")

    for client in clients:
        monkeypatch.setattr(client.app.state.engine, "similarity", broken)  # type: ignore[attr-defined]
        # The same running app, with the 500 answered instead of raised in the test.
        response = TestClient(client.app, raise_server_exceptions=False).post(
            "/similarity", content=VALID[0][0], headers=JSON
        )
        assert response.status_code == 500
        assert response.json() == {"detail": "internal server error; the service log has the details"}
        assert "encoder exploded" not in response.text
