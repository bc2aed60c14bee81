"""Contract version 1.1, route by route: namespaces, metadata, filters, exclusions, the duplicates
of a stored question, listing, bulk delete, export, groups, /v1/embeddings, feedback, the page."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.middleware import OPEN_PATHS

from ..conftest import CORPUS
from .conftest import engine_of, make_settings, serving

SITES = {"site-a": CORPUS[:6], "site-b": CORPUS[6:]}


def _load(client: TestClient) -> None:
    """CORPUS over two namespaces, with metadata: status alternating open/closed, n its number."""
    for namespace, texts in SITES.items():
        items = [
            {
                "id": f"{namespace}-{i}",
                "text": text,
                "namespace": namespace,
                "metadata": {"status": "open" if i % 2 == 0 else "closed", "n": i, "answered": i % 3 == 0},
            }
            for i, text in enumerate(texts)
        ]
        assert client.post("/questions", json={"questions": items}).status_code == 201


def test_a_question_keeps_its_namespace_and_metadata(client: TestClient) -> None:
    item = {"id": "m1", "text": "How old are you?", "namespace": "site-a", "metadata": {"s": "x", "n": 1.5, "b": None}}
    assert client.post("/questions", json={"questions": [item]}).json()["ids"] == ["m1"]
    assert client.get("/questions/m1").json() == {k: item[k] for k in ("id", "text", "namespace", "metadata")}
    # An upsert replaces the metadata and may move the question to another namespace.
    moved = {"id": "m1", "text": "How old are you?", "namespace": "site-b"}
    client.post("/questions", json={"questions": [moved]})
    assert client.get("/questions/m1").json() == {**moved, "metadata": {}}
    found = client.post("/duplicates", json={"question": "How old are you?", "namespace": "site-a"}).json()
    assert found["matches"] == [] and found["namespace"] == "site-a"
    (match,) = client.post("/duplicates", json={"question": "How old are you?", "namespace": "site-b"}).json()[
        "matches"
    ]
    assert match["id"] == "m1" and match["namespace"] == "site-b" and match["metadata"] == {}


def test_a_search_never_crosses_a_namespace(client: TestClient) -> None:
    _load(client)
    for namespace, texts in SITES.items():
        found = client.post("/duplicates", json={"question": CORPUS[0], "k": 20, "namespace": namespace}).json()
        assert len(found["matches"]) == len(texts)
        assert {m["namespace"] for m in found["matches"]} == {namespace}
    # A v1 client sees the default namespace, which is empty here.
    assert client.post("/duplicates", json={"question": CORPUS[0]}).json()["matches"] == []
    batch = client.post("/duplicates/batch", json={"questions": CORPUS[:2], "namespace": "site-b", "k": 3}).json()
    assert all(m["namespace"] == "site-b" for r in batch["results"] for m in r["matches"])


def test_filters_return_k_matches_that_all_pass(client: TestClient) -> None:
    _load(client)
    query = {"question": CORPUS[0], "namespace": "site-a", "k": 3}
    opened = client.post("/duplicates", json={**query, "filter": {"status": "open"}}).json()["matches"]
    assert len(opened) == 3 and all(m["metadata"]["status"] == "open" for m in opened)
    both = client.post("/duplicates", json={**query, "filter": {"status": "open", "n": {"in": [0, 4, 5]}}}).json()
    assert sorted(m["id"] for m in both["matches"]) == ["site-a-0", "site-a-4"]
    # Numbers compare as numbers (2.0 is 2), booleans are not numbers, strings are not numbers.
    assert [m["id"] for m in client.post("/duplicates", json={**query, "filter": {"n": 2.0}}).json()["matches"]] == [
        "site-a-2"
    ]
    answered = client.post("/duplicates", json={**query, "k": 10, "filter": {"answered": True}}).json()["matches"]
    assert sorted(m["id"] for m in answered) == ["site-a-0", "site-a-3"]
    assert client.post("/duplicates", json={**query, "filter": {"n": "2"}}).json()["matches"] == []
    assert client.post("/duplicates", json={**query, "filter": {"nobody": 1}}).json()["matches"] == []
    # exclude_ids, alone and with a filter.
    excluded = client.post("/duplicates", json={**query, "k": 10, "exclude_ids": ["site-a-0", "site-a-1"]}).json()
    assert {m["id"] for m in excluded["matches"]} == {f"site-a-{i}" for i in range(2, 6)}
    both = client.post(
        "/duplicates", json={**query, "k": 10, "filter": {"status": "open"}, "exclude_ids": ["site-a-0"]}
    ).json()
    assert sorted(m["id"] for m in both["matches"]) == ["site-a-2", "site-a-4"]


def test_the_duplicates_of_a_stored_question_leave_it_out(client: TestClient) -> None:
    _load(client)
    answer = client.get("/questions/site-a-0/duplicates", params={"k": 3}).json()
    ids = [m["id"] for m in answer["matches"]]
    assert len(ids) == 3 and "site-a-0" not in ids and all(i.startswith("site-a-") for i in ids)
    assert answer["namespace"] == "site-a" and set(answer) == {
        "matches",
        "threshold",
        "index_size",
        "model",
        "namespace",
    }
    # The same as searching with the stored text (the vector is the stored one) minus the question.
    by_text = client.post(
        "/duplicates", json={"question": CORPUS[0], "namespace": "site-a", "k": 4, "exclude_ids": ["site-a-0"]}
    ).json()
    assert ids == [m["id"] for m in by_text["matches"]][:3]
    assert client.get("/questions/nope/duplicates").status_code == 404
    assert client.get("/questions/site-a-0/duplicates", params={"k": 0}).status_code == 422
    assert client.get("/questions/site-a-0/duplicates", params={"threshold": 1.0}).json()["threshold"] == 1.0


def test_listing_walks_every_question_once_while_others_write(client: TestClient) -> None:
    _load(client)
    client.post("/questions", json={"questions": [{"id": f"x{i}", "text": f"Question {i}?"} for i in range(8)]})
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/questions", params=params).json()
        seen += [q["id"] for q in page["questions"]]
        if len(seen) == 3:  # meanwhile: an upsert of one already seen, a delete, an add
            client.post("/questions", json={"questions": [{"id": "x0", "text": "Question zero again?"}]})
            client.delete("/questions/x7")
            client.post("/questions", json={"questions": [{"id": "x8", "text": "Question 8?"}]})
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:3] == ["x0", "x1", "x2"] and seen.count("x0") == 1
    assert set(seen) >= {f"x{i}" for i in range(7)} and "x7" not in seen
    assert client.get("/questions", params={"namespace": "site-b", "limit": 1000}).json()["next_cursor"] is None
    first = client.get("/questions", params={"namespace": "site-a", "limit": 2}).json()
    assert [q["metadata"]["n"] for q in first["questions"]] == [0, 1]
    # Cursors are checked: made up, or from another namespace, they are a 422 on `cursor`.
    for cursor in ("not-a-cursor", base64.urlsafe_b64encode(b"x").decode(), first["next_cursor"]):
        answer = client.get("/questions", params={"cursor": cursor})
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["query", "cursor"]
    assert client.get("/questions", params={"limit": 1001}).status_code == 422
    assert client.get("/questions", params={"namespace": "bad space"}).status_code == 422


def test_bulk_delete_by_ids_and_by_namespace(client: TestClient) -> None:
    _load(client)
    before = client.get("/ready").json()["index_size"]
    assert client.post("/questions/delete", json={"ids": ["site-a-0", "site-a-1", "unknown"]}).json() == {"deleted": 2}
    assert client.get("/questions/site-a-0").status_code == 404
    assert client.post("/questions/delete", json={"namespace": "site-b"}).json() == {"deleted": len(SITES["site-b"])}
    assert client.post("/duplicates", json={"question": CORPUS[7], "namespace": "site-b"}).json()["matches"] == []
    assert client.get("/ready").json()["index_size"] == before - 2 - len(SITES["site-b"])
    assert client.post("/questions/delete", json={"namespace": "empty"}).json() == {"deleted": 0}
    for body in ({}, {"ids": ["a"], "namespace": "b"}, {"ids": []}, {"ids": None}, {"ids": ["a"] * 9}):
        answer = client.post("/questions/delete", json=body)
        assert answer.status_code == 422, body


def test_export_streams_every_question_as_ndjson(client: TestClient) -> None:
    _load(client)
    answer = client.get("/export")
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in answer.text.splitlines()]
    assert len(rows) == len(CORPUS) and all(set(r) == {"id", "text", "namespace", "metadata"} for r in rows)
    only_b = [json.loads(line) for line in client.get("/export", params={"namespace": "site-b"}).text.splitlines()]
    assert [r["id"] for r in only_b] == [f"site-b-{i}" for i in range(len(SITES["site-b"]))]
    assert client.get("/export", params={"namespace": "nobody"}).text == ""


def test_groups_follow_the_contract_rule(client: TestClient) -> None:
    _load(client)
    engine = engine_of(client)
    for threshold, min_size in ((0.5, 2), (0.0, 2), (0.9, 1)):
        body = {"namespace": "site-a", "threshold": threshold, "min_size": min_size}
        answer = client.post("/groups", json=body).json()
        assert answer["threshold"] == threshold and answer["namespace"] == "site-a" and answer["model"]
        members = [i for g in answer["groups"] for i in g["ids"]]
        assert len(members) == len(set(members))  # disjoint
        sizes = [g["size"] for g in answer["groups"]]
        assert sizes == sorted(sizes, reverse=True) and all(s >= min_size for s in sizes)
        for group in answer["groups"]:
            assert group["ids"][0] == group["representative"] and group["size"] == len(group["ids"])
            vectors = {i: engine.store.vector_of(i)[1] for i in group["ids"]}  # type: ignore[index]
            rep = vectors[group["representative"]]
            assert all(float(rep @ v) >= threshold - 1e-6 for v in vectors.values())
    everything = client.post("/groups", json={"namespace": "site-a", "threshold": -1.0}).json()["groups"]
    assert len(everything) == 1 and everything[0]["size"] == len(SITES["site-a"])
    filtered = client.post("/groups", json={"namespace": "site-a", "threshold": -1.0, "filter": {"status": "open"}})
    assert sorted(filtered.json()["groups"][0]["ids"]) == ["site-a-0", "site-a-2", "site-a-4"]
    assert client.post("/groups", json={"namespace": "nobody"}).json()["groups"] == []
    assert client.post("/groups", json={"min_size": 0}).status_code == 422


def test_openai_embeddings_are_the_embed_vectors(client: TestClient) -> None:
    embed = np.array(client.post("/embed", json={"questions": CORPUS[:2]}).json()["embeddings"])
    answer = client.post("/v1/embeddings", json={"input": CORPUS[:2], "model": "anything", "user": "u"}).json()
    assert answer["object"] == "list" and answer["model"] and answer["usage"]["prompt_tokens"] > 0
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"]
    assert [d["index"] for d in answer["data"]] == [0, 1] and all(d["object"] == "embedding" for d in answer["data"])
    np.testing.assert_allclose(np.array([d["embedding"] for d in answer["data"]]), embed, atol=1e-6)
    one = client.post("/v1/embeddings", json={"input": CORPUS[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, embed[0], atol=1e-6)
    dim = embed.shape[1]
    assert client.post("/v1/embeddings", json={"input": "x", "dimensions": dim}).status_code == 200
    for body, where in (
        ({"input": "x", "dimensions": dim + 1}, ["body", "dimensions"]),
        ({"input": [[1, 2, 3]]}, ["body", "input", 0]),  # token arrays: send text
        ({"input": [1, 2, 3]}, ["body", "input", 0]),
        ({"input": 7}, ["body", "input"]),
        ({"input": ""}, ["body", "input"]),
        ({"input": ["How old are you?", " "]}, ["body", "input", 1]),
        ({"input": []}, ["body", "input"]),
        ({"input": "x", "encoding_format": "int8"}, ["body", "encoding_format"]),
    ):
        refused = client.post("/v1/embeddings", json=body)
        assert refused.status_code == 422, body
        # Each error once, where it is: not once per branch of "a text or a list of texts", under
        # pydantic's names for them ("function-after[_question(), str]", with a memory address).
        assert refused.json()["detail"][0]["loc"] == where, refused.json()
        assert all(
            not isinstance(part, str) or part.isidentifier() for e in refused.json()["detail"] for part in e["loc"]
        )
    assert client.post("/v1/embeddings", json={"input": 7}).json()["detail"][0]["msg"].startswith("a text or a list")


def test_feedback_is_kept_with_texts_for_stored_ids(client: TestClient) -> None:
    _load(client)
    pairs = [
        {"question1": "How old are you?", "question2": "What is your age?", "is_duplicate": True},
        {"id1": "site-a-2", "id2": "site-a-3", "is_duplicate": False},
        {"id1": "site-a-4", "question2": "How to learn Python?", "is_duplicate": True},
    ]
    assert client.post("/feedback", json={"pairs": pairs}).status_code == 201
    engine = engine_of(client)
    stored = list((engine.primary or engine.store).iter_feedback())
    assert [(f.question1, f.question2, f.is_duplicate) for _, f, _, _ in stored] == [
        ("How old are you?", "What is your age?", True),
        (CORPUS[2], CORPUS[3], False),
        (CORPUS[4], "How to learn Python?", True),
    ]
    assert all(version == engine_of(client).encoder.version for _, _, version, _ in stored)
    # An unknown id stores nothing, and is a 404 that says which one.
    missing = client.post(
        "/feedback", json={"pairs": [pairs[0], {"id1": "nope", "id2": "site-a-2", "is_duplicate": 1}]}
    )
    assert missing.status_code == 422  # is_duplicate must be a boolean
    missing = client.post(
        "/feedback", json={"pairs": [pairs[0], {"id1": "nope", "id2": "site-a-2", "is_duplicate": True}]}
    )
    assert missing.status_code == 404 and "pairs.1.id1" in missing.json()["detail"]
    assert len(list((engine.primary or engine.store).iter_feedback())) == 3
    for pair in (
        {"question1": "a?", "is_duplicate": True},
        {"question1": "a?", "id1": "x", "question2": "b?", "is_duplicate": True},
    ):
        assert client.post("/feedback", json={"pairs": [pair]}).status_code == 422


@pytest.mark.parametrize(
    ("item", "where"),
    [
        ({"text": "x?", "namespace": "bad space"}, ["body", "questions", 1, "namespace"]),
        ({"text": "x?", "namespace": ""}, ["body", "questions", 1, "namespace"]),
        ({"text": "x?", "metadata": {"a": {"b": 1}}}, ["body", "questions", 1, "metadata", "a"]),
        ({"text": "x?", "metadata": {"a": [1]}}, ["body", "questions", 1, "metadata", "a"]),
        ({"text": "x?", "metadata": {"a": "x" * 257}}, ["body", "questions", 1, "metadata", "a"]),
        ({"text": "x?", "metadata": {"bad key": 1}}, ["body", "questions", 1, "metadata", "bad key", "[key]"]),
        ({"text": "x?", "metadata": {"k" * 65: 1}}, ["body", "questions", 1, "metadata", "k" * 65, "[key]"]),
        ({"text": "x?", "metadata": {f"k{i}": i for i in range(33)}}, ["body", "questions", 1, "metadata"]),
        ({"text": "x?", "metadata": {f"k{i}": "v" * 200 for i in range(21)}}, ["body", "questions", 1, "metadata"]),
        ({"text": "x?", "metadata": [1, 2]}, ["body", "questions", 1, "metadata"]),
    ],
)
def test_bad_metadata_and_namespaces_are_a_422_that_names_them_and_store_nothing(
    client: TestClient,
    item: dict,
    where: list,  # type: ignore[type-arg]
) -> None:
    answer = client.post("/questions", json={"questions": [{"id": "good", "text": "A good one?"}, item]})
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == where, answer.json()
    assert client.get("/questions/good").status_code == 404  # the batch is stored whole or not at all


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"filter": {"a": [1]}}, ["body", "filter", "a"]),
        ({"filter": {"a": {"b": 1}}}, ["body", "filter", "a"]),
        ({"filter": {"a": {"in": []}}}, ["body", "filter", "a"]),
        ({"filter": {"a": {"in": [{"x": 1}]}}}, ["body", "filter", "a"]),
        ({"filter": "status"}, ["body", "filter"]),
        ({"exclude_ids": ["ok"] * 1001}, ["body", "exclude_ids"]),
        ({"exclude_ids": ["bad id"]}, ["body", "exclude_ids", 0]),
        ({"namespace": "a/b"}, ["body", "namespace"]),
    ],
)
def test_bad_search_options_are_a_422_that_names_them(
    client: TestClient,
    options: dict,
    where: list,  # type: ignore[type-arg]
) -> None:
    for path, body in (("/duplicates", {"question": "x?"}), ("/duplicates/batch", {"questions": ["x?"]})):
        answer = client.post(path, json={**body, **options})
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == where, answer.json()


def test_the_playground_is_one_page_with_no_external_assets(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text and "src=" not in page.text


def test_keys_cors_and_the_openapi_bearer_scheme(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(
        tiny_model_dir,
        tmp_path / "data",
        api_key="full-key",
        read_api_key="read-key",
        cors_origins="https://forum.example, https://desk.example",
    )
    full, read = {"Authorization": "Bearer full-key"}, {"Authorization": "Bearer read-key"}
    with serving(settings) as client:
        add = {"questions": [{"id": "k1", "text": "How old are you?"}]}
        assert client.post("/questions", json=add, headers=read).status_code == 403
        assert client.post("/questions", json=add, headers=full).status_code == 201
        for method, path, body in (
            ("POST", "/questions/delete", {"ids": ["k1"]}),
            ("DELETE", "/questions/k1", None),
            ("POST", "/feedback", {"pairs": [{"id1": "k1", "id2": "k1", "is_duplicate": True}]}),
        ):
            answer = client.request(method, path, json=body, headers=read)
            assert answer.status_code == 403 and "read-only" in answer.json()["detail"], path
        for method, path, body in (
            ("POST", "/similarity", {"question1": "a?", "question2": "b?"}),
            ("POST", "/embed", {"questions": ["a?"]}),
            ("POST", "/v1/embeddings", {"input": "a?"}),
            ("POST", "/duplicates", {"question": "a?"}),
            ("POST", "/duplicates/batch", {"questions": ["a?"]}),
            ("GET", "/questions/k1", None),
            ("GET", "/questions/k1/duplicates", None),
            ("GET", "/questions", None),
            ("GET", "/export", None),
            ("POST", "/groups", {}),
            ("GET", "/info", None),
        ):
            assert client.request(method, path, json=body, headers=read).status_code == 200, path
            assert client.request(method, path, json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        # CORS: a listed origin gets the headers, on a preflight (no key needed) and on answers.
        preflight = client.options(
            "/duplicates",
            headers={
                "Origin": "https://forum.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://forum.example"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        answer = client.get("/info", headers={**read, "Origin": "https://desk.example"})
        assert answer.headers["access-control-allow-origin"] == "https://desk.example"
        refused = client.get("/info", headers={"Origin": "https://desk.example"})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://desk.example"
        other = client.get("/info", headers={**read, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        # The document declares the Bearer scheme and needs it everywhere but the open paths.
        doc = client.get("/openapi.json").json()
        assert doc["components"]["securitySchemes"]["bearer"] == {
            "type": "http",
            "scheme": "bearer",
            "description": "DUPQ_API_KEY, or DUPQ_READ_API_KEY to read",
        }
        assert doc["paths"]["/duplicates"]["post"]["security"] == [{"bearer": []}]
        assert "security" not in doc["paths"]["/health"]["get"]
        # The 401 is documented exactly where the key is asked for.
        for path, operations in doc["paths"].items():
            for operation in operations.values():
                assert ("401" in operation["responses"]) == (path not in OPEN_PATHS), path
        assert {"/info", "/metrics", "/"} <= set(doc["paths"])


def test_a_read_key_without_a_full_key_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DUPQ_READ_API_KEY needs DUPQ_API_KEY"):
        make_settings(tiny_model_dir, tmp_path, read_api_key="r")


@pytest.mark.parametrize("snapshot", [True, False])
def test_namespaces_and_metadata_survive_a_restart_and_a_rebuild(
    tiny_model_dir: Path, tmp_path: Path, snapshot: bool
) -> None:
    settings = make_settings(tiny_model_dir, tmp_path / "data", max_batch=8)
    with serving(settings) as client:
        _load(client)
        before = client.post("/duplicates", json={"question": CORPUS[0], "namespace": "site-a", "k": 3}).json()
    if not snapshot:  # the index is rebuilt from the store alone
        for path in (tmp_path / "data").glob("index-*"):
            path.unlink()
    with serving(settings) as client:
        assert client.get("/info").json()["namespaces"] == 2
        after = client.post("/duplicates", json={"question": CORPUS[0], "namespace": "site-a", "k": 3}).json()
        assert after["matches"] == before["matches"]
        filtered = client.post(
            "/duplicates", json={"question": CORPUS[0], "namespace": "site-b", "filter": {"status": "closed"}}
        ).json()["matches"]
        assert {m["id"] for m in filtered} == {"site-b-1", "site-b-3", "site-b-5"}
        assert all(m["metadata"]["status"] == "closed" for m in filtered)
