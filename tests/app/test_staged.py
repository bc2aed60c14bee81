"""Vectors of a new model and their index, staged beside the running service (``dupq reembed``)
and taken at the switch to that model."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import psycopg
import pytest

from app.cli import main
from app.engine import Engine
from app.index import IndexParams, NamespacedIndex
from app.pgstaged import StagedRows
from app.pgstore import PostgresStore, safe_url
from app.staged import (
    StagedVectors,
    _remove,
    question_digest,
    reembed,
    stage_index,
    staged_index_path,
    staged_path,
)
from app.store import NewQuestion, QuestionStore
from model.encoder import load_encoder
from tests.postgres import PostgresServer

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


def _stage_take_and_drop(staged: StagedVectors | StagedRows) -> None:
    """Stage, look up, stage again, keep only some, read back: a staged vector is taken only for
    the question (namespace and text) it was made of."""
    staged.add([(1, "How old are you?", "default"), (2, "Why?", "forum")], np.stack([_unit(4, 0), _unit(4, 1)]))
    asked = [(1, "How old are you?", "default"), (2, "Why not?", "forum"), (3, "Where?", "default")]
    found = staged.lookup(asked)
    assert list(found) == [1] and np.array_equal(found[1], _unit(4, 0))
    assert staged.lookup([(1, "How old are you?", "forum")]) == {}  # the same text in another namespace
    staged.add([(2, "Why not?", "forum")], _unit(4, 2)[None])  # staged again: the new text replaces the old
    assert np.array_equal(staged.lookup([(2, "Why not?", "forum")])[2], _unit(4, 2)) and staged.count() == 2
    assert staged.namespace_sizes() == {"default": 1, "forum": 1}
    assert staged.keep_only(np.array([2, 7])) == 1 and staged.count() == 1
    [(keys, vectors, namespaces)] = list(staged.iter_vectors())
    assert keys.tolist() == [2] and np.array_equal(vectors, _unit(4, 2)[None]) and namespaces == ["forum"]


def test_a_staged_vector_is_taken_only_for_the_question_it_was_made_of(tmp_path: Path) -> None:
    staged = StagedVectors.create(tmp_path, "v1", 4)
    _stage_take_and_drop(staged)
    staged.close()
    again = StagedVectors.find(tmp_path, "v1", 4)
    assert again is not None and again.count() == 1
    again.remove()
    assert list(tmp_path.iterdir()) == []
    assert StagedVectors.find(tmp_path, "v1", 4) is None


def test_a_pass_takes_what_was_staged_encodes_the_rest_and_says_which_it_encoded(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    store = QuestionStore(tmp_path / "q.sqlite3", dim=24)
    _, keys = store.upsert(
        [NewQuestion.of(f"q{i}", t) for i, t in enumerate(QUESTIONS[:3])], _unit(24, 0)[None].repeat(3, 0), "old"
    )
    encoder = load_encoder(tiny_model_dir, threads=1)
    staged = StagedVectors.create(tmp_path, encoder.version, 24)
    staged.add([(keys[1], QUESTIONS[1], "default")], _unit(24, 7)[None])
    handed: list[tuple[list[int], np.ndarray, list[bool]]] = []
    done = reembed(encoder, store, staged, lambda rows, v, new: handed.append(([r[0] for r in rows], v, new.tolist())))
    [(put_keys, vectors, encoded)] = handed
    assert put_keys == list(keys) and encoded == [True, False, True]  # dupq reembed stages only the two
    assert np.array_equal(vectors[1], _unit(24, 7))
    np.testing.assert_allclose(vectors[[0, 2]], encoder.encode([QUESTIONS[0], QUESTIONS[2]]), atol=1e-6)
    assert (done.encoded, done.staged) == (2, 1) and done.taken_keys.tolist() == [keys[1]]
    staged.close()
    store.close()


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
    with closing(sqlite3.connect(path)) as other, other:  # the file damaged while staging
        other.execute("DROP TABLE vectors")
    with pytest.raises(ValueError, match=f"^cannot stage vectors in {re.escape(str(path))}: no such table: vectors$"):
        staged.add([(1, "Why?", "default")], _unit(4, 0)[None])
    staged.close()


def _staging(flags: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["reembed", *flags]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _mark(
    staged_in: str, store_url: str | None, key: int, vector: np.ndarray | None = None, text: str | None = None
) -> None:
    """Change a staged vector, or the question it was staged for, behind dupq reembed's back."""
    changes = [("embedding", vector.tobytes())] if vector is not None else []
    changes += [("digest", question_digest("default", text))] if text is not None else []
    for column, value in changes:
        if store_url:
            with psycopg.connect(store_url, autocommit=True) as conn:
                conn.execute(f"UPDATE staged_vectors SET {column} = %s WHERE key = %s", (value, key))
        else:
            with closing(sqlite3.connect(staged_in)) as conn, conn:
                conn.execute(f"UPDATE vectors SET {column} = ? WHERE key = ?", (value, key))


