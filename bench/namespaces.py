"""Which index layout for namespaces: one FAISS index per namespace (what app/index.py does), or
one index for the whole store with the namespace as an ID selector. Two shapes of the same
100,000 vectors (512-d, random unit rows; the layout, not the model, is measured): one namespace
of 100,000, and 2,000 namespaces of 50. Prints the time of one query, and of a batch of 16 queries
of one namespace, for each layout and shape, and the resident memory each layout adds.

    python bench/namespaces.py [--vectors 100000] [--namespaces 2000] [--dim 512]
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

from app.index import IndexParams, NamespacedIndex  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def per_query_ms(search: object, queries: np.ndarray, batch: int, rounds: int) -> float:
    started = time.perf_counter()
    for r in range(rounds):
        search(r, queries[(r * batch) % len(queries) :][:batch])  # type: ignore[operator]
    return (time.perf_counter() - started) / rounds * 1000


def measure(x: np.ndarray, queries: np.ndarray, count: int, rounds: int) -> dict[str, object]:
    """Both layouts over ``x`` cut into ``count`` namespaces (row i in namespace i mod count)."""
    n, dim = x.shape
    keys = np.arange(n, dtype=np.int64)
    members = {f"ns{j}": keys[j::count] for j in range(count)}
    before = rss_mib()
    split = NamespacedIndex(dim, IndexParams(kind="flat"))
    split.add(keys, x, [f"ns{i % count}" for i in range(n)])
    split_mib = rss_mib() - before
    before = rss_mib()
    shared = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    shared.add_with_ids(x, keys)
    shared_mib = rss_mib() - before

    def one_index_per_namespace(r: int, q: np.ndarray) -> None:
        split.search(f"ns{r % count}", q, 10)

    def one_index_with_a_selector(r: int, q: np.ndarray) -> None:
        params = faiss.SearchParameters()
        selector = faiss.IDSelectorBatch(members[f"ns{r % count}"])
        params.sel = selector
        shared.search(q, 10, params=params)

    row: dict[str, object] = {}
    for layout, search, mib in (
        ("one index per namespace", one_index_per_namespace, split_mib),
        ("one index, namespace selector", one_index_with_a_selector, shared_mib),
    ):
        row[layout] = {
            "ms_per_query": round(per_query_ms(search, queries, 1, rounds), 3),
            "ms_per_batch_of_16": round(per_query_ms(search, queries, 16, rounds // 2), 3),
            "rss_mib": round(mib),
        }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--namespaces", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.vectors, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[rng.choice(args.vectors, 256, replace=False)]
    results: dict[str, object] = {"vectors": args.vectors, "dim": args.dim}
    for shape, count in (("one namespace", 1), (f"{args.namespaces} namespaces", args.namespaces)):
        results[shape] = measure(x, queries, count, args.rounds)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
