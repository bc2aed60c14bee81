"""Soak test of ``dupq serve``: minutes of mixed traffic from many clients, then a check that
nothing failed, that memory stayed flat once warm, and that every acknowledged write was kept.

    python bench/soak.py [--minutes 5] [--clients 16] [--data-dir build/bench-data/auto-100000]

The server runs with default settings on a copy of a data directory (by default the 100,000
questions that ``bench/service.py`` loads; pass ``--data-dir ''`` to start empty). Each client
loops over a mix: /similarity (40 %), /duplicates (40 %), an add of 1 to 8 new questions with
ids of its own (15 %), and a delete of one of its acknowledged adds (5 %). Every answer must be a
2xx (a 503 with Retry-After counts as an error too: nothing here should shed load). The server's
resident memory and index size are sampled every 5 s; memory is flat when, after the first third
of the run (warm-up), it grows by no more than the questions added take (about a kilobyte each:
docs/benchmarks.md); the mean of the last third against the middle third is printed too. At
the end, every acknowledged add not deleted since must be found by GET with its text, and every
acknowledged delete must answer 404; then the server is killed with SIGKILL, restarted on the
same directory, and checked again.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service import distinct_questions, rss_bytes, wait_ready  # noqa: E402


class Connection:
    """One keep-alive HTTP connection, as a client library would hold."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def client(
    number: int,
    port: int,
    texts: list[str],
    stop: threading.Event,
    added: dict[str, str],
    deleted: set[str],
    errors: list[str],
    counts: dict[str, int],
    lock: threading.Lock,
) -> None:
    rng = random.Random(number)
    conn = Connection(port)
    mine: list[str] = []
    serial = 0
    while not stop.is_set():
        roll = rng.random()
        if roll < 0.4:
            op, status, _ = (
                "similarity",
                *conn.call("POST", "/similarity", {"question1": rng.choice(texts), "question2": rng.choice(texts)}),
            )
        elif roll < 0.8:
            op, status, _ = "duplicates", *conn.call("POST", "/duplicates", {"question": rng.choice(texts), "k": 10})
        elif roll < 0.95 or not mine:
            batch = []
            for _ in range(rng.randint(1, 8)):
                serial += 1
                batch.append({"id": f"soak-{number}-{serial}", "text": f"{rng.choice(texts)} ({number}/{serial})"})
            op, (status, _) = "add", conn.call("POST", "/questions", {"questions": batch})
            if status == 201:
                with lock:
                    for item in batch:
                        added[item["id"]] = item["text"]
                mine += [item["id"] for item in batch]
        else:
            victim = mine.pop(rng.randrange(len(mine)))
            op, (status, _) = "delete", conn.call("DELETE", f"/questions/{victim}")
            if status == 204:
                with lock:
                    deleted.add(victim)
                    added.pop(victim, None)
        with lock:
            counts[op] = counts.get(op, 0) + 1
            if not 200 <= status < 300:
                errors.append(f"{op}: HTTP {status}")


def check_writes(port: int, added: dict[str, str], deleted: set[str]) -> tuple[int, int]:
    """Acknowledged adds missing or changed, acknowledged deletes still there."""
    conn = Connection(port)
    missing = sum(
        1
        for qid, text in added.items()
        if (found := conn.call("GET", f"/questions/{qid}"))[0] != 200 or found[1]["text"] != text
    )
    kept = sum(1 for qid in deleted if conn.call("GET", f"/questions/{qid}")[0] != 404)
    return missing, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--data-dir", default=str(ROOT / "build" / "bench-data" / "auto-100000"))
    parser.add_argument("--pairs", default=str(ROOT.parent / "shared" / "data" / "qqp" / "dev.tsv.gz"))
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args(argv)
    work = ROOT / "build" / "bench-data" / "soak"
    shutil.rmtree(work, ignore_errors=True)
    if args.data_dir:
        shutil.copytree(args.data_dir, work)
    else:
        work.mkdir(parents=True)
    texts = distinct_questions(Path(args.pairs), 5000)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "DUPQ_LOG_LEVEL": "WARNING"}
    url = f"http://127.0.0.1:{args.port}"

    def serve() -> subprocess.Popen:
        command = [bin_dir / "dupq", "serve", "--port", str(args.port), "--data-dir", str(work)]
        server = subprocess.Popen(command, env=env)
        wait_ready(url)
        return server

    server = serve()
    start_size: int = Connection(args.port).call("GET", "/info")[1]["index_size"]
    added: dict[str, str] = {}
    deleted: set[str] = set()
    errors: list[str] = []
    counts: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=client, args=(n, args.port, texts, stop, added, deleted, errors, counts, lock), daemon=True
        )
        for n in range(args.clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[tuple[float, int, int]] = []  # (seconds, resident bytes, index size)
    end = started + args.minutes * 60
    probe = Connection(args.port)
    while time.monotonic() < end:
        time.sleep(5)
        size = probe.call("GET", "/info")[1]["index_size"]
        samples.append((time.monotonic() - started, rss_bytes(server.pid), size))
        print(
            f"{samples[-1][0]:6.0f} s: {samples[-1][1] / 2**20:6.0f} MiB resident, {size} questions, "
            f"{sum(counts.values())} requests, {len(errors)} errors",
            flush=True,
        )
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    third = max(1, len(samples) // 3)
    middle = sum(r for _, r, _ in samples[third : 2 * third]) / max(1, len(samples[third : 2 * third]))
    last = sum(r for _, r, _ in samples[2 * third :]) / max(1, len(samples[2 * third :]))
    # The index grows with the adds: memory is flat when it grows by about what they take.
    grown = samples[-1][2] - samples[third][2]
    per_added = (samples[-1][1] - samples[third][1]) / grown if grown > 0 else None
    info = Connection(args.port).call("GET", "/info")[1]
    missing, kept = check_writes(args.port, added, deleted)
    server.send_signal(signal.SIGKILL)
    server.wait()
    server = serve()
    missing_after_kill, kept_after_kill = check_writes(args.port, added, deleted)
    size_after_kill = Connection(args.port).call("GET", "/info")[1]["index_size"]
    server.terminate()
    server.wait(60)
    result = {
        "minutes": round(elapsed / 60, 2),
        "clients": args.clients,
        "requests": counts,
        "requests_per_s": round(sum(counts.values()) / elapsed, 1),
        "errors": len(errors),
        "first_errors": errors[:5],
        "rss_mib_middle_third": round(middle / 2**20, 1),
        "rss_mib_last_third": round(last / 2**20, 1),
        "rss_growth_last_vs_middle": round(last / middle - 1, 4),
        "rss_bytes_per_question_added_after_the_first_third": round(per_added) if per_added is not None else None,
        "index_size": {"start": start_size, "end": info["index_size"], "after_kill": size_after_kill},
        "expected_size": start_size + len(added),
        "acknowledged_adds_kept": len(added),
        "acknowledged_deletes": len(deleted),
        "missing_adds": missing,
        "deletes_not_honoured": kept,
        "missing_adds_after_kill": missing_after_kill,
        "deletes_not_honoured_after_kill": kept_after_kill,
    }
    print(json.dumps(result))
    ok = not errors and not (missing or kept or missing_after_kill or kept_after_kill)
    ok = ok and info["index_size"] == size_after_kill == start_size + len(added)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
