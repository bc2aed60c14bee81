"""Give a model directory written before rows for unknown words existed (format 3) the rows that
``dupq train`` now adds after training from scratch: the trained weights unchanged, 4,096 rows
drawn as ``model.training.network.unknown_rows`` draws them, seeded with the model's training
seed, the tokenizer without its added tokens (``model.tokenizer.without_added_tokens``), then
tau and the calibration fitted again on the validation pairs, as ``dupq train`` fits them once the
rows are there. The result is what ``make train`` writes on the machine that trained the model,
without the training run. The shipped model got its rows this way:

    python scripts/add_unknown_rows.py models/dupq-qqp --valid build/valid.tsv --out /tmp/rows

(docs/model.md, "Words the vocabulary lacks".) A fine-tuned model gets them by fine-tuning again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model.config import EncoderConfig
from model.model_dir import read_json
from model.tokenizer import load_tokenizer, without_added_tokens
from model.training.data import load_validation_pairs
from model.training.evaluation import PairEvaluator
from model.training.export import load_network
from model.training.network import SiameseEncoder, with_unknown_rows
from model.training.trainer import save_refitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--valid", type=Path, required=True, help="the pairs the model was validated on")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = read_json(args.model_dir)
    network = load_network(args.model_dir)
    if not isinstance(network, SiameseEncoder) or network.config.unknown_buckets:
        raise SystemExit(f"{args.model_dir}: not one network without rows for unknown words")
    buckets = EncoderConfig(vocab_size=network.config.vocab_size).unknown_buckets
    seed = config["training"]["config"]["seed"]
    with_unknown_rows(network, buckets, seed)
    tokenizer = without_added_tokens(load_tokenizer(args.model_dir / "tokenizer.json"))
    pairs, _ = load_validation_pairs(args.valid)
    training = {**config["training"], "unknown_rows": {"from": config["version"], "buckets": buckets, "seed": seed}}
    written = save_refitted(args.out, network, tokenizer, PairEvaluator(pairs), name=config["name"], training=training)
    print(json.dumps({"version": written["version"], "threshold": written["threshold"], **written["validation"]}))


if __name__ == "__main__":
    main()
