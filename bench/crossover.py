"""Where exact search stops being cheap: the flat index against the service's HNSW (float16,
M = 32, efSearch 128) at growing sizes, on the shipped model's vectors of real questions. This is
what ``DUPQ_HNSW_FROM`` (auto's switching size) is chosen from.

    python bench/crossover.py [--sizes 2000,5000,10000,20000,50000,100000] [--queries 500]

The collection is the distinct questions of the training file, the queries held-out questions of
the dev file. For each size: the flat index's time per query alone and in a batch of 16 (as
concurrent requests are searched together), HNSW's build time, its time per query alone, and its
recall@10 against the flat index. One thread for searches, as a loaded 2-core server gives one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.index import VectorIndex  # noqa: E402
from bench.service import distinct_questions  # noqa: E402
from model.encoder import load_encoder  # noqa: E402


def per_query_ms(index: VectorIndex, queries: np.ndarray, batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        index.search(queries[start : start + batch], 10)
    return (time.perf_counter() - started) * 1000 / len(queries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "dupq-qqp"))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "qqp")
    parser.add_argument("--sizes", default="2000,5000,10000,20000,50000,100000")
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    encoder = load_encoder(args.model, threads=2)
    texts = distinct_questions(args.data / "train.tsv.gz", max(sizes))
    known = set(texts)
    queries_text = [q for q in distinct_questions(args.data / "dev.tsv.gz", 3 * args.queries) if q not in known]
    started = time.perf_counter()
    vectors = encoder.encode(texts)
    queries = encoder.encode(queries_text[: args.queries])
    print(f"encoded {len(texts)} questions in {time.perf_counter() - started:.1f} s", flush=True)
    faiss.omp_set_num_threads(1)
    rows = []
    for size in sizes:
        keys = np.arange(size, dtype=np.int64)
        flat = VectorIndex(encoder.dim, "flat")
        flat.add(keys, vectors[:size])
        hnsw = VectorIndex(encoder.dim, "hnsw")
        faiss.omp_set_num_threads(2)
        started = time.perf_counter()
        hnsw.add(keys, vectors[:size])
        build = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        _, exact = flat.search(queries, 10)
        _, approx = hnsw.search(queries, 10)
        recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)]))
        row = {
            "size": size,
            "flat_ms": round(per_query_ms(flat, queries, 1), 3),
            "flat_batch16_ms": round(per_query_ms(flat, queries, 16), 3),
            "hnsw_ms": round(per_query_ms(hnsw, queries, 1), 3),
            "hnsw_build_s": round(build, 2),
            "hnsw_recall@10": round(recall, 4),
        }
        rows.append(row)
        print(
            f"{size:>8,}: flat {row['flat_ms']:.3f} ms a query ({row['flat_batch16_ms']:.3f} in batches of 16), "
            f"HNSW {row['hnsw_ms']:.3f} ms, recall@10 {recall:.4f}, built in {build:.1f} s (2 threads)",
            flush=True,
        )
    print(json.dumps({"dim": encoder.dim, "queries": len(queries), "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
