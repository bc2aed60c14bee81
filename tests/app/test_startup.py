"""Start-up: snapshots, rebuilds, a changed model, seeding, a bad model or data directory, bad settings."""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.cli import main
from app.deps import ServiceState
from app.engine import STORE_FILE, Engine, StartupError
from app.main import create_app
from app.store import NewQuestion, QuestionStore

from ..conftest import build_tiny_model
from .conftest import engine_of, make_settings, serving, wait_ready


def test_restart_uses_the_snapshot_and_replays_what_changed_since(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tiny_model_dir, tmp_path)
    with serving(settings) as client:
        client.post(
            "/questions",
            json={
                "questions": [
                    {"id": "a", "text": "How old are you?"},
                    {"id": "b", "text": "Why?"},
                    {"id": "c", "text": "Where are you from?"},
                ]
            },
        )
    caplog.set_level(logging.INFO)
    with serving(settings) as client:
        assert "index snapshot loaded: 3 questions" in caplog.text
        assert "caught up" not in caplog.text
        assert (
            client.post("/duplicates", json={"question": "How old are you?", "k": 1}).json()["matches"][0]["id"] == "a"
        )
    # The store moves on without the snapshot (as after a kill -9): a delete, an update, a new row.
    from app.store import NewQuestion, QuestionStore

    store = QuestionStore(tmp_path / "questions.sqlite3", dim=24)
    store.delete("b")
    vector = np.eye(24, dtype=np.float32)[:2]
    version = json.loads((tiny_model_dir / "config.json").read_text())["version"]
    store.upsert([NewQuestion.of("c", "Is this an update?"), NewQuestion.of("d", "Is this new?")], vector, version)
    store.close()
    caplog.clear()
    with serving(settings) as client:
        assert "index snapshot loaded: 3 questions" in caplog.text
        assert "index caught up with the store: 2 added, 2 removed since the snapshot" in caplog.text
        engine = engine_of(client)
        by_key = engine.store.by_keys(engine.index.spaces["default"].live_keys().tolist())
        assert sorted(q.id for q in by_key.values()) == ["a", "c", "d"]
        assert engine.store.get("c").text == "Is this an update?"
        assert client.get("/ready").json()["index_size"] == 3
        # The replayed vectors are the stored ones: each row is its own nearest neighbour.
        _, keys = engine.index.search("default", vector, 1)
        assert [by_key[int(k)].id for k in keys[:, 0]] == ["c", "d"]


def test_a_snapshot_of_another_model_is_rebuilt(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tiny_model_dir, tmp_path)
    with serving(settings) as client:
        client.post("/questions", json={"questions": [{"id": "a", "text": "How old are you?"}]})
    meta_path = tmp_path / "index.faiss.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "tag": "vectors of model other"}))
    caplog.set_level(logging.INFO)
    with serving(settings) as client:
        assert "rebuilding the index from the store (snapshot is stale" in caplog.text
        assert client.get("/ready").json()["index_size"] == 1


