"""Fine-tuning on a site's own pairs (``dupq train --init-from``), measured on a domain the model
never saw, graded pairs read as "duplicate" where people graded them at least 4 (SICK's
relatedness, 1 to 5: captions of pictures; the STS Benchmark's similarity, 0 to 5: news, captions
and forum posts) and "not" at most 3 (the pairs between are left out).

800 pairs fine-tune the model, 200 more are ``--valid``, and the rest measure accuracy, at each
model's own threshold, before and after; the Quora held-out pairs measure what was forgotten. SICK's
splits are drawn at random from one collection, so its train split gives the 800, its trial split
the 200 and its test split the rest. The STS Benchmark's splits differ in their mix of genres (its
dev split has a quarter forum posts, its train split none from that forum), unlike a site's own
pairs, so its three splits are pooled and shuffled first. Needs the train extra.

    python bench/fine_tune.py [--domain sick|stsb] [--seed 0] [--model models/dupq-qqp]
                              [--quora build/holdout.tsv] [--out build/fine-tune] [-- TRAIN_FLAGS...]

Flags after ``--`` go to ``dupq train`` after the bench's own (``-- --lr 0.001``), for trying a
fine-tuning setting on the same pairs.

``--script armenian``: a site that writes in a script the model has never seen, the domain's
letters mapped one to one onto Armenian ones (words keep their identity, every one unknown to the
tokenizer); the Quora pairs stay as they are.
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

GRADED = Path("../shared/data/sts")
# Each domain's (file, split): SICK's to fine-tune on, to choose tau on and to measure on; the STS
# Benchmark's, pooled (domain_pairs).
DOMAINS = {
    "sick": [("SICK_train.txt.gz", None), ("SICK_trial.txt.gz", None), ("SICK_test_annotated.txt.gz", None)],
    "stsb": [("stsbenchmark.tsv.gz", "train"), ("stsbenchmark.tsv.gz", "dev"), ("stsbenchmark.tsv.gz", "test")],
}


# Latin letters, either case, onto the Armenian small letters: no tokenizer trained here has them.
SCRIPTS = {"armenian": str.maketrans({chr(base + i): chr(0x0561 + i) for i in range(26) for base in (65, 97)})}


def graded_pairs(name: str, split: str | None, count: int | None, seed: int = 0) -> list[Pair]:
    """A file's pairs graded >= 4 (duplicates) or <= 3 (not), ``count`` of them drawn at random."""
    graded, _ = load_graded(GRADED / name, split)
    pairs = [Pair(g.sentence1, g.sentence2, int(g.score >= 4)) for g in graded if g.score >= 4 or g.score <= 3]
    random.Random(seed).shuffle(pairs)
    return pairs[:count] if count else pairs


def domain_pairs(domain: str, seed: int) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """800 pairs to fine-tune on, 200 to validate on and the rest to measure on."""
    files = DOMAINS[domain]
    if domain == "sick":
        (train, valid, test) = files
        return graded_pairs(*train, 800, seed), graded_pairs(*valid, 200, seed), graded_pairs(*test, None, seed)
    pool = [pair for file in files for pair in graded_pairs(*file, None)]
    random.Random(seed).shuffle(pool)
    return pool[:800], pool[800:1000], pool[1000:]


def scores(model: Path, pairs: list[Pair]) -> tuple[float, float]:
    """Accuracy at the model's own threshold, and the ROC-AUC that no threshold changes."""
    encoder = load_encoder(model)
    metrics = PairEvaluator(pairs, threshold=encoder.threshold)(encoder.encode)
    return metrics["accuracy"], metrics["roc_auc"]


def figures(model: Path, test: list[Pair], quora: list[Pair]) -> dict[str, float]:
    domain, domain_auc = scores(model, test)
    return {"domain_test": domain, "domain_test_auc": domain_auc, "quora": scores(model, quora)[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", choices=sorted(DOMAINS), default="sick")
    parser.add_argument("--model", type=Path, default=Path("models/dupq-qqp"))
    parser.add_argument("--quora", default="build/holdout.tsv", help="Quora pairs held out from training")
    parser.add_argument("--out", type=Path, default=Path("build/fine-tune"))
    parser.add_argument("--seed", type=int, default=0, help="draws the pairs and seeds the fine-tuning")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--script", choices=sorted(SCRIPTS), help="the domain's pairs written in this script")
    parser.add_argument("train_flags", nargs="*", metavar="TRAIN_FLAGS", help="more dupq train flags, after --")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train, valid, test = domain_pairs(args.domain, args.seed)
    if args.script:
        table = SCRIPTS[args.script]
        train, valid, test = (
            [Pair(p.question1.translate(table), p.question2.translate(table), p.label) for p in part]
            for part in (train, valid, test)
        )
    write_bimpm(train, args.out / "train.tsv")
    write_bimpm(valid, args.out / "valid.tsv")
    quora, _ = load_pairs(args.quora)
    before = figures(args.model, test, quora)
    started = time.time()
    command = [sys.executable, "-m", "app.cli", "train", "--init-from", str(args.model)]
    command += ["--train", str(args.out / "train.tsv"), "--valid", str(args.out / "valid.tsv")]
    command += ["--out", str(args.out / "model"), "--threads", args.threads, "--seed", str(args.seed)]
    command += args.train_flags
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.time() - started
    tuned = args.out / "model"
    after = figures(tuned, test, quora)
    result = {
        "model": str(args.model),
        "domain": args.domain,
        "script": args.script or "as written",
        "seed": args.seed,
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
