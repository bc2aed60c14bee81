"""HTTP benchmark of ``dupq serve`` with the shipped model: requests/s and p50/p99 latency of
/similarity and /duplicates at 1, 16 and 64 concurrent clients, over an index of Quora questions
(100,000 by default), with wrk (Debian package ``wrk``) as the load generator.

    python bench/service.py [--questions 100000] [--seconds 10] [--clients 1,16,64] [--index-kind auto]
    python bench/service.py --questions 1000000 --load index --routes /duplicates

The queries are 2,000 real questions kept out of the index. The training file holds about 177,000
other distinct questions; past that, the index is filled with made-up questions, each two real
ones joined ("How do I learn Python? Why is the sky blue?"), encoded by the model like any other.
The questions are loaded as a new user would, over HTTP into the running service (``--load
http``, 256 per request: under ``auto`` the switch to HNSW happens on the way), or with ``dupq
index`` before it starts (``--load index``, quicker at a million). The data directory is built
once and kept in build/. ``--prepared DIR`` serves a data directory as it is instead, such as the
ten million questions of ``bench/synthetic_store.py``, with held-out dev questions as queries.

Besides wrk's figures it prints the server's resident memory (VmRSS) per question, in all and
above what the same server holds with an empty store (measured first, same settings), and, for an
index other than flat, recall@10 of ``/duplicates`` over HTTP against exact search over the stored
vectors (what a ``DUPQ_INDEX_KIND=flat`` server on the same store answers). The server and wrk
share this machine's cores, as they would on a 2-core host with a local proxy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.training.data import iter_pairs, question_key  # noqa: E402


def distinct_questions(path: Path, n: int) -> list[str]:
    seen: dict[str, str] = {}
    for pair in iter_pairs(path):
        for q in (pair.question1, pair.question2):
            seen.setdefault(question_key(q), q)
        if len(seen) >= n:
            break
    return list(seen.values())[:n]


def fill(real: list[str], n: int, seed: int = 0, max_chars: int = 1000) -> list[str]:
    """``real``, then made-up questions (two real ones joined) until there are ``n`` distinct ones,
    each at most ``max_chars`` long (the service's default limit: ``dupq index`` skips longer ones)."""
    rng = random.Random(seed)
    real = [q for q in real if len(q.strip()) <= max_chars]
    texts, seen = list(real[:n]), {question_key(q) for q in real[:n]}
    while len(texts) < n:
        text = f"{rng.choice(real)} {rng.choice(real)}"
        if len(text) <= max_chars and question_key(text) not in seen:
            seen.add(question_key(text))
            texts.append(text)
    return texts


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def http_recall(url: str, data_dir: Path, queries: list[str], k: int = 10) -> float:
    """recall@k of /duplicates against exact inner-product search over every stored vector,
    read from the store 200,000 rows at a time (ten million would not fit in memory beside the
    server's index)."""
    import sqlite3

    import numpy as np

    vectors = np.array(  # 256 a request: the service's batch limit
        [
            v
            for i in range(0, len(queries), 256)
            for v in post(url + "/embed", {"questions": queries[i : i + 256]})["embeddings"]
        ],
        dtype=np.float32,
    )
    best = np.full((len(queries), k), -np.inf, np.float32)
    best_ids = np.full((len(queries), k), "", dtype=object)
    with sqlite3.connect(data_dir / "questions.sqlite3") as db:
        cursor = db.execute("SELECT id, embedding FROM questions")
        while rows := cursor.fetchmany(200_000):
            matrix = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(len(rows), -1)
            scores = vectors @ matrix.T
            top = np.argsort(-scores, axis=1)[:, :k]
            ids = np.array([row[0] for row in rows], dtype=object)
            merged = np.concatenate([best, np.take_along_axis(scores, top, axis=1)], axis=1)
            merged_ids = np.concatenate([best_ids, ids[top]], axis=1)
            order = np.argsort(-merged, axis=1)[:, :k]
            best, best_ids = np.take_along_axis(merged, order, axis=1), np.take_along_axis(merged_ids, order, axis=1)
    hits = 0
    for query, exact in zip(queries, best_ids, strict=True):
        found = {m["id"] for m in post(url + "/duplicates", {"question": query, "k": k})["matches"]}
        hits += len(found & set(exact))
    return hits / (k * len(queries))


def rss_bytes(pid: int | str = "self", field: str = "VmRSS") -> int:
    """A process's resident memory now (VmRSS), or at its peak so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


def load_over_http(url: str, listing: list[str]) -> None:
    started = time.perf_counter()
    for start in range(0, len(listing), 256):
        batch = [{"id": f"bench-{i}", "text": t} for i, t in enumerate(listing[start : start + 256], start)]
        post(url + "/questions", {"questions": batch})
    print(f"loaded {len(listing)} questions over HTTP in {time.perf_counter() - started:.1f} s", flush=True)


def settle(url: str, timeout: float = 1800) -> dict:
    """/info once no namespace of auto's size for HNSW is still flat (the switch is done); the
    server is given this process's environment, DUPQ_HNSW_FROM included."""
    hnsw_from = int(os.environ.get("DUPQ_HNSW_FROM", "10000"))
    deadline = time.monotonic() + timeout
    while True:
        info = get(url + "/info")
        if info["index_kind"] != "auto" or info["index_size"] < hnsw_from or not info["index_structures"]["flat"]:
            return info
        if time.monotonic() > deadline:
            raise TimeoutError("the index did not switch to HNSW")
        time.sleep(0.5)


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_ready(url: str, timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return get(url + "/ready")
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("server not ready")


def parse_wrk(output: str) -> dict[str, float]:
    def ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    result = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "90", "99"):
        result[f"p{pct}_ms"] = ms(re.search(rf"\s{pct}%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    socket_errors = re.search(r"Socket errors: (.*)", output)
    result["socket_errors"] = socket_errors.group(1) if socket_errors else "none"  # type: ignore[assignment]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "dupq-qqp"))
    parser.add_argument("--pairs", default=str(ROOT.parent / "shared" / "data" / "qqp" / "train.tsv.gz"))
    parser.add_argument("--questions", type=int, default=100_000, help="questions in the index")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--index-kind", default="auto", choices=["auto", "flat", "hnsw"])
    parser.add_argument("--load", default="http", choices=["http", "index"], help="how the questions get in")
    parser.add_argument("--routes", default="/similarity,/duplicates")
    parser.add_argument("--recall-queries", type=int, default=200, help="queries for recall@10 (not flat)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "build" / "bench-data")
    parser.add_argument(
        "--prepared", type=Path, help="serve this data directory as it is (bench/synthetic_store.py makes one)"
    )
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    if args.prepared:  # it holds every training question: the queries are the dev file's
        queries = distinct_questions(Path(args.pairs).with_name("dev.tsv.gz"), 2000)
        data_dir = args.prepared
        with sqlite3.connect(data_dir / "questions.sqlite3") as db:
            indexed = [""] * db.execute("SELECT COUNT(*) FROM questions").fetchone()[0]
    else:
        real = distinct_questions(Path(args.pairs), args.questions + 2000)
        indexed, queries = fill(real[:-2000], args.questions), real[-2000:]
        data_dir = args.data_dir / f"{args.index_kind}-{args.questions}"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "DUPQ_LOG_LEVEL": "WARNING", "DUPQ_INDEX_KIND": args.index_kind, "DUPQ_MODEL_DIR": args.model}
    url = f"http://127.0.0.1:{args.port}"

    def serve(directory: Path) -> subprocess.Popen:
        command = [bin_dir / "dupq", "serve", "--port", str(args.port), "--data-dir", str(directory)]
        return subprocess.Popen(command, env=env)

    empty_dir = args.data_dir / "empty"
    shutil.rmtree(empty_dir, ignore_errors=True)
    server = serve(empty_dir)
    try:
        wait_ready(url)
        post(url + "/similarity", {"question1": queries[0], "question2": queries[1]})
        post(url + "/duplicates", {"question": queries[0]})
        empty_rss = rss_bytes(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    print(f"empty server: {empty_rss / 2**20:.0f} MiB resident", flush=True)
    load_seconds = None
    if not (data_dir / "questions.sqlite3").exists() and args.load == "index":
        listing = data_dir.parent / f"questions-{args.questions}.txt"
        data_dir.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"bench-{i}\t{t}\n" for i, t in enumerate(indexed)), encoding="utf-8")
        started = time.perf_counter()
        command = [bin_dir / "dupq", "index", str(listing), "--data-dir", str(data_dir), "--model-dir", args.model]
        subprocess.run([*command, "--index-kind", args.index_kind], check=True)
        load_seconds = time.perf_counter() - started
        print(f"indexed {len(indexed)} questions in {load_seconds:.1f} s", flush=True)
    fresh = not (data_dir / "questions.sqlite3").exists()
    started = time.perf_counter()
    server = serve(data_dir)
    results: dict[str, Any] = {"empty_rss_bytes": empty_rss}
    try:
        ready = wait_ready(url)
        results["start_s"] = round(time.perf_counter() - started, 2)
        print(f"server ready in {results['start_s']} s: {ready}", flush=True)
        if fresh:
            started = time.perf_counter()
            load_over_http(url, indexed)
            load_seconds = time.perf_counter() - started
        info = settle(url)
        results["load_s"] = load_seconds
        results["index_structures"] = info["index_structures"]
        print(f"index: {info['index_size']} questions, {info['index_structures']}", flush=True)
        rng = random.Random(0)
        bodies = {
            "/similarity": [
                json.dumps({"question1": rng.choice(queries), "question2": rng.choice(queries)}) for _ in range(5000)
            ],
            "/duplicates": [json.dumps({"question": rng.choice(queries), "k": 10}) for _ in range(5000)],
        }
        for route, lines in bodies.items():
            if route not in args.routes.split(","):
                continue
            body_file = data_dir.parent / f"bodies{route.replace('/', '-')}.jsonl"
            body_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
            results[route] = per_clients = {}
            for clients in (int(c) for c in args.clients.split(",")):
                output = subprocess.run(
                    [
                        "wrk",
                        "-t",
                        "1",
                        "-c",
                        str(clients),
                        "-d",
                        f"{args.seconds}s",
                        "--latency",
                        "--timeout",
                        "5s",
                        "-s",
                        str(ROOT / "bench" / "wrk_post.lua"),
                        url + route,
                    ],
                    env={**os.environ, "WRK_BODIES": str(body_file)},
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                figures = parse_wrk(output)
                per_clients[str(clients)] = figures
                print(
                    f"{route:12s} {clients:3d} clients: {figures['requests_per_s']:8.1f} req/s, "
                    f"p50 {figures['p50_ms']:7.2f} ms, p99 {figures['p99_ms']:7.2f} ms, "
                    f"non-2xx {int(figures['non_2xx'])}",
                    flush=True,
                )
        metrics = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
        # Prometheus writes a histogram's _count before its _sum: read each on its own.
        calls = re.search(r"^dupq_encoder_batch_size_count (\S+)$", metrics, re.MULTILINE)
        questions = re.search(r"^dupq_encoder_batch_size_sum (\S+)$", metrics, re.MULTILINE)
        if calls and questions and float(calls.group(1)):
            mean = float(questions.group(1)) / float(calls.group(1))
            print(f"mean encoder batch: {mean:.1f} questions per call, {float(calls.group(1)):.0f} calls", flush=True)
        rss = rss_bytes(server.pid)
        results["rss_bytes"] = rss
        results["rss_per_question"] = round(rss / len(indexed))
        results["marginal_rss_per_question"] = round((rss - empty_rss) / len(indexed))
        print(
            f"resident memory: {rss / 2**20:.0f} MiB, {rss / len(indexed):.0f} B per question in all, "
            f"{(rss - empty_rss) / len(indexed):.0f} B per question above the empty server",
            flush=True,
        )
        if args.index_kind != "flat":
            started = time.perf_counter()
            recall = http_recall(url, data_dir, queries[: args.recall_queries])
            results["recall@10"] = recall
            print(
                f"/duplicates recall@10 against exact search: {recall:.4f} ({args.recall_queries} queries, "
                f"{time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(30)
    print(
        json.dumps(
            {"index_kind": args.index_kind, "questions": len(indexed), "cores": os.cpu_count(), "results": results}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
