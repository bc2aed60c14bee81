"""Every endpoint and error of CONTRACT v1 over real HTTP, from a `dupq serve` that cannot import
PyTorch or anything else of the train extra (tests/app/server.py)."""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from .server import BLOCKED_SERVE, Server

Q1, Q2 = "How old are you?", "What is your age?"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(
        tiny_model_dir,
        tmp_path_factory.mktemp("http"),
        DUPQ_API_KEY="s3cret",
        DUPQ_MAX_BATCH="4",
        DUPQ_MAX_QUESTION_CHARS="100",
        DUPQ_MAX_BODY_BYTES="2048",
    ).start()
    yield running
    running.stop()


KEY = {"authorization": "Bearer s3cret"}


def test_pairs_embeddings_and_the_duplicate_index(server: Server) -> None:
    status, body = server.request("POST", "/similarity", {"question1": Q1, "question2": Q2}, headers=KEY)
    assert status == 200 and set(body) == {"similarity", "is_duplicate", "probability", "threshold", "model"}
    status, batch = server.request(
        "POST", "/similarity/batch", {"pairs": [{"question1": Q1, "question2": Q2}] * 2, "threshold": 0.5}, headers=KEY
    )
    assert status == 200 and batch["threshold"] == 0.5 and batch["results"][0]["similarity"] == body["similarity"]
    status, embedded = server.request("POST", "/embed", {"questions": [Q1, Q2]}, headers=KEY)
    vectors = np.array(embedded["embeddings"])
    assert status == 200 and vectors.shape == (2, embedded["dim"])
    assert float(vectors[0] @ vectors[1]) == pytest.approx(body["similarity"], abs=1e-5)

    status, added = server.request(
        "POST", "/questions", {"questions": [{"id": "q-17", "text": Q1}, {"text": Q2}]}, headers=KEY
    )
    assert status == 201 and added["ids"][0] == "q-17" and added["index_size"] == 2
    assert server.request("GET", "/questions/q-17", headers=KEY) == (
        200,
        {"id": "q-17", "text": Q1, "namespace": "default", "metadata": {}},
    )
    status, found = server.request("POST", "/duplicates", {"question": Q1, "k": 1}, headers=KEY)
    assert status == 200 and [m["id"] for m in found["matches"]] == ["q-17"] and found["matches"][0]["is_duplicate"]
    status, both = server.request("POST", "/duplicates/batch", {"questions": [Q1, Q2], "k": 2}, headers=KEY)
    assert status == 200 and [len(r["matches"]) for r in both["results"]] == [2, 2]
    assert server.request("DELETE", "/questions/q-17", headers=KEY) == (204, None)
    assert server.request("GET", "/questions/q-17", headers=KEY)[0] == 404
    assert server.request("DELETE", "/questions/q-17", headers=KEY)[0] == 404


def test_operations(server: Server) -> None:
    assert server.request("GET", "/health") == (200, {"status": "ok"})  # open without the key
    status, ready = server.request("GET", "/ready")
    assert status == 200 and ready["status"] == "ready"
    status, info = server.request("GET", "/info", headers=KEY)
    assert status == 200 and (info["max_batch"], info["max_question_chars"], info["index_kind"]) == (4, 100, "auto")
    assert info["encoder_backend"] == "onnx"
    request = urllib.request.Request(server.url + "/metrics", headers=KEY)
    with urllib.request.urlopen(request, timeout=5) as response:
        assert 'dupq_requests_total{method="GET",route="/info",status="200"}' in response.read().decode()
    status, document = server.request("GET", "/openapi.json", headers=KEY)
    assert (
        status == 200 and document["components"]["schemas"]["EmbedRequest"]["properties"]["questions"]["maxItems"] == 4
    )
    assert server.request("GET", "/docs", headers=KEY)[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "where"),
    [
        ("POST", "/similarity", {"question1": "  ", "question2": Q2}, 422, ["body", "question1"]),
        ("POST", "/similarity", {"question1": "x" * 101, "question2": Q2}, 422, ["body", "question1"]),
        ("POST", "/similarity", {"question1": Q1, "question2": Q2, "threshold": 2}, 422, ["body", "threshold"]),
        ("POST", "/embed", {"questions": [Q1] * 5}, 422, ["body", "questions"]),
        ("POST", "/duplicates", {"question": Q1, "k": 0}, 422, ["body", "k"]),
        ("POST", "/duplicates", {"question": Q1, "k": "5"}, 422, ["body", "k"]),
        ("POST", "/questions", {"questions": [{"id": "a/b", "text": Q1}]}, 422, ["body", "questions", 0, "id"]),
        ("POST", "/similarity", b"{not json", 422, ["body"]),
        ("POST", "/similarity", b"x" * 3000, 413, None),
        ("GET", "/questions/a%2Fb", None, 404, None),
        ("GET", "/nowhere", None, 404, None),
        ("PUT", "/similarity", None, 405, None),
    ],
)
def test_errors_are_json_with_a_detail(
    server: Server, method: str, path: str, body: object, status: int, where: list | None
) -> None:  # type: ignore[type-arg]
    got, answer = server.request(method, path, body, headers=KEY)
    assert got == status and "detail" in answer, answer
    if where is not None:
        assert answer["detail"][0]["loc"] == where, answer


