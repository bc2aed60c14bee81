"""Vectors of a new model staged beside the running service (``dupq reembed``) and taken at the
switch to that model."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from app.staged import StagedVectors, _remove, staged_path
from model.encoder import load_encoder

from ..conftest import build_tiny_model
from .conftest import engine_of, make_settings, serving

QUESTIONS = [
    "How old are you?",
    "What is your age?",
    "Where are you from?",
    "Where are you going?",
    "How do I learn to play the guitar?",
    "Why is the sky blue?",
]


def _unit(dim: int, i: int) -> np.ndarray:
    return np.eye(dim, dtype=np.float32)[i]


def test_a_staged_vector_is_taken_only_for_the_text_it_was_made_of(tmp_path: Path) -> None:
    staged = StagedVectors.create(tmp_path, "v1", 4)
    staged.add([(1, "How old are you?"), (2, "Why?")], np.stack([_unit(4, 0), _unit(4, 1)]))
    found = staged.lookup([(1, "How old are you?"), (2, "Why not?"), (3, "Where?")])
    assert list(found) == [1] and np.array_equal(found[1], _unit(4, 0))
    staged.add([(2, "Why not?")], _unit(4, 2)[None])  # staged again: the new text replaces the old
    assert np.array_equal(staged.lookup([(2, "Why not?")])[2], _unit(4, 2)) and staged.count() == 2
    staged.close()
    again = StagedVectors.find(tmp_path, "v1", 4)
    assert again is not None and again.count() == 2
    again.remove()
    assert list(tmp_path.iterdir()) == []
    assert StagedVectors.find(tmp_path, "v1", 4) is None


def test_a_staged_file_that_cannot_be_read_is_set_aside_not_a_failed_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = staged_path(tmp_path, "v1")
    path.write_bytes(b"not a database, but a truncated copy " * 200)
    with caplog.at_level(logging.WARNING, logger="app.staged"):
        assert StagedVectors.find(tmp_path, "v1", 4) is None
    assert f"ignoring and removing {path}, vectors staged by dupq reembed" in caplog.text and not path.exists()
    path.write_bytes(b"not a database, but a truncated copy " * 200)
    staged = StagedVectors.create(tmp_path, "v1", 4)  # dupq reembed starts again from the start
    assert staged.count() == 0
    staged.close()
    refusal = f"cannot stage vectors in {path}: it holds 4-d vectors of model v1, not 8-d ones of v1"
    with pytest.raises(ValueError, match=f"^{re.escape(refusal)}$"):
        StagedVectors.create(tmp_path, "v1", 8)
    assert StagedVectors.find(tmp_path, "v1", 8) is None and not path.exists()
    staged = StagedVectors.create(tmp_path, "v1", 4)
    with sqlite3.connect(path) as other:  # the file damaged while staging
        other.execute("DROP TABLE vectors")
    with pytest.raises(ValueError, match=f"^cannot stage vectors in {re.escape(str(path))}: no such table: vectors$"):
        staged.add([(1, "Why?")], _unit(4, 0)[None])
    staged.close()


def test_vectors_staged_beside_the_running_service_are_taken_at_the_switch_to_their_model(
    tiny_model_dir: Path,
    tmp_path: Path,
    store_url: str | None,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "data"
    other = build_tiny_model(tmp_path / "other", seed=1, version_prefix="other")
    flags = ["reembed", "--data-dir", str(data), "--model-dir", str(other), "--threads", "1"]
    flags += ["--store-url", store_url] if store_url else []

    def staging() -> dict[str, object]:
        capsys.readouterr()
        assert main(flags) == 0
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    with serving(make_settings(tiny_model_dir, data, store_url=store_url)) as client:
        client.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(QUESTIONS)]})
        first = staging()  # beside the service, which owns the store
        assert (first["questions"], first["encoded"], first["already_staged"], first["staged"]) == (6, 6, 0, 6)
        edits = [{"id": "q1", "text": "What is your age now?"}, {"id": "new", "text": "Is this new?"}]
        client.post("/questions", json={"questions": edits})
        second = staging()  # again: only what changed is encoded
        assert (second["questions"], second["encoded"], second["already_staged"], second["staged"]) == (7, 2, 5, 8)
        client.post("/questions", json={"questions": [{"id": "q2", "text": "Where are you from, then?"}]})
        client.delete("/questions/q3")
        q0 = engine_of(client).store.get("q0")
        assert q0 is not None
    # Mark q0's staged vector, to tell a vector taken from the file from one encoded again.
    staged_file = staged_path(data, str(second["model"]))
    with sqlite3.connect(staged_file) as conn:
        conn.execute("UPDATE vectors SET embedding = ? WHERE key = ?", (_unit(24, 5).tobytes(), q0.key))
    caplog.set_level(logging.INFO)
    with serving(make_settings(other, data, store_url=store_url)) as client:
        assert "re-embedded 6 questions in" in caplog.text and ": 5 staged, 1 encoded" in caplog.text
        engine = engine_of(client)
        assert engine.encoder.version == second["model"] and not staged_file.exists()
        q0_now = engine.store.vector_of("q0")
        assert q0_now is not None and np.array_equal(q0_now[1], _unit(24, 5))  # taken from the file
        encoder = load_encoder(other, threads=1)
        q2_now = engine.store.vector_of("q2")
        assert q2_now is not None
        np.testing.assert_allclose(q2_now[1], encoder.encode(["Where are you from, then?"])[0], atol=1e-6)
        for qid, text in [("q4", QUESTIONS[4]), ("new", "Is this new?"), ("q1", "What is your age now?")]:
            match = client.post("/duplicates", json={"question": text, "k": 1}).json()["matches"][0]
            assert match["id"] == qid and match["similarity"] == pytest.approx(1.0, abs=1e-5)
        assert client.get("/ready").json()["index_size"] == 6
    done = staging()  # every question is the new model's now: nothing to stage, no file
    assert (done["questions"], done["encoded"], done["file"]) == (0, 0, None) and not staged_file.exists()


def test_reembed_says_in_one_line_what_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reembed", "--data-dir", str(tmp_path / "none")]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"dupq reembed: error: no question store at {tmp_path / 'none'}/questions.sqlite3"
    )


def test_a_staged_file_that_cannot_be_opened_is_left_one_that_cannot_be_removed_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    staged = StagedVectors.create(tmp_path, "v1", 4)
    staged.add([(1, "Why?")], _unit(4, 0)[None])
    staged.close()
    in_the_way = Path(f"{staged.path}-wal")
    in_the_way.mkdir()  # SQLite cannot open the file, nor unlink remove this
    with caplog.at_level(logging.WARNING, logger="app.staged"):
        assert StagedVectors.find(tmp_path, "v1", 4) is None
        assert f"ignoring {staged.path}, vectors staged by dupq reembed" in caplog.text
        assert staged.path.exists()  # not readable now is not damaged: left as it is
        _remove(staged.path)
    assert f"cannot remove {in_the_way}" in caplog.text and not staged.path.exists()
