"""Replicas on PostgreSQL against one service on SQLite: write and search latency on each store,
and how long a write on one replica takes to reach the others.

    python bench/replicas.py [--questions 10000] [--writes 300] [--replicas 3] [--store-url URL]

Without ``--store-url`` it starts a PostgreSQL server of its own (``initdb`` in a temporary
directory, ``fsync`` on, as a real deployment has it; see tests/postgres.py). It starts one
``dupq serve`` on a fresh SQLite data directory and ``--replicas`` on one fresh PostgreSQL
database, all with the bundled model and default settings, loads ``--questions`` real Quora
questions into each store over HTTP, then measures, one request at a time:

- writes: ``POST /questions`` of one new question, ``--writes`` times, on SQLite and on a replica
  (committed in the store when answered: SQLite ``synchronous=FULL``, PostgreSQL's commit);
- searches: ``POST /duplicates`` (k=10), as many times, on each;
- propagation: a write on one replica, then ``GET /questions/{id}`` on the next replica in a
  tight loop until it answers 200: the delay from the write's answer to the first 200, and from
  the moment the write was sent.

Prints one JSON object; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service import distinct_questions, wait_ready  # noqa: E402
from tests.app.server import free_port  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "qqp" / "train.tsv.gz"


def request(url: str, method: str = "GET", body: Any = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def serve(data_dir: Path, store_url: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "DUPQ_LOG_LEVEL": "WARNING"}
    if store_url:
        env["DUPQ_STORE_URL"] = store_url
    dupq = Path(sys.executable).parent / "dupq"
    argv = [str(dupq), "serve", "--port", str(port), "--data-dir", str(data_dir)]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout=300)
    return process, url


def millis(samples: list[float]) -> dict[str, float]:
    x = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(x, 50)), 2), "p99_ms": round(float(np.percentile(x, 99)), 2)}


def timed(calls: list[tuple[str, str, Any]]) -> list[float]:
    took = []
    for url, method, body in calls:
        started = time.perf_counter()
        status = request(url, method, body)
        took.append(time.perf_counter() - started)
        assert 200 <= status < 300, (url, status)
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=10_000)
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--store-url", help="an empty PostgreSQL database (default: a server of its own)")
    args = parser.parse_args(argv)

    questions = distinct_questions(DATA, args.questions + 3 * args.writes)
    preload, fresh = questions[: args.questions], questions[args.questions :]
    work = Path(tempfile.mkdtemp(prefix="dupq-bench-replicas-"))
    pg = None if args.store_url else PostgresServer(fsync=True)
    store_url = args.store_url or (pg.new_database() if pg else None)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        sqlite_proc, sqlite_url = serve(work / "sqlite", None)
        processes.append(sqlite_proc)
        replicas = []
        for n in range(args.replicas):
            process, url = serve(work / f"replica-{n}", store_url)
            processes.append(process)
            replicas.append(url)
        for url in (sqlite_url, replicas[0]):
            for start in range(0, len(preload), 256):
                batch = [{"id": f"p{start + i}", "text": t} for i, t in enumerate(preload[start : start + 256])]
                assert request(url + "/questions", "POST", {"questions": batch}) == 201

        result: dict[str, Any] = {"questions": args.questions, "writes": args.writes, "replicas": args.replicas}
        for name, url, texts in (
            ("sqlite", sqlite_url, fresh[: args.writes]),
            ("postgresql", replicas[0], fresh[args.writes : 2 * args.writes]),
        ):
            writes = timed(
                [
                    (url + "/questions", "POST", {"questions": [{"id": f"w-{name}-{i}", "text": t}]})
                    for i, t in enumerate(texts)
                ]
            )
            searches = timed([(url + "/duplicates", "POST", {"question": t, "k": 10}) for t in preload[: args.writes]])
            result[name] = {"write": millis(writes), "duplicates": millis(searches)}

        from_answer, from_send = [], []
        for i, text in enumerate(fresh[2 * args.writes :]):
            writer, reader = replicas[i % len(replicas)], replicas[(i + 1) % len(replicas)]
            qid = f"prop-{i}"
            sent = time.perf_counter()
            assert request(writer + "/questions", "POST", {"questions": [{"id": qid, "text": text}]}) == 201
            answered = time.perf_counter()
            while request(f"{reader}/questions/{qid}") != 200:
                assert time.perf_counter() - answered < 10, "not propagated in 10 s"
            found = time.perf_counter()
            from_answer.append(found - answered)
            from_send.append(found - sent)
        result["propagation"] = {
            "from_write_answered": {**millis(from_answer), "max_ms": round(max(from_answer) * 1000, 2)},
            "from_write_sent": {**millis(from_send), "max_ms": round(max(from_send) * 1000, 2)},
            "samples": len(from_answer),
        }
        sizes = {json.loads(urllib.request.urlopen(url + "/ready").read())["index_size"] for url in replicas}
        result["replica_index_sizes_agree"] = len(sizes) == 1
        print(json.dumps(result, indent=2))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        if pg is not None:
            pg.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