def test_the_api_key_guards_everything_but_the_probes_and_the_pages(server: Server) -> None:
    for path in ("/similarity", "/info", "/metrics", "/export"):
        method, body = ("POST", {"question1": Q1, "question2": Q2}) if path == "/similarity" else ("GET", None)
        status, answer = server.request(method, path, body)
        assert status == 401 and answer == {"detail": "missing or wrong API key (Authorization: Bearer <key>)"}
        assert server.request(method, path, body, headers={"authorization": "Bearer wrong"})[0] == 401
    assert server.request("GET", "/ready")[0] == 200
    # The pages a browser loads before it can send a key: the playground, Swagger and its document.
    for path in ("/", "/docs", "/openapi.json"):
        assert server.request("GET", path)[0] == 200, path


def test_the_docs_page_loads_nothing_from_outside_the_service(server: Server) -> None:
    """/docs is Swagger UI from files the package ships (FastAPI's loads it from a CDN, and the
    page stayed blank where the browser could not reach it), open without the key as the page is."""
    status, page = server.request("GET", "/docs")
    assert status == 200
    links = re.findall(rb"""(?:src|href)=["']([^"']+)["']""", page)
    assert sorted(links) == [b"/docs/favicon-32x32.png", b"/docs/swagger-ui-bundle.js", b"/docs/swagger-ui.css"]
    assert b"http" not in page.replace(b"window.location.origin", b"")
    for link, media_type, sign in [
        ("/docs/swagger-ui-bundle.js", "text/javascript", b"SwaggerUIBundle"),
        ("/docs/swagger-ui.css", "text/css", b".swagger-ui"),
        ("/docs/favicon-32x32.png", "image/png", b"\x89PNG"),
    ]:
        with urllib.request.urlopen(server.url + link, timeout=5) as response:
            assert response.status == 200 and response.headers.get_content_type() == media_type, link
            assert sign in response.read(), link
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=5)
    connection.request("GET", "/redoc")  # FastAPI's other page, ReDoc from a CDN, leads there
    answer = connection.getresponse()
    assert (answer.status, answer.getheader("location")) == (307, "/docs")
    connection.close()


def test_the_server_runs_where_training_packages_cannot_be_imported() -> None:
    # The guard of tests/app/server.py works: under it, importing PyTorch fails.
    probe = BLOCKED_SERVE.replace("from app.cli import main; sys.exit(main(sys.argv[1:]))", "import torch")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 1 and "import of torch halted" in result.stderr


def test_the_package_needs_no_training_package_to_serve() -> None:
    from importlib.metadata import requires

    base = [r for r in requires("dupq") or [] if "extra ==" not in r]
    names = {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in base}
    assert {"onnxruntime", "faiss-cpu", "fastapi"} <= names
    assert not names & {"torch", "onnx", "safetensors", "sentence-transformers", "scikit-learn", "matplotlib"}