def _staged_rows(store_url: str) -> list[tuple[str, int]]:
    with psycopg.connect(store_url) as conn:
        return [(str(v), int(k)) for v, k in conn.execute("SELECT model_version, key FROM staged_vectors")]


def _index_matches_store(engine: Engine) -> None:
    """Every stored question is in its namespace's index with its stored vector, and nothing else."""
    live = {(int(key), namespace) for namespace, keys in engine.index.live() for key in keys}
    stored = engine.store.vectors_of(engine.store.keys(upto=2**62))
    assert live == set(zip(stored[0].tolist(), stored[2], strict=True))
    for key, vector, namespace in zip(*stored, strict=True):
        scores, keys = engine.index.search(namespace, vector[None], 1)
        assert keys[0, 0] == key and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_vectors_and_their_index_staged_beside_the_running_service_are_taken_at_the_switch(
    tiny_model_dir: Path,
    tmp_path: Path,
    store_url: str | None,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "data"
    other = build_tiny_model(tmp_path / "other", seed=1, version_prefix="other")
    flags = ["--data-dir", str(data), "--model-dir", str(other), "--threads", "1"]
    flags += ["--store-url", store_url] if store_url else []
    questions = [{"id": f"q{i}", "text": t} for i, t in enumerate(QUESTIONS)]
    questions[4]["namespace"] = "forum"
    with serving(make_settings(tiny_model_dir, data, store_url=store_url)) as client:
        client.post("/questions", json={"questions": questions})
        keys = {q: engine_of(client).store.get(q).key for q in ("q0", "q5")}  # type: ignore[union-attr]
        first = _staging(flags, capsys)  # beside the service, which owns the store
        assert (first["questions"], first["encoded"], first["already_staged"], first["indexed"]) == (6, 6, 0, 6)
        assert first["index_kept"] == 0
        staged_index = Path(first["index"])
        assert staged_index == staged_index_path(data, first["model"]) and staged_index.is_file()
        if store_url:  # in the store, where whichever replica re-embeds it takes them
            assert first["staged_in"] == f"table staged_vectors of {safe_url(store_url)}"
            assert not staged_path(data, first["model"]).exists()
        else:
            assert first["staged_in"] == str(staged_path(data, first["model"]))
        edits = [{"id": "q1", "text": "What is your age now?"}, {"id": "new", "text": "Is this new?"}]
        client.post("/questions", json={"questions": edits})
        # Marked vectors: q5's is to be taken at the switch, q0's to be encoded again (below).
        _mark(first["staged_in"], store_url, keys["q5"], _unit(24, 5))
        _mark(first["staged_in"], store_url, keys["q0"], _unit(24, 6))
        second = _staging(flags, capsys)  # again: only what changed is encoded
        assert (second["questions"], second["encoded"], second["already_staged"]) == (7, 2, 5)
        assert (second["dropped"], second["indexed"]) == (1, 7)  # q1's old text is gone
        # The first run's index brought level: q2, q3 and q4 kept; q0 and q5 (marked), q1 and new added.
        assert second["index_kept"] == 3
        client.post("/questions", json={"questions": [{"id": "q2", "text": "Where are you from, then?"}]})
        client.delete("/questions/q3")
    _mark(first["staged_in"], store_url, keys["q0"], text="Not what it was")  # encoded at the switch
    caplog.set_level(logging.INFO)
    with serving(make_settings(other, data, store_url=store_url)) as client:
        assert "re-embedded 6 questions in" in caplog.text and ": 4 staged, 2 encoded" in caplog.text
        assert f"index loaded from {staged_index.name}: 7 questions, 3 removed, 2 added from the store, 1 checked" in (
            caplog.text
        )
        assert "index rebuilt" not in caplog.text
        engine = engine_of(client)
        assert engine.encoder.version == second["model"]
        assert not [f.name for f in data.iterdir() if f.name.startswith("staged-")]
        if store_url:
            assert _staged_rows(store_url) == [] and "removed the 7 vectors that dupq reembed staged" in caplog.text
        q5 = engine.store.vector_of("q5")
        assert q5 is not None and np.array_equal(q5[1], _unit(24, 5))  # taken from the file
        encoder = load_encoder(other, threads=1)
        for qid, text in [("q0", QUESTIONS[0]), ("q2", "Where are you from, then?")]:
            stored = engine.store.vector_of(qid)
            assert stored is not None
            np.testing.assert_allclose(stored[1], encoder.encode([text])[0], atol=1e-6)  # encoded at the switch
        _index_matches_store(engine)
        for qid, text, namespace in [("q0", QUESTIONS[0], "default"), ("q4", QUESTIONS[4], "forum")]:
            match = client.post("/duplicates", json={"question": text, "k": 1, "namespace": namespace}).json()
            assert match["matches"][0]["id"] == qid and match["matches"][0]["similarity"] == pytest.approx(1.0)
        assert client.get("/ready").json()["index_size"] == 6
    done = _staging(flags, capsys)  # every question is the new model's now: nothing to stage
    assert (done["questions"], done["encoded"], done["staged_in"], done["index"]) == (0, 0, None, None)
    assert not [f.name for f in data.iterdir() if f.name.startswith("staged-")]


def test_a_staged_index_that_cannot_be_read_is_rebuilt_from_the_store(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    other = build_tiny_model(tmp_path / "other", seed=1, version_prefix="other")
    with serving(make_settings(tiny_model_dir, data)) as client:
        client.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(QUESTIONS)]})
        staged = _staging(["--data-dir", str(data), "--model-dir", str(other)], capsys)
    snapshot = Path(staged["index"])
    snapshot.write_bytes(snapshot.read_bytes()[:-8] + b"damaged!")
    caplog.set_level(logging.INFO)
    with serving(make_settings(other, data)) as client:
        assert ": 6 staged, 0 encoded" in caplog.text
        assert f"ignoring {snapshot}, the index staged by dupq reembed: snapshot fails its checksum" in caplog.text
        assert "index rebuilt: 6 questions" in caplog.text and not snapshot.exists()
        _index_matches_store(engine_of(client))


