"""The one path of every route with a JSON body (app/routing.py)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from app.deps import EngineDep
from app.routing import JsonRoute, is_json
from app.schemas import SimilarityRequest


@pytest.mark.parametrize(
    ("content_type", "json"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/vnd.api+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("application/jsonl", False),
        (None, False),
        ("", False),
    ],
)
def test_what_counts_as_a_json_body(content_type: str | None, json: bool) -> None:
    assert is_json(content_type) is json


def test_a_json_route_of_another_shape_is_refused_when_the_app_is_built() -> None:
    router = APIRouter(route_class=JsonRoute)
    with pytest.raises(TypeError, match=r"/x: a JsonRoute endpoint takes \(body, engine: EngineDep\), not \['body'\]"):

        @router.post("/x")
        async def no_engine(body: SimilarityRequest) -> dict[str, Any]:
            return {}

    with pytest.raises(TypeError, match="not \\['engine', 'body'\\]"):

        @router.post("/y")
        async def swapped(engine: EngineDep, body: SimilarityRequest) -> dict[str, Any]:
            return {}


def test_valid_bodies_of_every_json_flavour_are_answered(client: TestClient) -> None:
    body = '{"question1": "¿Qué edad tienes?", "question2": "caf\\u00e9", "threshold": null}'.encode()
    for content_type in ("application/json", "application/json; charset=utf-8", "application/vnd.api+json"):
        response = client.post("/similarity", content=body, headers={"content-type": content_type})
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        assert response.json()["threshold"] == 0.8


def test_a_request_body_is_validated_once_with_the_run_time_limits(client: TestClient) -> None:
    # The client fixture allows 200 characters and batches of 8.
    too_long = client.post("/similarity", json={"question1": "x" * 201, "question2": "y"})
    (error,) = too_long.json()["detail"]
    assert (error["type"], error["loc"]) == ("string_too_long", ["body", "question1"])
    assert error["msg"] == "question has 201 characters; at most max_question_chars = 200"
    assert error["input"] == "x" * 40 + "..."  # a long input is not echoed back whole
    # The length is that of the text as sent, as the document's maxLength counts it: white space
    # around it counts, though it is ignored.
    padded = client.post("/similarity", json={"question1": "x" * 195 + "\n" * 6, "question2": "y"})
    assert padded.json()["detail"][0]["msg"] == "question has 201 characters; at most max_question_chars = 200"
    assert client.post("/similarity", json={"question1": "x" * 194 + "\n" * 6, "question2": "y"}).status_code == 200
    too_many = client.post("/embed", json={"questions": ["a?"] * 9})
    (error,) = too_many.json()["detail"]
    assert (error["type"], error["loc"]) == ("too_long", ["body", "questions"])
    assert error["msg"] == "9 items; at most max_batch = 8 are allowed"
    # The batch's size is checked once its items are valid.
    both = client.post("/similarity/batch", json={"pairs": [{"question1": "x" * 201, "question2": "y"}] * 9})
    assert [tuple(e["loc"]) for e in both.json()["detail"]] == [("body", "pairs", i, "question1") for i in range(9)]
