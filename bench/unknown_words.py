"""Questions in a script the model has never seen, as the service scores them: the Quora held-out
pairs with their letters mapped one to one onto Armenian ones (``fine_tune.SCRIPTS``), so every
word is unknown to the tokenizer but keeps its identity. Per model: ROC-AUC and accuracy at the
model's own tau on those pairs, the share of non-duplicates and of random pairs (each first
question against another pair's second) that pass tau, and the same pairs as written, which rows
for unknown words must leave as they were.

    python bench/unknown_words.py [--pairs build/holdout.tsv] MODEL_DIR...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fine_tune import SCRIPTS

from model.encoder import load_encoder
from model.training.data import load_pairs
from model.training.metrics import roc_auc


def figures(model: Path, first: list[str], second: list[str], labels: np.ndarray) -> dict[str, float]:
    encoder = load_encoder(model)
    a, b = encoder.encode(first), encoder.encode(second)
    cosines = (a * b).sum(1)
    shuffled = (a * b[np.random.default_rng(0).permutation(len(b))]).sum(1)
    tau = encoder.threshold
    return {
        "roc_auc": roc_auc(cosines, labels),
        "accuracy_at_tau": float(((cosines >= tau) == labels).mean()),
        "non_duplicates_passing_tau": float((cosines[labels == 0] >= tau).mean()),
        "random_pairs_passing_tau": float((shuffled >= tau).mean()),
        "random_pairs_mean_cosine": float(shuffled.mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, metavar="MODEL_DIR")
    parser.add_argument("--pairs", default="build/holdout.tsv")
    parser.add_argument("--script", choices=sorted(SCRIPTS), default="armenian")
    args = parser.parse_args(argv)
    pairs, _ = load_pairs(args.pairs)
    labels = np.array([p.label for p in pairs])
    table = SCRIPTS[args.script]
    results = []
    for model in args.models:
        version = json.loads((model / "config.json").read_text())["version"]
        written = figures(model, [p.question1 for p in pairs], [p.question2 for p in pairs], labels)
        mapped = [p.question1.translate(table) for p in pairs], [p.question2.translate(table) for p in pairs]
        results.append(
            {
                "model": str(model),
                "version": version,
                args.script: {k: round(v, 4) for k, v in figures(model, *mapped, labels).items()},
                "as_written": {k: round(v, 4) for k, v in written.items()},
            }
        )
    print(json.dumps({"pairs": args.pairs, "count": len(pairs), "models": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
