"""kill -9 right after 201s loses nothing: a real server process, killed at a random moment."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

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


@pytest.mark.slow
def test_every_acknowledged_question_survives_sigkill(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = Server(tiny_model_dir, tmp_path / "data").start()
    acknowledged: dict[str, str] = {}
    stop = threading.Event()

    def add_loop() -> None:
        i = 0
        while not stop.is_set():
            qid, text = f"d-{i}", _text(i)
            try:
                status, body = server.request(
                    "POST", "/questions", {"questions": [{"id": qid, "text": text}]}, timeout=5
                )
            except OSError:
                return  # the server is gone
            if status == 201:
                assert body["ids"] == [qid]
                acknowledged[qid] = text
            i += 1

    writer = threading.Thread(target=add_loop)
    try:
        writer.start()
        time.sleep(random.Random().uniform(0.8, 2.0))
        server.kill()
        stop.set()
        writer.join(10)
        assert len(acknowledged) > 5
        restarted = Server(tiny_model_dir, tmp_path / "data", port=server.port).start()
        try:
            status, ready = restarted.request("GET", "/ready")
            assert status == 200 and ready["index_size"] >= len(acknowledged)
            for qid, text in acknowledged.items():
                assert restarted.request("GET", f"/questions/{qid}") == (200, {"id": qid, "text": text})
            for qid, text in random.Random(0).sample(sorted(acknowledged.items()), min(30, len(acknowledged))):
                _, found = restarted.request("POST", "/duplicates", {"question": text, "k": 1})
                assert found["matches"][0]["id"] == qid, (qid, found)
        finally:
            restarted.stop()
    finally:
        stop.set()
        server.stop()
