"""The scale plot of docs/benchmarks.md: ``/duplicates`` latency and memory per question against
the number of questions, from the JSON lines that ``bench/service.py`` (one per corpus size) and
``bench/ann.py`` (the index alone, for sizes the service was not loaded with) print last.

    python bench/service.py --questions 100000 | tail -1 > build/service-100k.json   # and so on
    python bench/plot_scale.py build/service-*.json --ann build/ann-10m.json --out docs/img/scale.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("services", type=Path, nargs="+", help="JSON lines of bench/service.py")
    parser.add_argument("--ann", type=Path, nargs="*", default=[], help="JSON lines of bench/ann.py")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    runs = sorted((json.loads(p.read_text()) for p in args.services), key=lambda run: run["questions"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = [run["questions"] for run in runs]
    for clients, style in (("1", "o-"), ("64", "s-")):
        for pct in ("p50", "p99"):
            values = [run["results"]["/duplicates"][clients][f"{pct}_ms"] for run in runs]
            left.plot(sizes, values, style, label=f"{pct}, {clients} client{'s' if clients != '1' else ''}")
    left.set(xlabel="questions", ylabel="ms", title="/duplicates latency (k = 10, over HTTP)", xscale="log")
    right.plot(sizes, [run["results"]["rss_per_question"] for run in runs], "o-", label="service, in all")
    right.plot(sizes, [run["results"]["marginal_rss_per_question"] for run in runs], "s-", label="service, above empty")
    ann = sorted((json.loads(p.read_text()) for p in args.ann), key=lambda run: run["size"])
    if ann:
        right.plot(
            [run["size"] for run in ann],
            [run["index_bytes_per_vector"] for run in ann],
            "^--",
            label="HNSW index alone (bench/ann.py)",
        )
    right.set(xlabel="questions", ylabel="bytes per question", title="resident memory", xscale="log", yscale="log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"dupq serve, default settings (auto index), {runs[0]['cores']} cores shared with wrk")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
