"""The throughput plot of docs/benchmarks.md: requests/s and p99 latency against concurrent
clients, per route, from the JSON line that ``bench/service.py`` prints last.

    python bench/service.py | tail -1 > build/service.json
    python bench/plot_service.py build/service.json --out docs/img/throughput.png
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
    parser.add_argument("results", type=Path, help="the JSON line bench/service.py printed")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    run = json.loads(args.results.read_text())
    routes = {route: figures for route, figures in run["results"].items() if route.startswith("/")}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for route, by_clients in routes.items():
        clients = sorted(by_clients, key=int)
        x = [int(c) for c in clients]
        left.plot(x, [by_clients[c]["requests_per_s"] for c in clients], marker="o", label=route)
        right.plot(x, [by_clients[c]["p99_ms"] for c in clients], marker="o", label=route)
    title = f"{run['questions']:,} questions, {run['index_kind']} index, {run['cores']} cores shared with wrk"
    left.set(xlabel="concurrent clients", ylabel="requests/s", title="throughput", xscale="log")
    right.set(xlabel="concurrent clients", ylabel="p99 latency (ms)", title="tail latency", xscale="log")
    for ax in (left, right):
        ax.set_xticks([int(c) for c in next(iter(routes.values()))], labels=list(next(iter(routes.values()))))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
