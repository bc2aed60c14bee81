"""Kill the writing of a model directory at random moments and count what the directory holds.

Each run copies the model to a scratch directory, starts a process that writes the same network
over it under another name (``save_model_dir``, as ``dupq train`` ends), kills it (SIGKILL) at a
moment drawn uniformly over the length of a write, then loads the directory as serving would
(``read_config``, which checks every file against its checksum): the old model, the new one, or a
directory refused, with the reason. A write that is whole or not at all never gives the third.

    python bench/kill_write.py [--model models/dupq-qqp] [--runs 100]
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEW_NAME = "written-by-kill-write"


def write(model: str, out: str) -> None:
    from model.tokenizer import load_tokenizer
    from model.training.export import load_network, save_model_dir

    network, tokenizer = load_network(model), load_tokenizer(Path(model) / "tokenizer.json")
    print("ready", flush=True)
    save_model_dir(out, network, tokenizer, name=NEW_NAME, threshold=0.5, calibration=(1.0, 0.0))
    print("done", flush=True)


def start(model: Path, out: Path) -> subprocess.Popen[str]:
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model, out)
    process = subprocess.Popen(
        [sys.executable, __file__, "--write", str(model), str(out)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/dupq-qqp"))
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        write(*args.write)
        return
    from model.model_dir import ModelDirError, read_config

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "model"
        process = start(args.model, out)
        started = time.perf_counter()
        assert process.stdout is not None and process.stdout.readline() == "done\n"
        seconds = time.perf_counter() - started
        process.wait()
        print(f"one write of {args.model}: {seconds:.2f} s")
        held: collections.Counter[str] = collections.Counter()
        for _ in range(args.runs):
            process = start(args.model, out)
            time.sleep(rng.uniform(0, seconds * 1.1))
            process.kill()
            process.wait()
            try:
                held["the new model" if read_config(out)["name"] == NEW_NAME else "the old model"] += 1
            except ModelDirError as err:
                held["refused: " + str(err).replace(str(out), "DIR")] += 1
    for what, runs in held.most_common():
        print(f"{runs:4d}  {what}")


if __name__ == "__main__":
    main()