def test_reembed_runs_on_the_threads_the_service_would_have(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """--threads 0 is DUPQ_THREADS (the Docker entry point sets it to the container's CPU limit)
    for the encoder and the index build alike, or else every CPU the process may use."""
    store = QuestionStore(tmp_path / "questions.sqlite3", dim=24)
    store.upsert([NewQuestion.of("q0", QUESTIONS[0])], _unit(24, 0)[None], "old")
    store.close()
    monkeypatch.setenv("DUPQ_THREADS", "3")
    caplog.set_level(logging.INFO, logger="model.encoder")
    before = faiss.omp_get_max_threads()
    try:
        assert _staging(["--data-dir", str(tmp_path), "--model-dir", str(tiny_model_dir)], capsys)["indexed"] == 1
        assert faiss.omp_get_max_threads() == 3
    finally:
        faiss.omp_set_num_threads(before)
    assert "(dim 24, 3 thread(s))" in caplog.text


def test_reembed_says_in_one_line_what_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reembed", "--data-dir", str(tmp_path / "none")]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"dupq reembed: error: no question store at {tmp_path / 'none'}/questions.sqlite3"
    )


def test_reembed_says_in_one_line_why_it_cannot_reach_postgresql(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reembed", "--store-url", "postgresql://nobody:secret@127.0.0.1:1/x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "dupq reembed: error: cannot reach PostgreSQL at postgresql://nobody@127.0.0.1:1/x within 5 s: "
    )
    assert err.strip().endswith("Connection refused") and len(err.strip().splitlines()) == 1 and "secret" not in err


def test_a_staged_file_that_cannot_be_opened_is_left_one_that_cannot_be_removed_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    staged = StagedVectors.create(tmp_path, "v1", 4)
    staged.add([(1, "Why?", "default")], _unit(4, 0)[None])
    staged.close()
    in_the_way = Path(f"{staged.path}-wal")
    in_the_way.mkdir()  # SQLite cannot open the file, nor unlink remove this
    with caplog.at_level(logging.WARNING, logger="app.staged"):
        assert StagedVectors.find(tmp_path, "v1", 4) is None
        assert f"ignoring {staged.path}, vectors staged by dupq reembed" in caplog.text
        assert staged.path.exists()  # not readable now is not damaged: left as it is
        _remove(staged.path)
    assert f"cannot remove {in_the_way}" in caplog.text and not staged.path.exists()


