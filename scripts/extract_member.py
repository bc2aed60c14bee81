"""Write one member of a side-by-side model directory (``dupq train --members K``) as a model
directory of its own, with its threshold and calibration fitted on the validation pairs the way
``dupq train`` fits them. The member's weights are copied unchanged: the result is what
``dupq train --members 1`` with that member's seed and thread count writes, but without the
training run. dupq 0.4.0 ships member 0 of 0.3.0's two-network model this way:

    python scripts/extract_member.py models/dupq-qqp --member 0 --valid build/valid.tsv --out /tmp/one

(docs/experiments.md: one 256-d network against two side by side.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from model.model_dir import read_json
from model.tokenizer import load_tokenizer
from model.training.data import load_pairs
from model.training.evaluation import PairEvaluator
from model.training.export import load_network
from model.training.network import SideBySide
from model.training.trainer import save_refitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--member", type=int, default=0)
    parser.add_argument("--valid", type=Path, required=True, help="the pairs the model was validated on")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = read_json(args.model_dir)
    network = load_network(args.model_dir)
    if not isinstance(network, SideBySide):
        raise SystemExit(f"{args.model_dir} holds one network, not several side by side")
    member = network.networks[args.member]
    tokenizer = load_tokenizer(args.model_dir / "tokenizer.json")
    pairs, _ = load_pairs(args.valid)
    training = dict(config["training"])
    about = training.pop("members")[args.member]
    training["config"] = {**training["config"], "members": 1, "seed": about["seed"], "threads": about["threads"]}
    training.update(best_epoch=about["best_epoch"], duration_s=about["duration_s"])
    training["extracted"] = {"from": config["version"], "member": args.member}
    written = save_refitted(args.out, member, tokenizer, PairEvaluator(pairs), name=config["name"], training=training)
    print(json.dumps({"version": written["version"], "dim": written["dim"], **written["validation"]}))
    assert dataclasses.asdict(member.config) == written["encoder"]


if __name__ == "__main__":
    main()
