"""kill -9 right after 201s loses nothing, metadata and namespaces included, and an answered delete
stays done: a real server process, killed at a random moment, on each store (SQLite, PostgreSQL)."""

from __future__ import annotations

import random
import shutil
import socket
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from ..conftest import CORPUS
from .server import Server

# Words the tiny model's tokenizer knows: distinct word sequences give distinct vectors.
WORDS = sorted({w.strip("?").lower() for q in CORPUS for w in q.split()})


def _text(i: int) -> str:
    digits = []
    for _ in range(4):
        i, r = divmod(i, len(WORDS))
        digits.append(WORDS[r])
    return " ".join(digits) + "?"


def test_an_answer_cut_off_by_a_kill_is_a_lost_connection() -> None:
    # A kill after the status line, before the body: http.client raised IncompleteRead, which the
    # writer below did not catch, so a delete that was done (its answer cut) counted as not done,
    # and the restarted server held one question fewer than "acknowledged" (534 against 535).
    listener = socket.create_server(("127.0.0.1", 0))
    heads = [b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 404 Not Found\r\n"]

    def answer_in_part() -> None:
        for head in heads:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as request:  # read whole, or closing would reset the connection
                length = 0
                while (line := request.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request.read(length)
                conn.sendall(head + b"Content-Type: application/json\r\nContent-Length: 13\r\n\r\n{")

    threading.Thread(target=answer_in_part, daemon=True).start()
    server = Server(Path("unused"), Path("unused"), port=listener.getsockname()[1])
    with listener:
        for _ in heads:
            with pytest.raises(ConnectionError, match="the answer to POST /questions/delete was cut off"):
                server.request("POST", "/questions/delete", {"ids": ["d-3"]}, timeout=5)


@pytest.mark.slow
def test_every_acknowledged_question_survives_sigkill(
    tiny_model_dir: Path, tmp_path: Path, store_url: str | None
) -> None:
    env = {"DUPQ_STORE_URL": store_url} if store_url else {}
    server = Server(tiny_model_dir, tmp_path / "data", **env).start()
    acknowledged: dict[str, tuple[str, dict[str, Any]]] = {}
    deleted: set[str] = set()
    unanswered: dict[str, tuple[str, dict[str, Any]]] = {}  # a delete the kill cut off: either outcome is right
    stop = threading.Event()

    def write_loop() -> None:
        i = 0
        while not stop.is_set():
            qid, text = f"d-{i}", _text(i)
            where = {"namespace": f"site-{i % 3}", "metadata": {"n": i, "status": "open", "seen": i % 2 == 0}}
            try:
                if i % 5 == 4:  # now and then, a bulk delete of the one before
                    status, body = server.request("POST", "/questions/delete", {"ids": [f"d-{i - 1}"]}, timeout=5)
                    if status == 200 and body["deleted"] == 1:
                        deleted.add(f"d-{i - 1}")
                        acknowledged.pop(f"d-{i - 1}", None)
                else:
                    item = {"id": qid, "text": text, **where}
                    status, body = server.request("POST", "/questions", {"questions": [item]}, timeout=5)
                    if status == 201:
                        assert body["ids"] == [qid]
                        acknowledged[qid] = (text, where)
            except OSError:  # the server is gone
                if i % 5 == 4 and f"d-{i - 1}" in acknowledged:
                    unanswered[f"d-{i - 1}"] = acknowledged.pop(f"d-{i - 1}")
                return
            i += 1

    writer = threading.Thread(target=write_loop)
    try:
        writer.start()
        time.sleep(random.Random().uniform(0.8, 2.0))
        server.kill()
        stop.set()
        writer.join(10)
        assert len(acknowledged) > 5
        restarted = Server(tiny_model_dir, tmp_path / "data", port=server.port, **env).start()
        try:
            status, ready = restarted.request("GET", "/ready")
            assert status == 200 and ready["index_size"] >= len(acknowledged)
            for qid, (text, where) in acknowledged.items():
                assert restarted.request("GET", f"/questions/{qid}") == (200, {"id": qid, "text": text, **where})
            for qid in deleted:
                assert restarted.request("GET", f"/questions/{qid}")[0] == 404
            for qid, (text, where) in unanswered.items():
                assert restarted.request("GET", f"/questions/{qid}") in (
                    (200, {"id": qid, "text": text, **where}),
                    (404, {"detail": f"no question with id {qid!r}"}),
                )
            for qid, (text, where) in random.Random(0).sample(sorted(acknowledged.items()), min(30, len(acknowledged))):
                query = {
                    "question": text,
                    "k": 1,
                    "namespace": where["namespace"],
                    "filter": {"n": where["metadata"]["n"]},
                }
                _, found = restarted.request("POST", "/duplicates", query)
                assert [m["id"] for m in found["matches"]] == [qid], (qid, found)
                assert found["matches"][0]["metadata"] == where["metadata"]
        finally:
            restarted.stop()
    finally:
        stop.set()
        server.stop()


def test_a_clean_stop_leaves_the_whole_store_in_its_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Stopped with SIGTERM, the service folds its write-ahead log into the store's file: a copy of
    questions.sqlite3 alone (what an operator takes of a stopped service) holds every question. It
    held none: the tables and rows were all in questions.sqlite3-wal."""
    data, copy = tmp_path / "data", tmp_path / "copy.sqlite3"
    server = Server(tiny_model_dir, data).start()
    try:
        for start in range(0, 40, 8):
            questions = [{"id": f"q{i}", "text": _text(i)} for i in range(start, start + 8)]
            assert server.request("POST", "/questions", {"questions": questions})[0] == 201
        assert server.request("DELETE", "/questions/q3")[0] == 204
    finally:
        server.stop()
    assert not (data / "questions.sqlite3-wal").exists() or (data / "questions.sqlite3-wal").stat().st_size == 0
    shutil.copyfile(data / "questions.sqlite3", copy)
    with closing(sqlite3.connect(copy)) as conn:
        ids = {row[0] for row in conn.execute("SELECT id FROM questions")}
    assert ids == {f"q{i}" for i in range(40)} - {"q3"}
