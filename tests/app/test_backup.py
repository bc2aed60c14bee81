"""Backups of the SQLite store (``dupq backup``, ``dupq restore``): taken beside a busy service,
one state of the store, restored into a data directory whose service finds every question."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.engine import SNAPSHOT_FILE, STORE_FILE

from ..conftest import CORPUS
from .conftest import engine_of, make_settings, serving
from .server import Server
from .test_durability import _text


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _failure(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 1
    return capsys.readouterr().err.strip()


def _ids(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM questions")]


def test_a_backup_beside_a_busy_service_is_one_state_of_the_store_and_restores_to_a_service_that_finds_it(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data, out, restored = tmp_path / "data", tmp_path / "backups" / "dupq.sqlite3", tmp_path / "restored"
    out.parent.mkdir()
    server = Server(tiny_model_dir, data, DUPQ_SNAPSHOT_CHANGES="40").start()  # snapshots as it goes
    try:
        corpus = [{"id": f"q{i}", "text": t, "namespace": "forum", "metadata": {"n": i}} for i, t in enumerate(CORPUS)]
        assert server.request("POST", "/questions", {"questions": corpus})[0] == 201
        feedback = {"pairs": [{"id1": "q0", "id2": "q1", "is_duplicate": True}]}
        assert server.request("POST", "/feedback", feedback)[0] == 201
        stop, written = threading.Event(), [0]

        def write() -> None:  # batches of five questions, each written in one transaction
            while not stop.is_set():
                n = written[0]
                batch = [{"id": f"b{n}-{i}", "text": _text(5 * n + i)} for i in range(5)]
                assert server.request("POST", "/questions", {"questions": batch})[0] == 201
                written[0] += 1

        writer = threading.Thread(target=write)
        writer.start()
        try:
            while written[0] < 20:
                time.sleep(0.01)
            before = written[0]
            copied = _run(capsys, "backup", "--data-dir", str(data), "--out", str(out))
            after = written[0]
            while written[0] < after + 5:  # writes go on after it
                time.sleep(0.01)
        finally:
            stop.set()
            writer.join()
    finally:
        server.stop()
    ids = _ids(out)
    batches = Counter(qid.split("-")[0] for qid in ids if qid.startswith("b"))
    assert set(batches.values()) == {5}  # each write in it whole, or not at all
    assert before <= len(batches) <= after + 1 and len(batches) < written[0]
    index = str(out) + ".faiss"  # the service's last snapshot, of an earlier state, caught up at the restore
    assert copied == {"out": str(out), "questions": len(ids), "feedback": 1, "bytes": out.stat().st_size} | {
        "index": index,
        "seconds": copied["seconds"],
    }
    assert not out.with_name(out.name + "-wal").exists()  # one file, whole by itself
    with closing(sqlite3.connect(out)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"

    put = _run(capsys, "restore", str(out), "--data-dir", str(restored))
    assert (put["questions"], put["feedback"], put["kept_aside"]) == (len(ids), 1, None)
    assert put["index"] == str(restored / SNAPSHOT_FILE)
    caplog.set_level(logging.INFO)
    with serving(make_settings(tiny_model_dir, restored)) as client:
        assert "index snapshot loaded: " in caplog.text and "rebuilding the index" not in caplog.text
        assert client.get("/ready").json()["index_size"] == len(ids)
        texts = {qid: _text(5 * int(qid[1:].split("-")[0]) + int(qid.split("-")[1])) for qid in ids if qid[0] == "b"}
        for chunk in range(0, len(texts), 100):  # each written question finds itself
            asked = list(texts.items())[chunk : chunk + 100]
            body = {"questions": [text for _, text in asked], "k": 1}
            answers = client.post("/duplicates/batch", json=body).json()["results"]
            assert [a["matches"][0]["id"] for a in answers] == [qid for qid, _ in asked]
        assert client.get("/questions/q3").json() == corpus[3]
        found = client.post("/duplicates", json={"question": CORPUS[3], "k": 1, "namespace": "forum"}).json()
        assert found["matches"][0]["id"] == "q3" and found["matches"][0]["similarity"] == pytest.approx(1.0)
        assert engine_of(client).store.count() == len(ids)


def test_a_restore_over_a_store_keeps_it_beside_puts_the_backup_s_index_in_its_place_and_refuses_a_running_service(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "data", tmp_path / "backup.sqlite3"
    settings = make_settings(tiny_model_dir, data)
    with serving(settings) as client:
        client.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(CORPUS)]})
        _run(capsys, "backup", "--data-dir", str(data), "--out", str(out))
        client.delete("/questions/q2")
        client.post("/questions", json={"questions": [{"id": "later", "text": "Is this after the backup?"}]})
        refused = _failure(capsys, "restore", str(out), "--data-dir", str(data), "--replace")
        assert refused.startswith("dupq restore: error: ") and "in use by another dupq process" in refused
    assert (data / SNAPSHOT_FILE).exists()
    refused = _failure(capsys, "restore", str(out), "--data-dir", str(data))
    assert refused.endswith(
        "holds a question store already: restore into an empty data directory, or give "
        "--replace (the store there is kept beside it)"
    )
    put = _run(capsys, "restore", str(out), "--data-dir", str(data), "--replace")
    aside = Path(put["kept_aside"])
    assert aside.parent == data and aside.name.startswith(STORE_FILE + ".before-restore-")
    assert sorted(_ids(aside)) == sorted(["later"] + [f"q{i}" for i in range(len(CORPUS)) if i != 2])  # whole
    assert not (data / (STORE_FILE + "-wal")).exists()
    assert (data / SNAPSHOT_FILE).read_bytes() == Path(str(out) + ".faiss").read_bytes()  # the backup's
    with serving(settings) as client:  # the backup's questions: q2 again, "later" not yet
        assert client.get("/ready").json()["index_size"] == len(CORPUS)
        assert client.get("/questions/later").status_code == 404
        found = client.post("/duplicates", json={"question": CORPUS[2], "k": 1}).json()["matches"]
        assert found[0]["id"] == "q2" and found[0]["similarity"] == pytest.approx(1.0)


def test_a_store_copied_back_by_hand_under_a_later_snapshot_gets_its_index_rebuilt(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store file copied back over a data directory whose index snapshot is of a later state (a
    question deleted since, say) is older than the snapshot: the index is rebuilt from it, where
    catching the snapshot up would have left the deleted question out of every search."""
    data, kept = tmp_path / "data", tmp_path / "kept.sqlite3"
    settings = make_settings(tiny_model_dir, data)
    with serving(settings) as client:
        client.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(CORPUS)]})
        engine_of(client).store._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
        shutil.copyfile(data / STORE_FILE, kept)
        client.delete("/questions/q2")
        engine_of(client).store._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
    for log in ("-wal", "-shm"):  # as a process's exit leaves it
        (data / (STORE_FILE + log)).unlink(missing_ok=True)
    shutil.copyfile(kept, data / STORE_FILE)
    caplog.set_level(logging.INFO)
    with serving(settings) as client:
        assert "rebuilding the index from the store (the snapshot is of generation 2, the store of 1)" in caplog.text
        found = client.post("/duplicates", json={"question": CORPUS[2], "k": 1}).json()["matches"]
        assert found[0]["id"] == "q2" and found[0]["similarity"] == pytest.approx(1.0)


