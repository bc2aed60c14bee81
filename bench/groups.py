"""``find_groups`` (``POST /groups``, ``dupq groups``) on real questions: the time of the
neighbour pass and of the whole, and the recall of its neighbourhoods (the questions at or above
tau from a question) against an exact scan, on a sample of questions.

    python bench/groups.py [--questions 100000] [--sample 2000]

The questions are the training file's distinct questions, then made-up ones (two real ones
joined), encoded by the shipped model, as in bench/service.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.groups import _greedy, neighbourhoods  # noqa: E402
from bench.service import distinct_questions, fill  # noqa: E402
from model.encoder import load_encoder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--pairs", type=Path, default=ROOT.parent / "shared/data/qqp/train.tsv.gz")
    args = parser.parse_args(argv)
    encoder = load_encoder(ROOT / "models/dupq-qqp", threads=2)
    texts = fill(distinct_questions(args.pairs, args.questions), args.questions)
    started = time.monotonic()
    vectors = encoder.encode(texts)
    encoded = time.monotonic() - started
    tau = encoder.threshold
    started = time.monotonic()
    found = neighbourhoods(vectors, tau, threads=2)
    searched = time.monotonic() - started
    groups = _greedy(found, 2)
    total = time.monotonic() - started
    rows = np.random.default_rng(0).choice(len(vectors), size=min(args.sample, len(vectors)), replace=False)
    exact = [set(np.flatnonzero(vectors @ vectors[r] >= tau).tolist()) for r in rows]
    hits = sum(len(e & set(found[r].tolist())) for r, e in zip(rows, exact, strict=True))
    result = {
        "questions": len(vectors),
        "threshold": round(tau, 4),
        "encode_seconds": round(encoded, 1),
        "neighbour_pass_seconds": round(searched, 1),
        "groups_seconds": round(total, 1),
        "groups": len(groups),
        "grouped_questions": sum(len(g) for _, g in groups),
        "neighbourhood_recall": round(hits / sum(len(e) for e in exact), 4),
        "sampled_questions": len(rows),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
