"""Fine-tuning on a site's own pairs (``dupq train --init-from``), measured on a domain the model
never saw: SICK's captions of pictures, read as "duplicate" where people graded the pair's
relatedness at least 4 of 5 and "not" at most 3 (the pairs between are left out).

800 pairs of SICK's train split fine-tune the model, 200 of its trial split are ``--valid``, and
its test split measures accuracy, at each model's own threshold, before and after; the Quora
held-out pairs measure what was forgotten. Needs the train extra.

    python bench/fine_tune.py [--model models/dupq-qqp] [--quora build/holdout.tsv] [--out build/fine-tune]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.encoder import load_encoder
from model.training.data import Pair, load_pairs, write_bimpm
from model.training.evaluation import PairEvaluator
from model.training.graded import load_graded

SICK = Path("../shared/data/sts")


def sick_pairs(name: str, count: int | None, seed: int = 0) -> list[Pair]:
    """SICK's pairs graded >= 4 (duplicates) or <= 3 (not), ``count`` of them drawn at random."""
    graded, _ = load_graded(SICK / name)
    pairs = [Pair(g.sentence1, g.sentence2, int(g.score >= 4)) for g in graded if g.score >= 4 or g.score <= 3]
    random.Random(seed).shuffle(pairs)
    return pairs[:count] if count else pairs


def accuracy(model: Path, pairs: list[Pair]) -> float:
    encoder = load_encoder(model)
    return PairEvaluator(pairs, threshold=encoder.threshold)(encoder.encode)["accuracy"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/dupq-qqp"))
    parser.add_argument("--quora", default="build/holdout.tsv", help="Quora pairs held out from training")
    parser.add_argument("--out", type=Path, default=Path("build/fine-tune"))
    parser.add_argument("--threads", default="2")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train, valid, test = (
        sick_pairs("SICK_train.txt.gz", 800),
        sick_pairs("SICK_trial.txt.gz", 200),
        sick_pairs("SICK_test_annotated.txt.gz", None),
    )
    write_bimpm(train, args.out / "train.tsv")
    write_bimpm(valid, args.out / "valid.tsv")
    quora, _ = load_pairs(args.quora)
    before = {"sick_test": accuracy(args.model, test), "quora": accuracy(args.model, quora)}
    started = time.time()
    command = [sys.executable, "-m", "app.cli", "train", "--init-from", str(args.model)]
    command += ["--train", str(args.out / "train.tsv"), "--valid", str(args.out / "valid.tsv")]
    command += ["--out", str(args.out / "model"), "--threads", args.threads]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.time() - started
    tuned = args.out / "model"
    after = {"sick_test": accuracy(tuned, test), "quora": accuracy(tuned, quora)}
    result = {
        "model": str(args.model),
        "pairs": {
            "train": len(train),
            "valid": len(valid),
            "test": len(test),
            "test_duplicates": sum(p.label for p in test),
        },
        "fine_tune_seconds": round(seconds, 1),
        "before": {k: round(v, 4) for k, v in before.items()},
        "after": {k: round(v, 4) for k, v in after.items()},
        "command": " ".join(command[1:]),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