def test_vectors_staged_in_postgresql_are_kept_by_version_and_taken_only_for_their_question(
    postgres: PostgresServer,
) -> None:
    store = PostgresStore(postgres.new_database(), dim=4)
    try:
        assert StagedRows.find(store, "v1", 4) is None  # no table yet
        staged = StagedRows.create(store, "v1", 4)
        assert StagedRows.find(store, "v1", 4) is None  # a table, but nothing of v1
        StagedRows.create(store, "v2", 4).add([(1, "How old are you?", "default")], _unit(4, 3)[None])
        _stage_take_and_drop(staged)  # v1's vectors only
        again = StagedRows.find(store, "v1", 4)
        assert again is not None and again.count() == 1
        again.remove()
        assert StagedRows.find(store, "v1", 4) is None and StagedRows.find(store, "v2", 4) is not None
    finally:
        store.close()


def test_on_postgresql_the_replica_that_re_embeds_takes_the_staged_vectors_whatever_its_data_directory(
    tiny_model_dir: Path,
    tmp_path: Path,
    postgres: PostgresServer,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """dupq reembed ran in replica A's data directory; replica B, a new one (a container made
    afresh), is the first started on the new model: it takes the vectors staged in the store and
    builds its own index. A, started after it, copies the store and loads the index it staged,
    keeping each vector the store holds too (by its digest) and taking the others from the store."""
    url = postgres.new_database()
    other = build_tiny_model(tmp_path / "other", seed=1, version_prefix="other")
    a, b = tmp_path / "a", tmp_path / "b"
    with serving(make_settings(tiny_model_dir, a, store_url=url)) as client:
        client.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(QUESTIONS)]})
        q5 = engine_of(client).store.get("q5").key  # type: ignore[union-attr]
        staged = _staging(["--data-dir", str(a), "--model-dir", str(other), "--store-url", url], capsys)
    assert Path(staged["index"]).is_file()
    _mark(staged["staged_in"], url, q5, _unit(24, 5))  # B takes this one, which A's index does not hold
    caplog.set_level(logging.INFO)
    with serving(make_settings(other, b, store_url=url)) as client:
        assert ": 6 staged, 0 encoded" in caplog.text and "index rebuilt: 6 questions" in caplog.text
        assert _staged_rows(url) == []
        _index_matches_store(engine_of(client))
        match = client.post("/duplicates", json={"question": QUESTIONS[2], "k": 1}).json()["matches"]
        assert match[0]["id"] == "q2" and match[0]["similarity"] == pytest.approx(1.0)
    caplog.clear()
    with serving(make_settings(other, a, store_url=url)) as client:
        loaded = f"index loaded from {Path(staged['index']).name}: 6 questions, 1 removed, 1 added from the store, "
        assert loaded + "6 checked against it" in caplog.text and "index rebuilt" not in caplog.text
        assert not Path(staged["index"]).exists()
        engine = engine_of(client)
        _index_matches_store(engine)
        stored = engine.store.vector_of("q5")
        assert stored is not None and np.array_equal(stored[1], _unit(24, 5))


def test_on_postgresql_a_run_in_each_replica_s_data_directory_stages_an_index_that_replica_loads(
    tiny_model_dir: Path,
    tmp_path: Path,
    postgres: PostgresServer,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first run encodes; the runs in the other replicas' data directories (one not made yet:
    a replica never started) take the vectors from the store and build only the index there. Each
    replica started on the new model loads its own, none rebuilds one."""
    url = postgres.new_database()
    other = build_tiny_model(tmp_path / "other", seed=1, version_prefix="other")
    dirs = [tmp_path / name for name in "abc"]
    with serving(make_settings(tiny_model_dir, dirs[0], store_url=url)) as client:
        client.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(QUESTIONS)]})
        runs = [_staging(["--data-dir", str(d), "--model-dir", str(other), "--store-url", url], capsys) for d in dirs]
    assert [(r["encoded"], r["already_staged"], r["indexed"]) for r in runs] == [(6, 0, 6), (0, 6, 6), (0, 6, 6)]
    caplog.set_level(logging.INFO)
    for d in dirs:
        caplog.clear()
        with serving(make_settings(other, d, store_url=url)) as client:
            assert "index loaded from staged-" in caplog.text and "index rebuilt" not in caplog.text
            _index_matches_store(engine_of(client))
            match = client.post("/duplicates", json={"question": QUESTIONS[4], "k": 1}).json()["matches"]
            assert match[0]["id"] == "q4" and match[0]["similarity"] == pytest.approx(1.0)
    assert _staged_rows(url) == [] and not [f for d in dirs for f in d.glob("staged-*")]


def test_with_no_index_only_the_vectors_are_staged_and_the_service_builds_the_index_at_the_switch(
    tiny_model_dir: Path,
    tmp_path: Path,
    store_url: str | None,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A job of its own beside PostgreSQL replicas stages the vectors in the store and writes
    nothing to its data directory, which no replica starts from (not even makes it)."""
    data, job = tmp_path / "data", tmp_path / "job"
    other = build_tiny_model(tmp_path / "other", seed=1, version_prefix="other")
    with serving(make_settings(tiny_model_dir, data, store_url=store_url)) as client:
        client.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(QUESTIONS)]})
        where = ["--data-dir", str(job if store_url else data)] + (["--store-url", store_url] if store_url else [])
        staged = _staging([*where, "--model-dir", str(other), "--no-index"], capsys)
    assert (staged["questions"], staged["encoded"], staged["indexed"], staged["index"]) == (6, 6, 0, None)
    assert not staged_index_path(data, staged["model"]).exists()
    if store_url:
        assert len(_staged_rows(store_url)) == 6 and not job.exists()
    else:
        assert Path(staged["staged_in"]).is_file()
    caplog.set_level(logging.INFO)
    with serving(make_settings(other, data, store_url=store_url)) as client:
        assert ": 6 staged, 0 encoded" in caplog.text and "index rebuilt: 6 questions" in caplog.text
        _index_matches_store(engine_of(client))
        match = client.post("/duplicates", json={"question": QUESTIONS[2], "k": 1}).json()["matches"]
        assert match[0]["id"] == "q2" and match[0]["similarity"] == pytest.approx(1.0)


