"""Output files written whole or not at all: an error (or a kill) leaves what was there."""

import fcntl
import os
import re
import threading
from pathlib import Path

import pytest

from model import files
from model.files import check_writable, replacing_file, replacing_files


def test_a_file_is_replaced_only_once_written(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text("old\n")
    with pytest.raises(KeyboardInterrupt), replacing_file(path) as partial:
        partial.write_text("half of the ne")
        raise KeyboardInterrupt
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.tsv"]  # no partial file left
    with replacing_file(path) as partial:
        assert partial.parent == tmp_path and partial != path
        partial.write_text("new\n")
        assert path.read_text() == "old\n"  # not yet
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.tsv"]


def test_a_file_that_cannot_be_written_is_named_as_given(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "pairs.tsv"
    message = re.escape(f"No such file or directory: '{path}'")
    with pytest.raises(FileNotFoundError, match=message), replacing_file(path):
        pass
    assert not path.parent.exists()


def test_a_link_keeps_pointing_at_the_file_it_names(tmp_path: Path) -> None:
    target, link = tmp_path / "target.tsv", tmp_path / "link.tsv"
    target.write_text("old\n")
    link.symlink_to(target)
    with replacing_file(link) as partial:
        partial.write_text("new\n")
    assert link.is_symlink() and target.read_text() == "new\n"


def test_a_pipe_is_written_to_as_it_is(tmp_path: Path) -> None:
    # As `--out /dev/stdout` is: renaming a file over it would replace the pipe, not feed it.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    with replacing_file(fifo) as path:
        assert path == fifo
        path.write_text("through the pipe\n")
    reader.join(timeout=10)
    assert received == ["through the pipe\n"] and fifo.is_fifo()


def test_files_replace_their_namesakes_the_last_one_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    for name in ("config.json", "weights", "stale", "notes.txt"):
        (directory / name).write_text(f"old {name}")
    renamed: list[str] = []
    replace = os.replace

    def recording(source: str | Path, target: str | Path) -> None:
        renamed.append(Path(target).name)
        replace(source, target)

    monkeypatch.setattr(files.os, "replace", recording)
    with replacing_files(directory, last="config.json", drop=("weights", "stale", "graph")) as stage:
        for name in ("config.json", "weights", "graph"):
            (stage / name).write_text(f"new {name}")
        assert (directory / "weights").read_text() == "old weights"  # not yet
    assert renamed[-1] == "config.json" and sorted(renamed) == ["config.json", "graph", "weights"]
    assert {p.name: p.read_text() for p in directory.iterdir()} == {
        "config.json": "new config.json",
        "weights": "new weights",
        "graph": "new graph",
        "notes.txt": "old notes.txt",  # not a file it writes: it stays
    }


def test_an_error_leaves_the_directory_as_it_was(tmp_path: Path) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text("old")
    with pytest.raises(ValueError, match="graph strays"), replacing_files(directory, last="config.json") as stage:
        (stage / "config.json").write_text("new")
        raise ValueError("graph strays")
    assert [(p.name, p.read_text()) for p in directory.iterdir()] == [("config.json", "old")]
    fresh = tmp_path / "fresh" / "model"
    with pytest.raises(KeyboardInterrupt), replacing_files(fresh, last="config.json") as stage:
        raise KeyboardInterrupt
    assert not fresh.exists()  # made for the write, removed with it


def test_a_stage_left_by_a_killed_write_is_removed_and_a_running_one_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "model"
    abandoned, running = directory / ".partial-killed", directory / ".partial-running"
    for stage in (abandoned, running):
        stage.mkdir(parents=True)
        (stage / "config.json").write_text("{}")
    held = os.open(running, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        with replacing_files(directory, last="config.json") as stage:
            (stage / "config.json").write_text("new")
    finally:
        os.close(held)
    assert sorted(p.name for p in directory.iterdir()) == [".partial-running", "config.json"]
    assert "removing .partial-killed, left by a write into" in caplog.text


def test_a_folder_that_cannot_be_written_is_refused_before_the_work(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    check_writable(tmp_path / "new" / "model")  # made when written
    with pytest.raises(ValueError, match=re.escape(f"--out {tmp_path / 'notes.txt'} is a file, not a folder")):
        check_writable(tmp_path / "notes.txt")
    inside = tmp_path / "notes.txt" / "model"
    with pytest.raises(ValueError, match=re.escape(f"--out {inside}: {tmp_path / 'notes.txt'} is a file")):
        check_writable(inside)


def test_a_directory_that_cannot_be_written_is_named_not_its_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(prefix: str, dir: Path) -> str:  # tempfile's own name
        raise PermissionError(13, "Permission denied", str(dir / (prefix + "x1y2")))  # as a read-only folder does

    monkeypatch.setattr(files.tempfile, "mkdtemp", denied)
    message = re.escape(f"Permission denied: '{tmp_path}'")
    with pytest.raises(PermissionError, match=message), replacing_files(tmp_path, last="config.json"):
        pass


def test_a_file_that_cannot_be_written_is_refused_before_the_work(tmp_path: Path) -> None:
    check_writable(tmp_path / "groups.jsonl", file=True)
    check_writable(os.devnull, file=True)  # written to as it is
    with pytest.raises(ValueError, match=re.escape(f"--out {tmp_path} is a folder, not a file")):
        check_writable(tmp_path, file=True)
    missing = tmp_path / "missing" / "groups.jsonl"
    with pytest.raises(ValueError, match=re.escape(f"--out {missing}: there is no folder {missing.parent}")):
        check_writable(missing, file=True)
