from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.engine import Engine
from app.main import create_app
from app.settings import Settings


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready after {timeout} s: {client.get('/ready').json()}")


@contextmanager
def serving(settings: Settings) -> Iterator[TestClient]:
    """A client of the app built from ``settings``, its lifespan running, once it is ready."""
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def engine_of(client: TestClient) -> Engine:
    """The engine of a ready app."""
    engine = client.app.state.service.engine  # type: ignore[attr-defined]
    assert engine is not None, "the app is not ready"
    return engine  # type: ignore[no-any-return]


def make_settings(model_dir: Path, data_dir: Path, **overrides: Any) -> Settings:
    return Settings(model_dir=model_dir, data_dir=data_dir, threads=1, log_json=False, **overrides)


@pytest.fixture
def client(tiny_model_dir: Path, tmp_path: Path, store_url: str | None) -> Iterator[TestClient]:
    """A ready service on each store in turn: SQLite, then PostgreSQL."""
    settings = make_settings(
        tiny_model_dir, tmp_path / "data", max_batch=8, max_question_chars=200, store_url=store_url
    )
    with serving(settings) as c:
        yield c