def test_what_was_staged_for_a_model_not_served_after_all_is_discarded(
    tiny_model_dir: Path, tmp_path: Path, store_url: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    other = build_tiny_model(tmp_path / "other", seed=1, version_prefix="other")
    flags = ["--data-dir", str(data), "--model-dir", str(other)] + (["--store-url", store_url] if store_url else [])
    with serving(make_settings(tiny_model_dir, data, store_url=store_url)) as client:
        client.post("/questions", json={"questions": [{"id": f"q{i}", "text": t} for i, t in enumerate(QUESTIONS)]})
        staged = _staging(flags, capsys)
        gone = _staging([*flags, "--discard"], capsys)
        index = Path(staged["index"]).name
        if store_url:
            assert (gone["discarded_files"], gone["discarded_rows"]) == ([index], 6) and _staged_rows(store_url) == []
        else:
            assert (gone["discarded_files"], gone["discarded_rows"]) == ([Path(staged["staged_in"]).name, index], 0)
        assert gone["model"] == staged["model"] and not [f for f in data.iterdir() if f.name.startswith("staged-")]
        again = _staging([*flags, "--discard"], capsys)  # nothing left: not an error
        assert (again["discarded_files"], again["discarded_rows"]) == ([], 0)
        assert client.get("/ready").json()["index_size"] == 6  # the store and the service as they were


def test_a_staged_index_is_brought_level_by_the_next_run_or_built_afresh_where_that_calls_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((30, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [(key, f"question {key}", "default") for key in range(30)]
    params = IndexParams("auto", hnsw_from=20)
    staged = StagedVectors.create(tmp_path, "v1", 8)
    staged.add(rows[:10], vectors[:10])
    assert stage_index(staged, tmp_path, "t", params) == (10, 0)
    staged.add(rows[10:15], vectors[10:15])
    staged.add(rows[3:4], vectors[20:21])  # a vector staged again, changed
    assert staged.keep_only(np.arange(1, 15)) == 1  # key 0 no longer staged
    assert stage_index(staged, tmp_path, "t", params) == (14, 8)  # keys 1 to 9 but 3 kept
    index = NamespacedIndex.load(staged_index_path(tmp_path, "v1"), "t", params, 8)
    assert sorted(next(index.live())[1].tolist()) == list(range(1, 15)) and index.structures()["flat"] == 1
    scores, keys = index.search("default", vectors[[20, 12]], 1)
    assert keys[:, 0].tolist() == [3, 12] and scores[:, 0] == pytest.approx([1.0, 1.0], abs=1e-5)
    staged.add(rows[15:25], vectors[15:25])  # 24 now: past auto's switching size, as HNSW afresh
    caplog.set_level(logging.INFO, logger="app.staged")
    assert stage_index(staged, tmp_path, "t", params) == (24, 0)
    assert "building the staged index afresh: 1 namespace(s) want a rebuild" in caplog.text
    assert NamespacedIndex.load(staged_index_path(tmp_path, "v1"), "t", params, 8).structures()["hnsw"] == 1
    path = staged_index_path(tmp_path, "v1")
    path.write_bytes(path.read_bytes()[:-8] + b"damaged!")
    assert stage_index(staged, tmp_path, "t", params) == (24, 0)
    assert f"building the staged index afresh: {path.name} cannot be used (snapshot fails its checksum)" in caplog.text
    staged.close()
