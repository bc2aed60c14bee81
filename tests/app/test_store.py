import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.store import PAGE_SIZE, Feedback, NewQuestion, QuestionStore, StoreInUse, latest_feedback


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_upsert_gives_new_keys_and_bumps_the_generation(tmp_path: Path) -> None:
    store = QuestionStore(tmp_path / "q.sqlite3", dim=4)
    g0 = store.generation()
    old, new = store.upsert([NewQuestion.of("a", "A?"), NewQuestion.of("b", "B?")], _vectors(2), "v1")
    assert old == [] and len(set(new)) == 2 and store.generation() == g0 + 1
    old2, new2 = store.upsert([NewQuestion.of("a", "A again?")], _vectors(1, 1), "v1")
    assert old2 == [(new[0], "default")] and new2[0] > max(new)  # never reuses a key
    assert store.get("a").text == "A again?" and store.count() == 2  # type: ignore[union-attr]
    keys, vectors, namespaces = next(store.iter_vectors())
    assert sorted(keys.tolist()) == sorted([new[1], new2[0]]) and vectors.dtype == np.float32
    assert namespaces == ["default", "default"]
    assert store.delete("a") == (new2[0], "default") and store.delete("a") is None and store.get("a") is None
    store.close()


def test_feedback_to_learn_from_is_the_last_decision_on_each_pair() -> None:
    rows = [
        (1, Feedback("How old are you?", "What is your age?", True, "a", "b")),
        (2, Feedback("Why?", "Why not?", False)),
        (3, Feedback("What is your age?", " How  old are you?", False)),  # reversed, in the other order
        (4, Feedback("Where?", "Where is it?", True)),
        (5, Feedback("Who?", " who? ", False, "c", "d")),  # a question with itself, as training groups it
        (6, Feedback("Why?", "Why not?", False)),  # the same decision again
    ]
    kept, superseded, itself = latest_feedback(rows)
    assert [number for number, _ in kept] == [3, 4, 6]
    assert kept[0][1].is_duplicate is False and (superseded, itself) == (2, 1)
    assert latest_feedback([]) == ([], 0, 0)


def test_writes_survive_reopening(tmp_path: Path) -> None:
    store = QuestionStore(tmp_path / "q.sqlite3", dim=4)
    store.upsert([NewQuestion.of("a", "A?")], _vectors(1), "v1")
    store.close()
    again = QuestionStore(tmp_path / "q.sqlite3", dim=4)
    assert again.get("a").text == "A?" and again.model_versions() == {"v1": 1}  # type: ignore[union-attr]
    assert [rows for rows in again.iter_texts(not_version="v2")] == [[(1, "A?", "default")]]
    assert list(again.iter_texts(not_version="v1")) == []


def test_vectors_of_keys_are_those_that_exist_by_key(tmp_path: Path) -> None:
    store = QuestionStore(tmp_path / "q.sqlite3", dim=4)
    _, keys = store.upsert([NewQuestion.of(q, q, "ns" if q == "b" else "default") for q in "abc"], _vectors(3), "v")
    found, vectors, namespaces = store.vectors_of([keys[2], 999, keys[1]])
    assert found.tolist() == [keys[1], keys[2]] and namespaces == ["ns", "default"]
    assert np.array_equal(vectors, _vectors(3)[1:])
    assert store.vectors_of([])[1].shape == (0, 4)


def test_new_stores_take_wide_pages_and_old_ones_keep_theirs(tmp_path: Path) -> None:
    def fill(path: Path, n: int = 200, dim: int = 512) -> tuple[int, float]:
        """200 questions with 512-d vectors into the store at ``path``: its page size, and rows per page."""
        store = QuestionStore(path, dim=dim)
        x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
        store.upsert(
            [NewQuestion.of(f"q{i}", f"Question number {i}?") for i in range(n)],
            x / np.linalg.norm(x, axis=1)[:, None],
            "v",
        )
        store.close()
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size, pages = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count"))
        conn.close()
        return size, n / pages

    size, per_page = fill(tmp_path / "new.sqlite3")
    assert size == PAGE_SIZE and per_page > 4  # a 4 KiB page holds one such row (indexes counted too)
    old = tmp_path / "old.sqlite3"
    sqlite3.connect(old).execute("CREATE TABLE t (x)").connection.close()  # a file made with 4 KiB pages
    size, per_page = fill(old)
    assert size == 4096 and 0 < per_page <= 1.1
    reopened = QuestionStore(old, dim=512)
    assert reopened.count() == 200
    reopened.close()


def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    store = QuestionStore(tmp_path / "q.sqlite3", dim=4)
    store.upsert([NewQuestion.of("a", "A?")], _vectors(1), "v1")
    with pytest.raises(ValueError):
        store.upsert(
            [NewQuestion.of("b", "B?"), NewQuestion.of("c", "C?")], _vectors(1), "v1"
        )  # two items, one vector: fails midway
    assert store.get("b") is None and store.count() == 1


def test_by_keys_beyond_sqlites_variable_limit(tmp_path: Path) -> None:
    store = QuestionStore(tmp_path / "q.sqlite3", dim=4)
    _, keys = store.upsert([NewQuestion.of(f"q{i}", f"Q{i}?") for i in range(50)], _vectors(50), "v1")
    asked = keys + list(range(100_000, 140_000))  # 40,050 keys, most absent
    found = store.by_keys(asked)
    assert sorted(found) == sorted(keys) and found[keys[7]].id == "q7"


def test_one_process_owns_a_store_until_it_closes_or_dies(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    store = QuestionStore(path, dim=4)
    with pytest.raises(StoreInUse, match=f"in use by another dupq process \\(pid {os.getpid()}\\)"):
        QuestionStore(path, dim=4)
    store.close()
    QuestionStore(path, dim=4).close()
    # Another process holds it, then is killed: the kernel drops the lock, nothing stale is left.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from app.store import QuestionStore; s = QuestionStore({str(path)!r}, 4); print('open', flush=True); "
            "input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(StoreInUse, match=f"pid {holder.pid}"):
            QuestionStore(path, dim=4)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    QuestionStore(path, dim=4).close()


def test_a_write_that_changes_nothing_leaves_the_generation(tmp_path: Path) -> None:
    store = QuestionStore(tmp_path / "q.sqlite3", dim=4)
    store.upsert([NewQuestion.of("a", "A?")], _vectors(1), "v1")
    g = store.generation()
    assert store.delete_ids(["nobody"]) == [] and store.delete_namespace("empty") == 0
    assert store.generation() == g
    assert store.delete_ids(["a"]) == [(1, "default")] and store.generation() == g + 1
    store.close()