def test_snapshots_of_an_older_dupq_are_removed_and_many_changes_trigger_one(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    for name in ("index-flat.faiss", "index-flat.faiss.json", "index-hnsw.faiss"):
        (tmp_path / name).write_bytes(b"format 1")
    settings = make_settings(tiny_model_dir, tmp_path, snapshot_interval_s=3600, snapshot_changes=3)
    meta_path = tmp_path / "index.faiss.json"
    with serving(settings) as client:
        assert sorted(p.name for p in tmp_path.glob("index*")) == ["index.faiss", "index.faiss.json"]
        written = json.loads(meta_path.read_text())["generation"]  # the empty index, built at start
        client.post("/questions", json={"questions": [{"text": "How old are you?"}, {"text": "Why?"}]})
        time.sleep(1.5)
        assert json.loads(meta_path.read_text())["generation"] == written  # 2 changes, and the hour is not up
        client.post("/questions", json={"questions": [{"text": "Where?"}]})
        deadline = time.monotonic() + 10
        while json.loads(meta_path.read_text())["generation"] == written:
            assert time.monotonic() < deadline, "no snapshot after 3 changes"
            time.sleep(0.05)


def test_snapshots_are_written_while_serving(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_model_dir, tmp_path, snapshot_interval_s=0.1)
    with serving(settings) as client:
        client.post("/questions", json={"questions": [{"id": "a", "text": "How old are you?"}]})
        engine = engine_of(client)
        meta_path = tmp_path / "index.faiss.json"
        deadline = time.monotonic() + 10
        while json.loads(meta_path.read_text()).get("generation") != engine.store.generation():
            assert time.monotonic() < deadline, "no snapshot of the new question within 10 s"
            time.sleep(0.05)
        assert json.loads(meta_path.read_text())["max_key"] == engine.store.get("a").key


def test_another_model_reembeds_or_refuses(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(make_settings(tiny_model_dir, data)) as client:
        client.post("/questions", json={"questions": [{"id": "a", "text": "How old are you?"}]})
    other = build_tiny_model(tmp_path / "other", seed=1, version_prefix="other")
    with (
        pytest.raises(StartupError, match="embedded by model"),
        TestClient(create_app(make_settings(other, data, on_model_change="refuse"))),
    ):
        pass
    with serving(make_settings(other, data)) as client:
        match = client.post("/duplicates", json={"question": "How old are you?", "k": 1}).json()["matches"][0]
        assert match["id"] == "a" and match["similarity"] == pytest.approx(1.0, abs=1e-5)  # vectors of the new model


def test_a_model_of_two_networks_side_by_side_takes_over_a_store_of_narrower_vectors(
    tiny_model_dir: Path, tiny_members_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with serving(make_settings(tiny_model_dir, data)) as client:
        client.post("/questions", json={"questions": [{"id": "a", "text": "How old are you?"}]})
        assert client.get("/info").json()["dim"] == 24
    with serving(make_settings(tiny_members_dir, data)) as client:
        assert client.get("/info").json()["dim"] == 48
        match = client.post("/duplicates", json={"question": "How old are you?", "k": 1}).json()["matches"][0]
        assert match["id"] == "a" and match["similarity"] == pytest.approx(1.0, abs=1e-5)
        pair = {"question1": "How old are you?", "question2": "What is your age?"}
        vectors = client.post("/embed", json={"questions": list(pair.values())}).json()["embeddings"]
        similarity = client.post("/similarity", json=pair).json()["similarity"]
        assert similarity == pytest.approx(float(np.dot(*vectors)), abs=1e-5)


def test_seed_file_fills_an_empty_store_once(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seed = tmp_path / "seed.tsv"
    seed.write_text("s1\tHow old are you?\nWhy is the sky blue?\n\nbad/id\tWhere?\ns2\t \n", encoding="utf-8")
    settings = make_settings(tiny_model_dir, tmp_path / "data", seed_file=seed)
    with caplog.at_level(logging.WARNING, logger="app.engine"), serving(settings) as client:
        assert client.get("/ready").json()["index_size"] == 2
        warning = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
        assert warning.startswith(f"seed file {seed}: skipped 2 line(s) that POST /questions would refuse: line 4: id:")
        assert client.get("/questions/s1").json()["text"] == "How old are you?"
        client.delete("/questions/s1")
    with serving(settings) as client:
        assert client.get("/ready").json()["index_size"] == 1  # not seeded again
        client.delete("/questions/seed-2")
    with serving(settings) as client:  # emptied since it was seeded: not seeded again either
        assert client.get("/ready").json()["index_size"] == 0


def test_a_seeding_that_did_not_end_is_done_again_at_the_next_start(
    tiny_model_dir: Path, tmp_path: Path, store_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process killed in the middle of a seeding (here: its second write fails) left the store
    partly seeded: the next start seeds it again, whole, instead of taking it for seeded."""
    seed = tmp_path / "seed.txt"
    seed.write_text("".join(f"Is question number {n} a duplicate of another one?\n" for n in range(2100)))
    settings = make_settings(tiny_model_dir, tmp_path / "data", seed_file=seed, store_url=store_url)
    written = Engine._write
    calls: list[int] = []

    def killed_after_one(self: Engine, items: list[NewQuestion], vectors: np.ndarray) -> None:
        calls.append(len(items))
        if len(calls) == 2:
            raise RuntimeError("killed")
        written(self, items, vectors)

    monkeypatch.setattr(Engine, "_write", killed_after_one)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 30
        while "start-up failed" not in client.get("/ready").json().get("detail", ""):
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.05)
    monkeypatch.setattr(Engine, "_write", written)
    with serving(settings) as client:
        assert client.get("/ready").json()["index_size"] == 2100
        assert (
            client.get("/questions/seed-2100").json()["text"] == "Is question number 2099 a duplicate of another one?"
        )
        assert engine_of(client).stores.truth.meta("seeding") == "done"
    with serving(settings) as client:
        client.delete("/questions/seed-1")
    with serving(settings) as client:  # done: not again
        assert client.get("/ready").json()["index_size"] == 2099


def test_a_seed_file_may_be_a_table_with_namespaces_and_metadata(tiny_model_dir: Path, tmp_path: Path) -> None:
    seed = tmp_path / "seed.csv"
    seed.write_text('id,text,namespace,status\ns1,"How old are you?",forum,open\n,"Why, is the sky blue?",,\n')
    with serving(make_settings(tiny_model_dir, tmp_path / "data", seed_file=seed)) as client:
        assert client.get("/ready").json()["index_size"] == 2
        assert client.get("/questions/s1").json() == {
            "id": "s1",
            "text": "How old are you?",
            "namespace": "forum",
            "metadata": {"status": "open"},
        }
        assert client.get("/questions/seed-2").json()["text"] == "Why, is the sky blue?"


def test_a_bad_model_directory_fails_start_up_with_its_reason(tmp_path: Path) -> None:
    with (
        pytest.raises(StartupError, match="does not exist"),
        TestClient(create_app(make_settings(tmp_path / "none", tmp_path))),
    ):
        pass


def test_a_store_that_cannot_open_or_a_missing_or_unreadable_seed_file_fails_start_up(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with (
        pytest.raises(StartupError, match=f"cannot open the question store in {not_a_dir}"),
        TestClient(create_app(make_settings(tiny_model_dir, not_a_dir))),
    ):
        pass
    missing = make_settings(tiny_model_dir, tmp_path / "data", seed_file=tmp_path / "none.tsv")
    with (
        pytest.raises(StartupError, match=r"the store is empty and the seed file .*none\.tsv"),
        TestClient(create_app(missing)),
    ):
        pass
    # A seed file that cannot be read fails start-up too, naming it, rather than at /ready later.
    for name, content in (
        ("latin.txt", "Qu'est-ce que c'est \xe9t\xe9 ?\n".encode("latin-1")),
        ("no-text.csv", b"id\n1\n"),
    ):
        (tmp_path / name).write_bytes(content)
        with (
            pytest.raises(StartupError, match=f"^the seed file \\(DUPQ_SEED_FILE\\) cannot be read: {tmp_path / name}"),
            TestClient(create_app(make_settings(tiny_model_dir, tmp_path / "data", seed_file=tmp_path / name))),
        ):
            pass
    with serving(make_settings(tiny_model_dir, tmp_path / "data")) as client:
        client.post("/questions", json={"questions": [{"text": "How old are you?"}]})
    with serving(missing) as client:  # a store with questions needs no seed file
        assert client.get("/ready").json()["index_size"] == 1


def test_dupq_serve_refuses_bad_settings_and_start_up_errors_in_one_line(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DUPQ_INDEX_KIND", "bogus")
    assert main(["serve", "--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "dupq serve: error: DUPQ_INDEX_KIND='bogus': Input should be 'auto', 'flat' or 'hnsw'\n"
    )
    monkeypatch.delenv("DUPQ_INDEX_KIND")
    monkeypatch.setenv("DUPQ_LOG_JSON", "false")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # `dupq serve` sets up the process's logging
    try:
        # Start-up errors end the command before any server starts (main returns, no port is opened).
        assert main(["serve", "--model-dir", str(tmp_path / "none"), "--data-dir", str(tmp_path)]) == 1
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert f"cannot start: model directory {tmp_path / 'none'} does not exist" in capsys.readouterr().err


def test_hnsw_service(tiny_model_dir: Path, tmp_path: Path) -> None:
    with serving(make_settings(tiny_model_dir, tmp_path, index_kind="hnsw")) as client:
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


def test_auto_switches_a_growing_namespace_to_hnsw_in_the_background_and_keeps_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Under auto a namespace that reaches hnsw_from questions is rebuilt as HNSW beside the flat
    index while requests go on; the snapshot keeps the new structure across a restart, and a
    namespace still small stays flat."""
    settings = make_settings(tiny_model_dir, tmp_path, hnsw_from=40)
    words = [
        "age",
        "old",
        "live",
        "city",
        "learn",
        "cook",
        "code",
        "swim",
        "drive",
        "fly",
        "sing",
        "paint",
        "write",
        "read",
        "run",
        "jump",
    ]
    texts = [f"How do I {words[i % 16]} and {words[i // 16 * 3 % 16]} {words[(i * 7) % 16]}?" for i in range(60)]
    with serving(settings) as client:
        client.post("/questions", json={"questions": [{"text": "Where?", "namespace": "small"}]})
        for start in range(0, 60, 6):
            batch = [{"id": f"q{i}", "text": texts[i]} for i in range(start, start + 6)]
            assert client.post("/questions", json={"questions": batch}).status_code == 201
            found = client.post("/duplicates", json={"question": texts[start], "k": 1}).json()
            assert found["matches"][0]["similarity"] > 0.999  # answered throughout, flat or HNSW
        assert client.delete("/questions/q0").status_code == 204
        deadline = time.monotonic() + 20
        while client.get("/info").json()["index_structures"] != {"flat": 1, "hnsw": 1}:
            assert time.monotonic() < deadline, client.get("/info").json()
            time.sleep(0.05)
        found = client.post("/duplicates", json={"question": texts[5], "k": 60}).json()
        assert found["index_size"] == 60 and "q0" not in {m["id"] for m in found["matches"]}
        assert found["matches"][0]["similarity"] > 0.999
    with serving(settings) as client:  # loaded from the snapshot written at shutdown, as HNSW
        info = client.get("/info").json()
        assert info["index_structures"] == {"flat": 1, "hnsw": 1} and info["index_size"] == 60
        engine = engine_of(client)
        assert engine.index.spaces["default"].structure == "hnsw"


def test_an_empty_seed_file_setting_means_no_seed(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUPQ_SEED_FILE", "")  # as `docker run -e DUPQ_SEED_FILE=` sets it
    settings = make_settings(tiny_model_dir, tmp_path / "data")
    assert settings.seed_file is None
    with serving(settings) as client:
        assert client.get("/ready").json() == {"status": "ready", "index_size": 0}


def test_while_loading_and_after_a_failed_start_every_route_but_health_is_a_503_with_retry_after(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    from app.engine import Engine

    real_build = Engine.build
    release = threading.Event()

    def slow_build(*args, **kwargs):  # type: ignore[no-untyped-def]
        release.wait(10)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(Engine, "build", slow_build)
    with TestClient(create_app(make_settings(tiny_model_dir, tmp_path / "data"))) as client:
        assert client.get("/health").status_code == 200
        for response in (client.get("/ready"), client.post("/similarity", json={"question1": "a", "question2": "b"})):
            assert response.status_code == 503 and response.headers["retry-after"] == "5"
            assert response.json() == {"detail": "not ready: the model and the index are still loading"}
        release.set()
        wait_ready(client)

    # A failure with a known reason (a StartupError) is logged in one line; any other with its
    # traceback.
    for error, traceback in ((OSError("disk full"), True), (StartupError("disk full"), False)):

        def failing_build(*args, error: Exception = error, **kwargs):  # type: ignore[no-untyped-def]
            raise error

        monkeypatch.setattr(Engine, "build", failing_build)
        caplog.clear()
        with TestClient(create_app(make_settings(tiny_model_dir, tmp_path / "data"))) as client:
            deadline = time.monotonic() + 10
            while "start-up failed" not in client.get("/ready").text and time.monotonic() < deadline:
                time.sleep(0.02)
            response = client.get("/ready")
            assert response.status_code == 503
            assert response.json() == {"detail": "not ready: start-up failed: disk full"}
        failed = [r for r in caplog.records if r.getMessage().startswith("start-up failed")]
        assert len(failed) == 1 and (failed[0].exc_info is not None) == traceback, error


def test_ready_says_how_far_the_re_embedding_of_a_new_model_is(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    with serving(make_settings(tiny_model_dir, data)) as client:
        client.post("/questions", json={"questions": [{"text": t} for t in ("How old are you?", "Why?", "Where?")]})
    other = build_tiny_model(tmp_path / "other", seed=1, version_prefix="other")
    version = json.loads((other / "config.json").read_text())["version"]
    seen, go_on = threading.Event(), threading.Event()
    steps: list[str] = []
    original = ServiceState.loading_step

    def held(self: ServiceState, step: str) -> None:  # the build waits at its first step
        original(self, step)
        steps.append(step)
        if not seen.is_set():
            seen.set()
            go_on.wait(10)

    monkeypatch.setattr(ServiceState, "loading_step", held)
    with TestClient(create_app(make_settings(other, data))) as client:
        assert seen.wait(10)
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["detail"].endswith(
            f"the model and the index are still loading (re-embedding the stored questions with model {version}: "
            "3 of 3)"
        )
        go_on.set()
        wait_ready(client)
    assert steps == [
        f"re-embedding the stored questions with model {version}: 3 of 3",
        "rebuilding the index from the store: 3 of 3 questions",
    ]


def test_a_shutdown_stops_the_re_embedding_between_batches_and_the_next_start_goes_on(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Asked to stop while it re-embeds the store for a new model, the service stops after the
    batch in hand (it waited for the whole store, half an hour for a million questions with a
    converted MiniLM); the batches done are kept, and the next start re-embeds only the rest."""
    data = tmp_path / "data"
    store = QuestionStore(data / STORE_FILE, dim=24)
    vectors = np.random.default_rng(0).standard_normal((5000, 24)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.upsert([NewQuestion.of(f"q{i}", f"Is this question number {i}?") for i in range(5000)], vectors, "old")
    store.close()
    version = json.loads((tiny_model_dir / "config.json").read_text())["version"]
    seen, go_on = threading.Event(), threading.Event()
    original = ServiceState.loading_step

    def held(self: ServiceState, step: str) -> None:  # the build waits at its first step
        original(self, step)
        if not seen.is_set():
            seen.set()
            go_on.wait(10)

    monkeypatch.setattr(ServiceState, "loading_step", held)
    caplog.set_level(logging.INFO)
    client = TestClient(create_app(make_settings(tiny_model_dir, data)))
    client.__enter__()
    assert seen.wait(10)
    stopping = threading.Thread(target=client.__exit__, args=(None, None, None))
    stopping.start()  # the shutdown asks the build to stop, then waits for it
    time.sleep(0.2)
    go_on.set()
    stopping.join(10)
    assert not stopping.is_alive()
    step = f"re-embedding the stored questions with model {version}: 4,096 of 5,000"
    assert f"start-up stopped: asked to stop while {step}; the next start takes it up again" in caplog.text
    with closing(QuestionStore(data / STORE_FILE, dim=24, read_only=True)) as kept:
        assert kept.model_versions() == {version: 4096, "old": 904}  # two batches done, the third not begun
    monkeypatch.setattr(ServiceState, "loading_step", original)
    caplog.clear()
    with serving(make_settings(tiny_model_dir, data)) as client:
        assert f"re-embedding 904 stored questions with model {version}" in caplog.text
        assert client.get("/ready").json()["index_size"] == 5000
        assert engine_of(client).store.model_versions() == {version: 5000}
