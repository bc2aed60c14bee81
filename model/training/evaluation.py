"""Evaluating an encoder on labelled pairs, next to baselines, with an optional Markdown report.

:class:`PairEvaluator` scores any encoder (texts in, unit vectors out) on a fixed set of pairs:
pair metrics at a given threshold or the best one for the pairs, and retrieval metrics (every
distinct question indexed; each side of each duplicate pair queries for the other side, itself
excluded). Training is handed one for its validation pairs; ``dupq evaluate`` runs one for a
model directory as served (ONNX), next to the baselines: TF-IDF cosine (always) and
all-MiniLM-L6-v2 (``reference=True``, train extra). A baseline has no stored threshold: it takes
the best one on ``tune_pairs`` if given, else the best one on the evaluated pairs themselves (an
optimistic "oracle" figure, and said so).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.encoder import QuestionEncoder
from model.training.data import Pair, question_key
from model.training.graded import GradedPair, correlations, graded_metrics, graded_similarities, threshold_figures
from model.training.groups import duplicate_groups
from model.training.metrics import (
    best_threshold,
    classification,
    pair_dots,
    retrieval,
    roc_auc,
    threshold_near,
)
from model.training.teacher import minilm_encoder

logger = logging.getLogger(__name__)

# Texts in, one unit vector per text out: numpy rows, or (TF-IDF) the rows of a scipy sparse matrix.
Encode = Callable[[list[str]], Any]


@dataclass
class ScoredPairs:
    """The similarities of labelled pairs, and the vectors of their distinct questions."""

    texts: list[str]  # (Q,) each distinct question as first spelled, the text that was encoded
    vectors: Any  # (Q, D), one row per distinct question: numpy, or scipy sparse for TF-IDF
    first: np.ndarray  # (P,) row of each pair's question1
    second: np.ndarray  # (P,) row of each pair's question2
    labels: np.ndarray  # (P,)
    similarities: np.ndarray  # (P,)

    def retrieval_queries(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the queries and of their targets: each side of each duplicate pair looks for
        the other side."""
        dup = self.labels == 1
        return np.concatenate([self.first[dup], self.second[dup]]), np.concatenate([self.second[dup], self.first[dup]])

    def groups(self) -> np.ndarray:
        """Each question's duplicate group: the questions its duplicate pairs join it to."""
        return duplicate_groups(len(self.texts), self.first, self.second, self.labels)

    def metrics(self, threshold: float | None = None) -> dict[str, float]:
        """Pair metrics at ``threshold`` (or the best one for these pairs) and retrieval metrics."""
        tau = best_threshold(self.similarities, self.labels) if threshold is None else threshold
        cls = classification(self.similarities, self.labels, tau)
        queries, targets = self.retrieval_queries()
        return {
            "accuracy": cls.accuracy,
            "precision": cls.precision,
            "recall": cls.recall,
            "f1": cls.f1,
            "roc_auc": roc_auc(self.similarities, self.labels),
            "threshold": tau,
            **retrieval(self.vectors, queries, targets, self.groups()),
            "pairs": float(len(self.labels)),
            "questions": float(self.vectors.shape[0]),
        }


class PairEvaluator:
    """Scores encoders on one set of labelled pairs; each distinct question is encoded once."""

    def __init__(self, pairs: Sequence[Pair], threshold: float | None = None) -> None:
        self.threshold = threshold
        keys: dict[str, int] = {}
        self.texts: list[str] = []
        for pair in pairs:
            for q in (pair.question1, pair.question2):
                if question_key(q) not in keys:
                    keys[question_key(q)] = len(self.texts)
                    self.texts.append(q)
        self.first = np.array([keys[question_key(p.question1)] for p in pairs])
        self.second = np.array([keys[question_key(p.question2)] for p in pairs])
        self.labels = np.array([p.label for p in pairs])

    def score(self, encode: Encode) -> ScoredPairs:
        vectors = encode(self.texts)
        similarities = pair_dots(vectors, self.first, self.second)
        return ScoredPairs(self.texts, vectors, self.first, self.second, self.labels, similarities)

    def __call__(self, encode: Encode) -> dict[str, float]:
        """Pair metrics (at this evaluator's threshold, or the best one) and retrieval metrics."""
        return self.score(encode).metrics(self.threshold)


