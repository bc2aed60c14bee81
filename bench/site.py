"""A site's own questions, over HTTP: ``dupq import`` of Quora questions with metadata into a fresh
``dupq serve`` (shipped model, default settings), then

- ``/duplicates`` latency unfiltered, with a filter that passes 0.1 % of the namespace, one that
  passes half of it, and with 1,000 ``exclude_ids``, and ``GET /questions/{id}/duplicates``
  (sequential requests: the latency of one search, not throughput);
- ``POST /groups`` over the whole namespace: time, groups found, members;
- ``GET /export``: time, and the server's resident memory before and after (an export streams);

    python bench/site.py [--questions 100000] [--queries 200]

Every question gets ``{"tag": "t<i mod 1000>", "status": "open"|"closed"}``: a tag passes 0.1 %
of them, a status half. The made-up questions past the ~177,000 distinct ones of the training
file are two real ones joined, as in bench/service.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.client import Client  # noqa: E402
from app.importer import import_file  # noqa: E402
from bench.service import distinct_questions, fill  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(call: object, n: int) -> tuple[float, float]:
    """p50 and p99 in ms of ``n`` sequential calls."""
    times = []
    for i in range(n):
        started = time.perf_counter()
        call(i)  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(n - 1, int(0.99 * n))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--pairs", type=Path, default=ROOT.parent / "shared/data/qqp/train.tsv.gz")
    args = parser.parse_args(argv)

    real = distinct_questions(args.pairs, args.questions + args.queries)
    queries, texts = real[: args.queries], fill(real[args.queries :], args.questions)
    work = Path(tempfile.mkdtemp(prefix="dupq-site-"))
    source = work / "questions.jsonl"
    with open(source, "w", encoding="utf-8") as out:
        for i, text in enumerate(texts):
            metadata = {"tag": f"t{i % 1000}", "status": "open" if i % 2 else "closed"}
            out.write(json.dumps({"id": f"s{i}", "text": text, "metadata": metadata}) + "\n")
    env = {**os.environ, "DUPQ_DATA_DIR": str(work / "data"), "DUPQ_LOG_LEVEL": "WARNING", "DUPQ_SEED_FILE": ""}
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(args.port)], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{args.port}"
    results: dict[str, object] = {"questions": args.questions, "cpus": os.cpu_count()}
    try:
        with Client(url, timeout=600) as client:
            for _ in range(600):
                try:
                    client.ready()
                    break
                except Exception:
                    time.sleep(0.5)
            started = time.monotonic()
            report = import_file(client, source)
            seconds = time.monotonic() - started
            results["import"] = {
                "questions": report.imported,
                "seconds": round(seconds, 1),
                "per_second": round(report.imported / seconds),
            }
            n = args.queries
            excluded = [f"s{i}" for i in range(0, 2000, 2)]
            cases = {
                "unfiltered": lambda i: client.duplicates(queries[i % n], k=10),
                "filter 0.1%": lambda i: client.duplicates(queries[i % n], k=10, filter={"tag": f"t{i % 1000}"}),
                "filter 50%": lambda i: client.duplicates(queries[i % n], k=10, filter={"status": "open"}),
                "exclude 1000 ids": lambda i: client.duplicates(queries[i % n], k=10, exclude_ids=excluded),
                "stored question": lambda i: client.question_duplicates(f"s{i * 37 % args.questions}", k=10),
            }
            for call in cases.values():
                call(0)  # warm
            latency = {name: timed(call, n) for name, call in cases.items()}
            base = latency["unfiltered"][0]
            results["duplicates_ms"] = {
                name: {"p50": round(p50, 2), "p99": round(p99, 2), "x_unfiltered": round(p50 / base, 2)}
                for name, (p50, p99) in latency.items()
            }
            filtered = client.duplicates(queries[0], k=10, filter={"tag": "t7"})["matches"]
            results["filter_0.1%_returns"] = len(filtered)
            started = time.monotonic()
            groups = client.groups()
            results["groups"] = {
                "seconds": round(time.monotonic() - started, 1),
                "groups": len(groups),
                "members": sum(g["size"] for g in groups),
                "largest": max((g["size"] for g in groups), default=0),
            }
            before = rss_mib(server.pid)
            started = time.monotonic()
            exported = sum(1 for _ in client.export())
            results["export"] = {
                "questions": exported,
                "seconds": round(time.monotonic() - started, 1),
                "rss_mib_before": round(before),
                "rss_mib_after": round(rss_mib(server.pid)),
            }
    finally:
        server.terminate()
        server.wait(60)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
