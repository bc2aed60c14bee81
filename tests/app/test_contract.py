"""Every endpoint, field, limit and error of ../shared/CONTRACT.md, through the real app."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.schemas import QUESTION_PATTERN

from .conftest import engine_of, make_settings, serving

Q1, Q2 = "How old are you?", "What is your age?"


def test_similarity_fields_symmetry_and_reflexivity(client: TestClient) -> None:
    ab = client.post("/similarity", json={"question1": Q1, "question2": Q2}).json()
    ba = client.post("/similarity", json={"question1": Q2, "question2": Q1}).json()
    assert set(ab) == {"similarity", "is_duplicate", "probability", "threshold", "model"}
    assert ab["similarity"] == ba["similarity"] and -1 <= ab["similarity"] <= 1
    assert ab["is_duplicate"] == (ab["similarity"] >= ab["threshold"])
    assert 0 <= ab["probability"] <= 1 and ab["model"].startswith("tiny-test+")
    same = client.post("/similarity", json={"question1": Q1, "question2": "  " + Q1 + " "}).json()
    assert same["similarity"] == pytest.approx(1.0, abs=1e-5) and same["is_duplicate"]


def test_threshold_override_and_monotonic_probability(client: TestClient) -> None:
    low = client.post("/similarity", json={"question1": Q1, "question2": Q2, "threshold": -1.0}).json()
    high = client.post("/similarity", json={"question1": Q1, "question2": Q2, "threshold": 1.0}).json()
    assert low["is_duplicate"] and low["threshold"] == -1.0
    assert not high["is_duplicate"] or high["similarity"] >= 1.0
    batch = client.post(
        "/similarity/batch",
        json={"pairs": [{"question1": Q1, "question2": q} for q in (Q1, Q2, "Why is the sky blue?")]},
    ).json()
    order = np.argsort([r["similarity"] for r in batch["results"]])
    assert np.all(np.diff([batch["results"][i]["probability"] for i in order]) >= 0)


def test_similarity_batch_in_request_order(client: TestClient) -> None:
    pairs = [
        {"question1": Q1, "question2": Q2},
        {"question1": Q2, "question2": Q1},
        {"question1": "Where are you from?", "question2": "Where are you going?"},
    ]
    body = client.post("/similarity/batch", json={"pairs": pairs, "threshold": 0.5}).json()
    assert body["threshold"] == 0.5 and len(body["results"]) == 3
    single = client.post("/similarity", json=pairs[2]).json()
    assert body["results"][2]["similarity"] == single["similarity"]
    assert body["results"][0]["similarity"] == body["results"][1]["similarity"]


def test_embed_unit_rows_in_order(client: TestClient) -> None:
    body = client.post("/embed", json={"questions": [Q1, Q2, Q1]}).json()
    vectors = np.array(body["embeddings"])
    assert vectors.shape == (3, body["dim"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])


def test_questions_add_get_upsert_delete_and_duplicates(client: TestClient) -> None:
    empty = client.post("/duplicates", json={"question": Q1})
    assert empty.status_code == 200 and empty.json()["matches"] == [] and empty.json()["index_size"] == 0
    added = client.post(
        "/questions",
        json={"questions": [{"id": "q-17", "text": "How do I learn Python?"}, {"text": "Is Rust hard to learn?"}]},
    )
    assert added.status_code == 201
    ids = added.json()["ids"]
    assert ids[0] == "q-17" and ids[1] and added.json()["index_size"] == 2
    assert client.get("/questions/q-17").json() == {
        "id": "q-17",
        "text": "How do I learn Python?",
        "namespace": "default",
        "metadata": {},
    }
    found = client.post("/duplicates", json={"question": "How do I learn Python?", "k": 5}).json()
    assert found["matches"][0]["id"] == "q-17"
    assert found["matches"][0]["similarity"] == pytest.approx(1.0, abs=1e-5) and found["matches"][0]["is_duplicate"]
    sims = [m["similarity"] for m in found["matches"]]
    assert (
        sims == sorted(sims, reverse=True)
        and found["index_size"] == 2
        and set(found) == {"matches", "threshold", "index_size", "model", "namespace"}
    )
    # Upsert: same id, new text.
    client.post("/questions", json={"questions": [{"id": "q-17", "text": "Why is the sky blue?"}]})
    assert client.get("/questions/q-17").json()["text"] == "Why is the sky blue?"
    top = client.post("/duplicates", json={"question": "Why is the sky blue?", "k": 1}).json()
    assert top["matches"][0]["id"] == "q-17" and top["index_size"] == 2
    # min_similarity and threshold override.
    strict = client.post(
        "/duplicates", json={"question": "Why is the sky blue?", "k": 5, "min_similarity": 0.99999, "threshold": 1.0}
    ).json()
    assert [m["id"] for m in strict["matches"]] == ["q-17"] and strict["threshold"] == 1.0
    # Delete sticks.
    assert client.delete("/questions/q-17").status_code == 204
    assert client.get("/questions/q-17").status_code == 404
    assert client.delete("/questions/q-17").status_code == 404
    after = client.post("/duplicates", json={"question": "Why is the sky blue?", "k": 100}).json()
    assert "q-17" not in [m["id"] for m in after["matches"]] and after["index_size"] == 1


def test_duplicates_batch(client: TestClient) -> None:
    client.post(
        "/questions", json={"questions": [{"id": "a", "text": Q1}, {"id": "b", "text": "Why is the sky blue?"}]}
    )
    body = client.post("/duplicates/batch", json={"questions": ["Why is the sky blue?", Q1], "k": 1}).json()
    assert [r["matches"][0]["id"] for r in body["results"]] == ["b", "a"]
    assert body["index_size"] == 2 and "threshold" in body and "model" in body


def test_operations(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "index_size": 0}
    info = client.get("/info").json()
    for key in (
        "name",
        "version",
        "dim",
        "threshold",
        "max_tokens",
        "max_question_chars",
        "max_batch",
        "index_kind",
        "index_size",
    ):
        assert key in info
    assert info["max_batch"] == 8 and info["max_question_chars"] == 200 and info["index_kind"] == "auto"
    assert info["namespaces"] == 0 and info["index_structures"] == {"flat": 0, "hnsw": 0}
    client.post("/questions", json={"questions": [{"text": Q1, "namespace": "a"}, {"text": Q2, "namespace": "b"}]})
    assert client.get("/info").json()["namespaces"] == 2
    client.post("/similarity", json={"question1": Q1, "question2": Q2})
    text = client.get("/metrics").text
    assert 'dupq_requests_total{method="POST",route="/similarity",status="200"} 1.0' in text
    assert "dupq_request_duration_seconds_bucket" in text and "dupq_encoder_batch_size_count" in text
    assert "dupq_index_size 2.0" in text and "dupq_encoder_queue_depth" in text
    assert 'dupq_index_namespaces{structure="flat"} 2.0' in text
    assert 'dupq_index_namespaces{structure="hnsw"} 0.0' in text
    follower = engine_of(client).follower  # a replica on PostgreSQL: where it is in the store's feed
    if follower is None:
        assert "dupq_feed_position 0.0" in text  # no feed to follow
    else:
        assert f"dupq_feed_position {float(follower.position)}" in text and follower.position >= 3
        assert re.search(r"^dupq_feed_lag_seconds \d", text, re.M)
    schema = client.get("/openapi.json").json()
    assert schema["components"]["schemas"]["SimilarityRequest"]["properties"]["question1"]["maxLength"] == 200
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/similarity", {"question1": "   ", "question2": Q2}, "question1"),
        ("/similarity", {"question1": Q1}, "question2"),
        ("/similarity", {"question1": "x" * 201, "question2": Q2}, "question1"),
        ("/similarity", {"question1": 5, "question2": Q2}, "question1"),
        ("/similarity", {"question1": Q1, "question2": Q2, "threshold": 2}, "threshold"),
        ("/similarity/batch", {"pairs": []}, "pairs"),
        ("/similarity/batch", {"pairs": [{"question1": Q1, "question2": Q2}] * 9}, "pairs"),
        ("/embed", {"questions": [Q1] * 9}, "questions"),
        ("/embed", {"questions": "not a list"}, "questions"),
        ("/questions", {"questions": [{"id": "bad id!", "text": Q1}]}, "id"),
        ("/questions", {"questions": [{"id": "x" * 129, "text": Q1}]}, "id"),
        ("/questions", {"questions": [{"text": ""}]}, "text"),
        ("/duplicates", {"question": Q1, "k": 0}, "k"),
        ("/duplicates", {"question": Q1, "k": 101}, "k"),
        ("/duplicates/batch", {"questions": [Q1], "k": 1000}, "k"),
        # Wrong JSON types that pydantic's lax mode would have turned into numbers.
        ("/duplicates", {"question": Q1, "k": "5"}, "k"),
        ("/duplicates", {"question": Q1, "k": True}, "k"),
        ("/duplicates", {"question": Q1, "min_similarity": "0.5"}, "min_similarity"),
        ("/duplicates/batch", {"questions": [Q1], "k": "5"}, "k"),
        ("/similarity", {"question1": Q1, "question2": Q2, "threshold": "0.5"}, "threshold"),
        ("/similarity/batch", {"pairs": [{"question1": Q1, "question2": Q2}], "threshold": True}, "threshold"),
    ],
)
def test_invalid_input_is_a_422_naming_the_field(client: TestClient, path: str, body: dict, field: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert any(field in [str(x) for x in error["loc"]] for error in response.json()["detail"])


def test_numbers_may_be_written_either_way(client: TestClient) -> None:
    # JSON has one number type: 5.0 is an integer k, 1 a float threshold.
    assert client.post("/duplicates", json={"question": Q1, "k": 5.0, "threshold": 1}).status_code == 200
    assert client.post("/similarity", json={"question1": Q1, "question2": Q2, "threshold": 0}).status_code == 200


def test_bad_json_and_bad_path_ids(client: TestClient) -> None:
    response = client.post("/similarity", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "detail" in response.json()
    assert client.get("/questions/bad%20id").status_code == 422
    assert client.get("/questions/" + "a" * 129).status_code == 422
    assert client.get("/nowhere").json() == {"detail": "Not Found"}


def test_body_over_the_cap_is_413(tiny_model_dir: Path, tmp_path: Path) -> None:
    with serving(make_settings(tiny_model_dir, tmp_path, max_body_bytes=2048)) as client:
        big = {"question1": "a" * 3000, "question2": Q2}
        response = client.post("/similarity", json=big)
        assert response.status_code == 413 and "detail" in response.json()

        def chunks():  # no Content-Length: the cap is counted on the stream
            yield b'{"question1": "'
            for _ in range(10):
                yield b"a" * 500
            yield b'", "question2": "b"}'

        streamed = client.post("/similarity", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413


def test_api_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    with serving(make_settings(tiny_model_dir, tmp_path, api_key="s3cret")) as client:
        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
        body = {"question1": Q1, "question2": Q2}
        missing = client.post("/similarity", json=body)
        assert missing.status_code == 401 and "detail" in missing.json()
        assert client.post("/similarity", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/info").status_code == 401
        assert client.post("/similarity", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        # The scheme is case-insensitive (RFC 9110, 11.1); the key is not.
        assert client.post("/similarity", json=body, headers={"Authorization": "bearer  s3cret"}).status_code == 200
        for wrong in ("Bearer S3CRET", "Bearer s3cre", "Bearer s3crett", "Basic s3cret", "s3cret", "Bearers3cret"):
            assert client.post("/similarity", json=body, headers={"Authorization": wrong}).status_code == 401


def test_a_body_that_is_not_utf8_is_a_422(client: TestClient) -> None:
    response = client.post(
        "/similarity", content=b'{"question1": "\xff\xfe"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body"]
    assert response.json()["detail"][0]["msg"] == "request body is not valid UTF-8 (byte 0xff at offset 15)"


def test_a_body_that_json_cannot_read_is_a_422_that_says_why(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    cases = [
        (b"[" * 100_000 + b"]" * 100_000, "recursion limit exceeded"),
        (b'{"question": "q", "k": ' + b"9" * 5000 + b"}", "number out of range"),
        (b'{"question": "q", "k": 5', "EOF while parsing"),
    ]
    for body, why in cases:
        for path in ("/similarity", "/duplicates"):
            response = client.post(path, content=body, headers=headers)
            assert response.status_code == 422, response.text
            (error,) = response.json()["detail"]
            assert error["type"] == "json_invalid" and error["loc"] == ["body"]
            assert error["msg"].startswith("Invalid JSON: " + why), error["msg"]
            assert error.get("input") is None  # the body is not echoed back


def test_a_body_not_sent_as_json_is_a_422_that_names_the_content_type(client: TestClient) -> None:
    body = b'{"question1": "a", "question2": "b"}'
    # curl -d sends application/x-www-form-urlencoded; FastAPI reads only JSON bodies as JSON.
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"content-type": content_type} if content_type else {}
        response = client.post("/similarity", content=body, headers=headers)
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["header", "content-type"] and "must be application/json" in error["msg"]
        assert error["input"] == content_type
    # An empty body is a missing body, whatever its type.
    assert client.post("/similarity", content=b"").json()["detail"][0]["loc"] == ["body"]
    assert client.post("/similarity", content=body, headers={"content-type": "application/json"}).status_code == 200


def test_a_wrong_method_is_a_405_that_lists_every_method_of_the_path(client: TestClient) -> None:
    for method, path, allow in (
        ("OPTIONS", "/questions/q1", "GET, DELETE"),  # two routes serve this path
        ("PUT", "/questions", "GET, POST"),
        ("POST", "/health", "GET, HEAD"),
        ("GET", "/similarity", "POST"),
    ):
        response = client.request(method, path)
        assert response.status_code == 405 and response.json() == {"detail": "Method Not Allowed"}
        assert response.headers["allow"] == allow


def test_the_openapi_document_states_ranges_and_that_a_question_needs_a_character_not_white_space(
    client: TestClient,
) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    # Ranges are JSON Schema's own keywords, so generated clients and fuzzers see them.
    assert schemas["DuplicatesRequest"]["properties"]["k"]["maximum"] == 100
    assert '"ge"' not in json.dumps(document) and '"le"' not in json.dumps(document)
    question1 = schemas["SimilarityRequest"]["properties"]["question1"]
    assert question1["minLength"] == 1
    assert question1["pattern"] == QUESTION_PATTERN
    # Its class is exactly what str.strip() removes, and NUL, so the schema and the server agree on
    # every character; and a NUL anywhere fails it.
    pattern = re.compile(QUESTION_PATTERN)
    everything = (c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert all(bool(pattern.search(chr(c))) == (not chr(c).isspace() and c != 0) for c in everything)
    assert pattern.search(" a b ") and not pattern.search("a\0b") and not pattern.search("a \0")


def test_probes_answer_head_and_paths_are_not_redirected(client: TestClient) -> None:
    for path in ("/health", "/ready"):
        response = client.head(path)
        assert response.status_code == 200 and response.content == b""
    for method, path in (("GET", "/health/"), ("GET", "/questions/"), ("DELETE", "/questions/")):
        response = client.request(method, path, follow_redirects=False)
        assert response.status_code == 404 and response.json() == {"detail": "Not Found"}


def test_text_that_is_not_unicode_is_a_422_that_says_where(client: TestClient) -> None:
    # JSON may escape a lone surrogate ("\\ud800"), which no Unicode text holds: the body is refused.
    headers = {"content-type": "application/json"}
    cases = [
        ("/similarity", b'{"question1": "a \\ud800 b", "question2": "b"}', 24),
        ("/questions", b'{"questions": [{"id": "s1", "text": "\\udfff"}]}', 43),
        ("/embed", b'{"questions": ["ok", "\\ud83d"]}', 29),
    ]
    for path, body, column in cases:
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == 422, (path, response.text)
        (error,) = response.json()["detail"]
        assert error["type"] == "json_invalid" and error["loc"] == ["body"]
        assert f"at line 1 column {column}" in error["msg"] and "surrogate pair" in error["msg"], error["msg"]
    assert client.get("/questions/s1").status_code == 404
    # A surrogate pair is a valid character (U+1F600).
    ok = client.post("/similarity", content=b'{"question1": "\\ud83d\\ude00?", "question2": "b"}', headers=headers)
    assert ok.status_code == 200


def test_a_question_with_a_nul_character_is_a_422_on_either_store(client: TestClient) -> None:
    # JSON's "\\u0000" is a character, but PostgreSQL's text cannot hold it: every route refuses it in
    # a question, whichever the store, so that the two stores keep the same questions.
    for path, body, where, at in (
        (
            "/questions",
            {"questions": [{"id": "n1", "text": "Fine?"}, {"id": "n2", "text": "a\0b"}]},
            ["questions", 1],
            1,
        ),
        ("/similarity", {"question1": "Fine?", "question2": "  a\0b "}, ["question2"], 3),  # as sent
        ("/feedback", {"pairs": [{"question1": "\0", "question2": "Fine?", "is_duplicate": True}]}, ["pairs", 0], 0),
    ):
        response = client.post(path, json=body)
        assert response.status_code == 422, (path, response.text)
        (error,) = response.json()["detail"]
        assert error["loc"][: len(where) + 1] == ["body", *where], error
        assert f"must not contain the NUL character U+0000 (at character {at})" in error["msg"], error["msg"]
    assert client.get("/questions/n1").status_code == 404  # nothing of the batch was written


def test_nan_and_infinity_are_a_422_that_names_them(client: TestClient) -> None:
    body = b'{"question1": NaN, "question2": "b", "threshold": Infinity}'
    response = client.post("/similarity", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert {(e["loc"][-1], e["input"]) for e in response.json()["detail"]} == {
        ("question1", "nan"),
        ("threshold", "inf"),
    }


def test_a_body_over_the_cap_is_a_413_whether_declared_or_streamed(tiny_model_dir: Path, tmp_path: Path) -> None:
    with serving(make_settings(tiny_model_dir, tmp_path / "data", max_body_bytes=1024)) as client:
        big = b'{"question1": "' + b"x" * 2000 + b'", "question2": "b"}'
        declared = client.post("/similarity", content=big, headers={"content-type": "application/json"})
        assert declared.status_code == 413
        assert declared.json() == {"detail": "request body of 2035 bytes is over max_body_bytes = 1024 bytes"}
        chunks = (big[i : i + 500] for i in range(0, len(big), 500))  # no Content-Length: counted as it comes
        streamed = client.post("/similarity", content=chunks, headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert streamed.json() == {"detail": "request body over max_body_bytes = 1024 bytes"}


def test_an_unexpected_failure_is_a_json_500_that_shows_nothing_inside(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(pairs: object) -> object:
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(engine_of(client), "similarity", broken)
    # The same running app, with the 500 answered instead of raised in the test.
    response = TestClient(client.app, raise_server_exceptions=False).post(
        "/similarity", json={"question1": Q1, "question2": Q2}
    )
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error; the service log has the details"}
    assert "encoder exploded" not in response.text
    metrics = client.get("/metrics").text
    assert 'dupq_requests_total{method="POST",route="/similarity",status="500"} 1.0' in metrics


def test_valid_and_invalid_requests_are_counted_by_route_and_status(client: TestClient) -> None:
    for _ in range(3):
        client.post("/similarity", json={"question1": Q1, "question2": Q2})
    client.post("/similarity", json={"question1": " ", "question2": Q2})
    metrics = client.get("/metrics").text
    assert 'dupq_requests_total{method="POST",route="/similarity",status="200"} 3.0' in metrics
    assert 'dupq_requests_total{method="POST",route="/similarity",status="422"} 1.0' in metrics
