"""An experiment, not part of the service: do two encoders find different duplicates?

Encodes every distinct question of a pair file with each encoder given (model directories, and
all-MiniLM-L6-v2 with ``--minilm``), then scores retrieval as ``dupq evaluate`` does (every
question indexed; each side of each duplicate pair queries for the other) for each encoder alone
and for their unit vectors side by side (concatenated, then normalized: the mean of their
cosines). It prints MRR@10 and R@1 of each, and how often exactly one of the first two finds the
duplicate first. If two encoders side by side rank much better than either alone, each knows
something the other lacks, which one network trained to carry both has not yet learned.

    python scripts/side_by_side.py --model models/dupq-qqp [--model DIR ...] [--minilm] \
        [--pairs ../shared/data/qqp/dev.tsv.gz] [--valid build/valid.tsv]

With ``--valid``, each also gets the pair accuracy on ``--pairs`` at the threshold best on the
``--valid`` pairs (for the encoders alone too, so they are compared alike, not at their stored tau).

``--minilm`` needs the train extra and runs MiniLM in float32 (as ``dupq evaluate --reference``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.data import load_pairs  # noqa: E402
from model.metrics import best_threshold, classification, pair_dots, retrieval  # noqa: E402
from model.model_dir import load_encoder  # noqa: E402
from model.train import score_pairs  # noqa: E402


def first_hits(vectors: np.ndarray, queries: np.ndarray, targets: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each query, whether its target is the nearest question other than itself (``chunk``
    queries at a time, as ``retrieval`` scores them, so no matrix of every query by every question)."""
    hits = np.empty(len(queries), dtype=bool)
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        sims = vectors[q] @ vectors.T
        sims[np.arange(len(q)), q] = -np.inf
        hits[start : start + chunk] = sims.argmax(1) == targets[start : start + chunk]
    return hits


def with_side_by_side(vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``vectors`` (each encoder's, rows in the same order) and, under "side by side", all of them
    concatenated and normalized again."""
    together = np.hstack(list(vectors.values()))
    return {**vectors, "side by side": together / np.linalg.norm(together, axis=1, keepdims=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="model directory (repeatable)")
    parser.add_argument("--minilm", action="store_true", help="add all-MiniLM-L6-v2 (float32)")
    parser.add_argument("--pairs", default=str(ROOT.parent / "shared/data/qqp/dev.tsv.gz"))
    parser.add_argument("--valid", help="pairs to choose each threshold on, for accuracy on --pairs")
    args = parser.parse_args()
    encoders = {path: load_encoder(path).encode for path in args.model}
    if args.minilm:
        from model.evaluate import minilm_encoder

        encoders["all-MiniLM-L6-v2"] = minilm_encoder()
    if len(encoders) < 2:
        parser.error("give at least two encoders (--model, --minilm)")
    pairs, _ = load_pairs(args.pairs)
    scored = {name: score_pairs(encode, pairs) for name, encode in encoders.items()}
    some = next(iter(scored.values()))
    queries, targets = some.retrieval_queries()
    vectors = with_side_by_side({name: np.asarray(s.vectors, dtype=np.float32) for name, s in scored.items()})
    thresholds = {}
    if args.valid:
        valid_pairs, _ = load_pairs(args.valid)
        valid = {name: score_pairs(encode, valid_pairs) for name, encode in encoders.items()}
        valid_vectors = with_side_by_side({name: np.asarray(s.vectors, dtype=np.float32) for name, s in valid.items()})
        ref = next(iter(valid.values()))  # every encoder saw the same questions in the same order
        for name, v in valid_vectors.items():
            thresholds[name] = best_threshold(pair_dots(v, ref.first, ref.second), ref.labels)
    out = {}
    for name, v in vectors.items():
        m = retrieval(v, queries, targets)
        out[name] = {"mrr@10": round(m["mrr@10"], 4), "r@1": round(m["r@1"], 4)}
        if name in thresholds:
            sims = pair_dots(v, some.first, some.second)
            out[name]["threshold"] = round(thresholds[name], 4)
            out[name]["accuracy"] = round(classification(sims, some.labels, thresholds[name]).accuracy, 4)
    a, b = list(encoders)[:2]
    hit_a, hit_b = first_hits(vectors[a], queries, targets), first_hits(vectors[b], queries, targets)
    out["first found by"] = {
        "both": round(float(np.mean(hit_a & hit_b)), 4),
        f"only {a}": round(float(np.mean(hit_a & ~hit_b)), 4),
        f"only {b}": round(float(np.mean(~hit_a & hit_b)), 4),
    }
    print(json.dumps({"pairs": args.pairs, "questions": int(vectors["side by side"].shape[0]), **out}, indent=1))


if __name__ == "__main__":
    main()
