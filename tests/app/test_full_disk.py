"""No room left on the store's disk: a write is refused whole with a 507 that says so, the service
goes on serving, and takes writes again once there is room; a snapshot that cannot be written
leaves no partial file and does not stop a shutdown."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from app.engine import SNAPSHOT_FILE

from .conftest import engine_of, make_settings, serving

# A BEFORE INSERT trigger that answers as a PostgreSQL server whose disk is full does (SQLSTATE
# 53100, disk_full), where a test cannot fill the server's disk.
DISK_FULL = """
CREATE FUNCTION dupq_test_disk_full() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file "base/16384/16385": No space left on device' USING ERRCODE = 'disk_full';
END $$ LANGUAGE plpgsql;
CREATE TRIGGER dupq_test_disk_full BEFORE INSERT ON questions FOR EACH ROW EXECUTE FUNCTION dupq_test_disk_full();
"""


def _questions(n: int, start: int = 0) -> list[dict[str, str]]:
    text = " ".join(["how do I learn to play the guitar?"] * 25)
    return [{"id": f"q{i}", "text": f"Question {i}: {text}"} for i in range(start, n)]


def _no_room(client: TestClient, store_url: str | None, room: bool = False) -> None:
    """Leave the store no room for another page (SQLite: its page limit at the pages it has, the
    error a full disk gives, SQLITE_FULL; PostgreSQL: the server's answer to a full disk), or give
    it room again."""
    if store_url:
        with psycopg.connect(store_url, autocommit=True) as conn:
            if room:
                conn.execute("DROP TRIGGER dupq_test_disk_full ON questions")
            else:
                conn.execute(DISK_FULL)
        return
    writer: sqlite3.Connection = engine_of(client).store._writer  # type: ignore[attr-defined]
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {2**30 if room else pages}")


def test_a_write_with_no_room_left_is_a_507_that_writes_nothing_and_writes_go_on_once_there_is_room(
    tiny_model_dir: Path, tmp_path: Path, store_url: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tiny_model_dir, tmp_path / "data", store_url=store_url)
    with serving(settings) as client:
        assert client.post("/questions", json={"questions": _questions(10)}).status_code == 201
        _no_room(client, store_url)
        refused = client.post("/questions", json={"questions": _questions(110, start=10)})
        assert refused.status_code == 507, refused.text
        detail = refused.json()["detail"]
        assert detail.startswith("no room left for the question store ") and "nothing was written" in detail
        assert "a write was refused: no room left" in caplog.text
        assert client.get("/questions/q10").status_code == 404
        assert client.get("/ready").json()["index_size"] == 10
        found = client.post("/duplicates", json={"question": _questions(1)[0]["text"], "k": 1}).json()
        assert found["matches"][0]["id"] == "q0"  # reads go on
        _no_room(client, store_url, room=True)
        assert client.post("/questions", json={"questions": _questions(110, start=10)}).status_code == 201
        assert client.get("/ready").json()["index_size"] == 110
    with serving(settings) as client:  # all of it kept, nothing of the refused write twice
        assert client.get("/ready").json()["index_size"] == 110
        assert client.get("/questions/q109").json()["text"] == _questions(110)[109]["text"]


def test_the_openapi_document_names_the_507_of_every_write(tiny_model_dir: Path, tmp_path: Path) -> None:
    with serving(make_settings(tiny_model_dir, tmp_path / "data")) as client:
        paths = client.get("/openapi.json").json()["paths"]
    for path, method in [("/questions", "post"), ("/questions/delete", "post"), ("/feedback", "post")]:
        assert "nothing was written" in paths[path][method]["responses"]["507"]["description"]
    assert "507" not in paths["/duplicates"]["post"]["responses"]


def test_a_snapshot_with_no_room_leaves_no_partial_file_and_the_shutdown_goes_on(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The snapshot written at shutdown meets a full disk (its temporary file is /dev/full): the
    snapshot before it stays, the partial file is removed, the store is closed all the same, and
    the next start catches up with the store."""
    data = tmp_path / "data"
    settings = make_settings(tiny_model_dir, data)
    with serving(settings) as client:
        client.post("/questions", json={"questions": _questions(3)})
        engine_of(client).save_snapshot()
        before = (data / SNAPSHOT_FILE).read_bytes()
        client.post("/questions", json={"questions": _questions(5, start=3)})
        tmp = data / (SNAPSHOT_FILE + ".tmp")
        tmp.symlink_to("/dev/full")
    assert "index snapshot not written at shutdown" in caplog.text and "No space left on device" in caplog.text
    assert not tmp.is_symlink() and (data / SNAPSHOT_FILE).read_bytes() == before
    caplog.clear()
    caplog.set_level(logging.INFO)
    with serving(settings) as client:  # the store was closed: its lock is free
        assert "index caught up with the store: 2 added" in caplog.text
        assert client.get("/ready").json()["index_size"] == 5


def test_a_periodic_snapshot_with_no_room_is_said_in_a_line_and_written_once_there_is_room(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    tmp = data / (SNAPSHOT_FILE + ".tmp")
    with serving(make_settings(tiny_model_dir, data, snapshot_interval_s=0.2)) as client:
        tmp.symlink_to("/dev/full")
        client.post("/questions", json={"questions": _questions(3)})
        deadline = time.monotonic() + 5
        while "index snapshot not written" not in caplog.text:  # the next try of the snapshotter
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "index snapshot not written ([Errno 28] No space left on device); the next one will try" in caplog.text
        assert "Traceback" not in caplog.text and not tmp.is_symlink()
        caplog.set_level(logging.INFO)
        deadline = time.monotonic() + 5
        while "index snapshot written (3 questions" not in caplog.text:  # the disk has room again
            assert time.monotonic() < deadline
            client.post("/questions", json={"questions": _questions(3)})
            time.sleep(0.1)