def tfidf_encoder(fit_texts: Sequence[str]) -> Encode:
    """TF-IDF vectors (word unigrams and bigrams, sublinear tf), L2-normalized, as the rows of a
    scipy sparse matrix (dense, some 19,000 questions would take 7.8 GB)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(lowercase=True, ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    vectorizer.fit(fit_texts)

    def encode(texts: list[str]) -> Any:
        return vectorizer.transform(texts).astype(np.float32).tocsr()

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
    """Metrics of ``encoder`` and the baselines on ``pairs``. ``these_pairs``: the threshold these
    pairs would want, for ``DUPQ_THRESHOLD`` on text like them: the cut nearest the model's tau
    whose accuracy is within one standard error of the best (:func:`threshold_near`), and the best
    cut itself (an oracle), each with its accuracy."""
    started = time.perf_counter()
    result: dict[str, Any] = {"pairs": len(pairs), "duplicates": int(sum(p.label for p in pairs))}
    scored = PairEvaluator(pairs).score(encoder.encode)
    result.update(_rounded(scored.metrics(encoder.threshold)))
    result["seconds"] = round(time.perf_counter() - started, 2)
    if 0 < result["duplicates"] < len(pairs):
        near = threshold_near(scored.similarities, scored.labels, encoder.threshold)
        best = best_threshold(scored.similarities, scored.labels)
        result["these_pairs"] = _rounded(
            {
                "suggested_threshold": near,
                "suggested_accuracy": classification(scored.similarities, scored.labels, near).accuracy,
                "best_threshold": best,
                "best_accuracy": classification(scored.similarities, scored.labels, best).accuracy,
            }
        )
    texts = sorted({q for p in pairs for q in (p.question1, p.question2)})
    baselines: dict[str, Encode] = {"tfidf": tfidf_encoder(texts)}
    if reference:
        baselines["all-MiniLM-L6-v2"] = minilm_encoder()
    for name, encode in baselines.items():
        started = time.perf_counter()
        tau = None
        if tune_pairs is not None:
            tuned = PairEvaluator(tune_pairs).score(encode)
            tau = best_threshold(tuned.similarities, tuned.labels)
        figures = _rounded(PairEvaluator(pairs, threshold=tau)(encode))
        figures["threshold_tuned_on"] = "tune pairs" if tune_pairs is not None else "these pairs (oracle)"  # type: ignore[assignment]
        figures["seconds"] = round(time.perf_counter() - started, 2)
        result[name] = figures
    return result


def evaluate_graded(
    encoder: QuestionEncoder, pairs: Sequence[GradedPair], reference: bool = False, duplicate_from: float = 4.0
) -> dict[str, Any]:
    """Spearman and Pearson correlation with graded similarity (STS Benchmark, SICK) of ``encoder``
    and the baselines: TF-IDF fitted on the file's sentences, and all-MiniLM-L6-v2 if ``reference``.
    ``at_threshold``: how the model's own tau answers there, the pairs graded at least
    ``duplicate_from`` counted as duplicates (:func:`~model.training.graded.threshold_figures`)."""
    pairs = list(pairs)
    similarities = graded_similarities(encoder.encode, pairs)
    result: dict[str, Any] = _rounded(correlations(similarities, pairs))
    result["at_threshold"] = _rounded(threshold_figures(similarities, pairs, encoder.threshold, duplicate_from))
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
    scored = PairEvaluator(pairs).score(encoder.encode)
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

    keys = ["accuracy", "precision", "recall", "f1", "roc_auc", "threshold", "r@1", "r@10", "mrr@10", "mrr@10_filtered"]
    baselines = {k: v for k, v in result.items() if isinstance(v, dict) and "threshold_tuned_on" in v}
    systems = {encoder.full_name: result} | baselines
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
    these = result.get("these_pairs")
    if these:
        lines += [
            "",
            f"The threshold these pairs would want: {these['suggested_threshold']:.4f} (accuracy "
            f"{these['suggested_accuracy']:.4f}), the cut nearest the model's tau within one standard error of "
            f"the best; the best cut on them: {these['best_threshold']:.4f} ({these['best_accuracy']:.4f}).",
        ]
    lines += ["", "![ROC curve](roc.png)", "", "![Similarity histograms](similarity_hist.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
