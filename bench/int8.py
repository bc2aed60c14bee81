"""Why the served encoder stays in float32: the same network with int8 LSTM weights, measured.

ONNX Runtime's dynamic quantization turns the LSTM into ``DynamicQuantizeLSTM``: int8 weights,
and activations quantized on the fly with one scale per call. This script prints, for the shipped
model: questions per second on one thread (float32 and int8, same batches), how far int8 moves a
vector, both for the same batch and between a question encoded alone and inside a batch (the
per-call scale makes a vector depend on its companions), and validation figures with the stored
threshold.

    python bench/int8.py [--model DIR] [--valid build/valid.tsv]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.data import load_pairs
from model.encoder import pad_ids
from model.model_dir import load_encoder, single_thread_session
from model.onnx_graph import build_onnx
from model.train import validation_metrics

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "dupq-qqp"))
    parser.add_argument("--valid", type=Path, default=ROOT / "build" / "valid.tsv")
    parser.add_argument("--questions", type=Path, default=ROOT / "demo" / "questions.tsv")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice to pre-process the graph
    from onnxruntime.quantization import QuantType, quantize_dynamic

    encoder = load_encoder(args.model, threads=1)
    graph = build_onnx(encoder.network)
    with tempfile.TemporaryDirectory() as tmp:
        quantize_dynamic(graph, Path(tmp) / "int8.onnx", op_types_to_quantize=["LSTM"], weight_type=QuantType.QInt8)
        int8_graph = onnx.load(str(Path(tmp) / "int8.onnx")).SerializeToString()
    sessions = {"float32": single_thread_session(graph.SerializeToString()), "int8": single_thread_session(int8_graph)}
    texts = [line.split("\t", 1)[-1].strip() for line in args.questions.read_text().splitlines() if line.strip()][:2048]
    sequences = encoder.token_ids(texts)
    order = sorted(range(len(texts)), key=lambda i: len(sequences[i]))

    def run(name: str, rows: list[int]) -> np.ndarray:
        ids, lengths = pad_ids([sequences[i] for i in rows])
        out = sessions[name].run(None, {"ids": ids, "lengths": lengths.astype(np.int32)})[0]
        return np.asarray(out / np.linalg.norm(out, axis=1, keepdims=True), dtype=np.float32)

    batches = [order[k : k + 128] for k in range(0, len(order), 128)]
    result: dict[str, object] = {}
    vectors = {}
    for name in sessions:
        vectors[name] = np.concatenate([run(name, b) for b in batches])
        started = time.perf_counter()
        for _ in range(3):
            for b in batches:
                run(name, b)
        result[f"{name}_questions_per_s_one_thread"] = round(3 * len(texts) / (time.perf_counter() - started), 1)
    result["int8_vs_float32_min_cosine"] = round(float((vectors["int8"] * vectors["float32"]).sum(1).min()), 6)
    first = order[:100]
    alone = np.concatenate([run("int8", [i]) for i in first])
    together = run("int8", first)
    result["int8_alone_vs_in_a_batch_min_cosine"] = round(float((alone * together).sum(1).min()), 6)
    result["int8_alone_vs_in_a_batch_max_abs_diff"] = round(float(np.abs(alone - together).max()), 6)
    alone32 = np.concatenate([run("float32", [i]) for i in first])
    result["float32_alone_vs_in_a_batch_max_abs_diff"] = float(f"{np.abs(alone32 - run('float32', first)).max():.2g}")
    if args.valid.exists():
        pairs, _ = load_pairs(args.valid)
        for name in sessions:
            encoder._sessions = [sessions[name]]
            figures = validation_metrics(encoder.encode, pairs, threshold=encoder.threshold)
            result[f"{name}_valid"] = {k: round(figures[k], 4) for k in ("accuracy", "roc_auc", "mrr@10")}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