def test_backup_and_restore_say_in_one_line_what_they_cannot_do(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _failure(capsys, "backup", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "b")) == (
        f"dupq backup: error: no question store at {tmp_path / 'none' / STORE_FILE}"
    )
    pg = _failure(capsys, "backup", "--store-url", "postgresql://dupq@db/dupq", "--out", str(tmp_path / "b"))
    assert pg.startswith("dupq backup: error: dupq backup copies a SQLite store;") and "pg_dump" in pg
    data = tmp_path / "data"
    with serving(make_settings(tiny_model_dir, data)) as client:
        client.post("/questions", json={"questions": [{"id": "q0", "text": CORPUS[0]}]})
        for name in (STORE_FILE, STORE_FILE + "-wal"):  # the live store would be replaced under the service
            over = _failure(capsys, "backup", "--data-dir", str(data), "--out", str(data / ".." / "data" / name))
            assert over.endswith("is a file of the store itself: write the backup elsewhere")
        assert client.get("/questions/q0").status_code == 200
    itself = _failure(capsys, "restore", str(data / STORE_FILE), "--data-dir", str(data), "--replace")
    assert itself.endswith("is a file of the store itself, not a backup of it")
    not_a_store = tmp_path / "notes.sqlite3"
    with closing(sqlite3.connect(not_a_store)) as conn:
        conn.execute("CREATE TABLE notes (x)")
    assert _failure(capsys, "restore", str(not_a_store), "--data-dir", str(tmp_path / "d")) == (
        f"dupq restore: error: {not_a_store} is not a dupq question store (no questions table)"
    )
    damaged = tmp_path / "damaged.sqlite3"
    damaged.write_bytes(b"not a database at all" * 100)
    assert _failure(capsys, "restore", str(damaged), "--data-dir", str(tmp_path / "d")) == (
        f"dupq restore: error: {damaged} cannot be read as a question store: file is not a database"
    )
    assert not (tmp_path / "d" / STORE_FILE).exists()


def test_a_damaged_store_is_a_start_up_failure_that_says_so_and_what_to_do(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "data", tmp_path / "backup.sqlite3"
    settings = make_settings(tiny_model_dir, data)
    with serving(settings) as client:
        many = [{"id": f"q{i}", "text": f"{_text(i)} " * 30} for i in range(200)]
        client.post("/questions", json={"questions": many})
        engine_of(client).store._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
        shutil.copyfile(data / STORE_FILE, out)
    for name in (SNAPSHOT_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm"):
        (data / name).unlink(missing_ok=True)
    with open(data / STORE_FILE, "r+b") as file:  # pages in the middle overwritten
        file.seek(file.seek(0, 2) // 2)
        file.write(b"\xff" * 3 * 16384)
    argv = ["serve", "--data-dir", str(data), "--model-dir", str(tiny_model_dir), "--port", "1"]
    capsys.readouterr()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # `dupq serve` sets up the process's logging
    try:
        assert main(argv) == 1  # before it listens
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    said = capsys.readouterr().err
    assert "cannot start: the question store is damaged (database disk image is malformed): restore a backup " in said
    assert "Traceback" not in said
    assert _run(capsys, "restore", str(out), "--data-dir", str(data), "--replace")["questions"] == 200
    with serving(settings) as client:
        assert client.get("/ready").json()["index_size"] == 200
