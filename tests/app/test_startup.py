"""Start-up: snapshots, rebuilds, a changed model, seeding, and a bad model directory."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.engine import StartupError
from app.main import create_app

from ..conftest import build_tiny_model
from .conftest import make_settings, wait_ready


def test_restart_uses_the_snapshot_and_rebuilds_a_stale_one(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tiny_model_dir, tmp_path)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        client.post(
            "/questions", json={"questions": [{"id": "a", "text": "How old are you?"}, {"id": "b", "text": "Why?"}]}
        )
    caplog.set_level(logging.INFO)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert "index snapshot loaded: 2 questions" in caplog.text
        assert (
            client.post("/duplicates", json={"question": "How old are you?", "k": 1}).json()["matches"][0]["id"] == "a"
        )
    # The store moves on without the snapshot (as after a kill -9): the snapshot is stale.
    from app.store import QuestionStore

    store = QuestionStore(tmp_path / "questions.sqlite3", dim=24)
    store.delete("b")
    store.close()
    caplog.clear()
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert "rebuilding the index from the store (snapshot is stale" in caplog.text
        assert client.get("/ready").json()["index_size"] == 1


def test_another_model_reembeds_or_refuses(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with TestClient(create_app(make_settings(tiny_model_dir, data))) as client:
        wait_ready(client)
        client.post("/questions", json={"questions": [{"id": "a", "text": "How old are you?"}]})
    other = build_tiny_model(tmp_path / "other", seed=1, version_prefix="other")
    with (
        pytest.raises(StartupError, match="embedded by model"),
        TestClient(create_app(make_settings(other, data, on_model_change="refuse"))),
    ):
        pass
    with TestClient(create_app(make_settings(other, data))) as client:
        wait_ready(client)
        match = client.post("/duplicates", json={"question": "How old are you?", "k": 1}).json()["matches"][0]
        assert match["id"] == "a" and match["similarity"] == pytest.approx(1.0, abs=1e-5)  # vectors of the new model


def test_seed_file_fills_an_empty_store_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    seed = tmp_path / "seed.tsv"
    seed.write_text("s1\tHow old are you?\nWhy is the sky blue?\n\n", encoding="utf-8")
    settings = make_settings(tiny_model_dir, tmp_path / "data", seed_file=seed)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert client.get("/ready").json()["index_size"] == 2
        assert client.get("/questions/s1").json()["text"] == "How old are you?"
        client.delete("/questions/s1")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert client.get("/ready").json()["index_size"] == 1  # not seeded again


def test_a_bad_model_directory_fails_start_up_with_its_reason(tmp_path: Path) -> None:
    with (
        pytest.raises(StartupError, match="does not exist"),
        TestClient(create_app(make_settings(tmp_path / "none", tmp_path))),
    ):
        pass


def test_hnsw_service(tiny_model_dir: Path, tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tiny_model_dir, tmp_path, index_kind="hnsw"))) as client:
        wait_ready(client)
        client.post(
            "/questions",
            json={
                "questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(["How old are you?", "Why?", "Where?"])]
            },
        )
        client.delete("/questions/q0")
        found = client.post("/duplicates", json={"question": "How old are you?", "k": 5}).json()
        assert "q0" not in {m["id"] for m in found["matches"]} and found["index_size"] == 2
        assert client.get("/info").json()["index_kind"] == "hnsw"
