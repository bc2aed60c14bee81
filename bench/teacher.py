"""The teacher's cost and fidelity: all-MiniLM-L6-v2 in float32 and in bfloat16 (``dupq train
--teacher-dtype``) on the same training questions, in questions per second, and how far each
bfloat16 vector is from float32's (its cosine with it). Needs the train extra.

    python bench/teacher.py [--pairs ../shared/data/qqp/train.tsv.gz] [--questions 3000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.training.data import load_pairs
from model.training.teacher import minilm_encoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="../shared/data/qqp/train.tsv.gz")
    parser.add_argument("--questions", type=int, default=3000, help="distinct questions drawn at random (seed 0)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    pairs, _ = load_pairs(args.pairs)
    texts = sorted({q for p in pairs for q in (p.question1, p.question2)})
    random.Random(0).shuffle(texts)
    texts = texts[: args.questions]
    vectors, results = {}, {}
    for dtype in ("float32", "bfloat16"):
        encode = minilm_encoder(dtype)
        encode(texts[:64])  # warm-up
        started = time.perf_counter()
        vectors[dtype] = encode(texts)
        seconds = time.perf_counter() - started
        results[dtype] = {"questions_per_s": round(len(texts) / seconds, 1)}
        print(f"{dtype:9s} {len(texts) / seconds:8.1f} questions/s", file=sys.stderr)
    cosines = (vectors["float32"] * vectors["bfloat16"]).sum(1)
    results["bfloat16"]["cosine_with_float32"] = {
        "min": round(float(cosines.min()), 6),
        "mean": round(float(cosines.mean()), 6),
    }
    speedup = results["bfloat16"]["questions_per_s"] / results["float32"]["questions_per_s"]
    summary = {"questions": len(texts), "threads": args.threads, "results": results, "speedup": round(speedup, 2)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
