"""How long a replica that vanished holds PostgreSQL's write lock, which every replica's writes wait
for: a client takes it in a write transaction, as a replica's write does, then vanishes as if its
machine lost power (iptables drops every packet to and from its connection); the script times how
long another client waits for the lock, with a connection as dupq opens them (TCP keepalives and a
user timeout on both sides) and with a plain one (the system's defaults), up to ``--limit`` seconds.

    sudo .venv/bin/python bench/vanished_client.py [--limit 120]

Needs root (iptables) and PostgreSQL's binaries (as the tests do: tests/postgres.py); prints JSON.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.pgstore import WRITE_LOCK, PostgresStore
from tests.postgres import PostgresServer


def held_for(url: str, holder: psycopg.Connection[Any], limit: float) -> float | None:
    """Seconds until another client gets the lock that ``holder`` holds, once ``holder``'s packets
    are dropped; None if not within ``limit``."""
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))  # a write transaction, left open
    with socket.fromfd(holder.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM) as copy:  # a dup: closing it
        port = copy.getsockname()[1]  # leaves the connection open
    rules = [["INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"]]
    rules += [["OUTPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP"]]
    for rule in rules:
        subprocess.run(["iptables", "-I", *rule], check=True)
    got = threading.Event()
    started = time.monotonic()

    def wait() -> None:
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
            got.set()
            other.execute("SELECT pg_advisory_unlock(%s)", (WRITE_LOCK,))

    threading.Thread(target=wait, daemon=True).start()
    try:
        return round(time.monotonic() - started, 1) if got.wait(limit) else None
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-D", *rule], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=float, default=120.0, help="longest wait timed (seconds)")
    args = parser.parse_args()
    server = PostgresServer()
    try:
        url = server.new_database()
        store = PostgresStore(url, dim=4)  # creates the schema
        results = {"dupq's connection": held_for(url, store.pool.getconn(), args.limit)}
        results["a plain connection"] = held_for(url, psycopg.connect(url), args.limit)
        print(json.dumps({"limit_s": args.limit, "held after its holder vanished, s (null: past the limit)": results}))
    finally:
        server.close()


if __name__ == "__main__":
    main()
