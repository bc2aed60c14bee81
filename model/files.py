"""Output files written whole or not at all.

A command stopped while it writes (Ctrl-C, ``kill -9``, a full disk, a power cut) must leave what
was there before or the new output, never a cut pair file that reads back as fewer pairs, nor a
model directory whose old model is gone. Both helpers write the new content under another name in
the target's own folder, flush it to disk, then rename it over the target: a rename within one
directory is atomic on POSIX.

:func:`replacing_file` does it for one file; :func:`replacing_files` for the files of a directory
(a model directory: :func:`model.training.export.writing`). There each file is renamed over its
namesake in turn, ``last`` at the end, so for the few microseconds of the renames the directory
mixes the two: model directories carry the checksums of their files in ``config.json``, written
last, so a mix is refused at loading, and never served.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

STAGE_PREFIX = ".partial-"  # the directory inside the target that a write is staged in


@contextlib.contextmanager
def replacing_file(path: str | Path) -> Iterator[Path]:
    """A path to write ``path``'s new content to; once the block ends without an error it takes
    ``path``'s place, and on an error it is removed and ``path`` is left as it was. A path that
    exists and is no regular file (``/dev/stdout``, a pipe) is written to as it is; one that is a
    link has its target replaced, not the link."""
    path = Path(path)
    if path.exists() and not path.is_file():
        yield path
        return
    target = Path(os.path.realpath(path))
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        partial.touch()
    except OSError as err:  # a missing folder, one not writable: named as the caller named the file
        raise type(err)(err.errno, err.strerror, str(path)) from None
    try:
        yield partial
        _fsync(partial)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync(target.parent)


@contextlib.contextmanager
def replacing_files(directory: str | Path, last: str, *, drop: tuple[str, ...] = ()) -> Iterator[Path]:
    """A fresh directory to write files into, staged inside ``directory`` (made if missing) so the
    renames stay on its file system even where it is a mount point. Once the block ends without an
    error, each file written takes its namesake's place in ``directory``, ``last`` at the end; then
    the names in ``drop`` that were not written are removed from it. Anything else there stays. On
    an error ``directory`` is left as it was (and removed again if this made it).

    A stage left by a write that was killed is removed by the next write into ``directory``; one
    that a running write holds (a lock on it) is left alone."""
    directory = Path(directory)
    made = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(directory)
    try:
        stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=directory))
    except OSError as err:  # a folder not writable: named, not the stage it would have held
        raise type(err)(err.errno, err.strerror, str(directory)) from None
    lock = os.open(stage, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield stage
        names = sorted((p.name for p in stage.iterdir()), key=lambda name: name == last)
        for name in names:
            _fsync(stage / name)
        for name in names:
            os.replace(stage / name, directory / name)
        for name in set(drop) - set(names):
            (directory / name).unlink(missing_ok=True)
        _fsync(directory)
    except BaseException:
        if made:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        os.close(lock)


def check_writable(path: str | Path, flag: str = "--out", *, file: bool = False) -> None:
    """Refuse, naming ``flag``, a path that a write could not go to: a folder (made with its
    parents where missing) that is a file, or that cannot be made or written in; with ``file``, a
    file that is a folder, or whose folder is missing, a file, or not writable (a device or a pipe
    is written to as it is: it passes). For commands that work for minutes before they write, so
    that they fail before the work, not after it."""
    given = Path(path)
    absolute = given.absolute()
    if file:
        if absolute.is_dir():
            raise ValueError(f"{flag} {given} is a folder, not a file")
        if absolute.exists() and not absolute.is_file():
            return
        if not absolute.parent.exists():
            raise ValueError(f"{flag} {given}: there is no folder {absolute.parent}")
        existing = absolute.parent
    else:
        existing = next(p for p in (absolute, *absolute.parents) if p.exists())
    where = "" if existing == absolute else f": {existing}"
    if not existing.is_dir():
        raise ValueError(f"{flag} {given}{where} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {given}{where} cannot be written to")


def _remove_abandoned(directory: Path) -> None:
    for stage in directory.glob(STAGE_PREFIX + "*"):
        if not stage.is_dir():
            continue
        lock = os.open(stage, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a write in progress
        finally:
            os.close(lock)
        logger.warning("removing %s, left by a write into %s that was stopped", stage.name, directory)
        shutil.rmtree(stage, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a directory's entries) to disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
