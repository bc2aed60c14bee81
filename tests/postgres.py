"""A real PostgreSQL server for the tests: a fresh cluster made with ``initdb`` in a temporary
directory, listening on 127.0.0.1 on a free port, stopped at the end.

As root (CI containers), the server runs as the ``postgres`` user, which owns the directory;
PostgreSQL refuses to run as root. ``fsync`` is off: the tests kill dupq and restart PostgreSQL
cleanly, never the machine, and it saves seconds per database. Without PostgreSQL installed the
tests that need it are skipped, unless ``DUPQ_REQUIRE_POSTGRES=1`` (``.ci/run``) makes that a
failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg


def _bindir() -> Path | None:
    if found := shutil.which("pg_ctl"):
        return Path(found).resolve().parent  # where pg_dump and pg_restore are too, not a link's folder
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """``fsync``: off for the tests (see above), on for benchmarks of write latency."""

    def __init__(self, fsync: bool = False) -> None:
        self.fsync = fsync
        bindir = _bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL is not installed (no pg_ctl)")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="dupq-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        argv = [str(self.bindir / tool), *args]
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, cwd=self.dir)

    def start(self) -> None:
        fsync = "on" if self.fsync else "off"
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync={fsync} -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
