"""Sentence pairs graded for similarity (STS Benchmark, SICK), to see how the encoder generalises.

The model learns from Quora questions only; these sets score pairs of other sentences (captions,
news, forums) on a scale, and the usual figure is the Spearman correlation between the cosine
similarity of the two sentences and the human score. Two layouts, told apart by their header:

- ``stsb``: ``split genre dataset year sid score sentence1 sentence2`` (score 0 to 5), as in
  ``shared/data/sts/stsbenchmark.tsv.gz``; one file holds the train, dev and test splits;
- ``sick``: ``pair_ID sentence_A sentence_B relatedness_score entailment_judgment`` (score 1 to 5),
  SICK 2014.

Both are tab-separated with no quoting. As for labelled pairs (:mod:`model.training.data`), a malformed
row is skipped and counted in the :class:`~model.training.data.LoadReport`.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from model.delimited import detect_named, named_errors, open_text
from model.training.data import LoadReport
from model.training.metrics import best_threshold, pair_dots, pearson, roc_auc, spearman

logger = logging.getLogger(__name__)

GradedFormat = Literal["stsb", "sick"]

# For each layout: the header's first field, the number of fields, and the columns of
# (sentence1, sentence2, score, split or None).
_LAYOUT: dict[str, tuple[str, int, tuple[int, int, int, int | None]]] = {
    "stsb": ("split", 8, (6, 7, 5, 0)),
    "sick": ("pair_id", 5, (1, 2, 3, None)),
}


@dataclass(frozen=True)
class GradedPair:
    """Two sentences and how similar people judged them (higher: more similar)."""

    sentence1: str
    sentence2: str
    score: float


def detect_graded_format(header: str) -> GradedFormat:
    line = header.rstrip("\r\n")
    first = line.lstrip("\ufeff").split("\t", 1)[0].strip().lower()
    for fmt, (name, _, _) in _LAYOUT.items():
        if first == name:
            return fmt  # type: ignore[return-value]
    raise ValueError(
        f"cannot tell the format of a file starting with {line[:80]!r}; expected an STS Benchmark "
        "header (split genre dataset year sid score sentence1 sentence2) or a SICK one (pair_ID sentence_A ...)"
    )


def load_graded(path: str | Path, split: str | None = None) -> tuple[list[GradedPair], LoadReport]:
    """The well-formed graded pairs of ``path`` (of one ``split`` of an STS Benchmark file, if
    given), with a report of the rows skipped."""
    path = Path(path)
    with named_errors(path), open_text(path) as handle:
        fmt = detect_named(path, handle.readline(), detect_graded_format)
        _, width, (c1, c2, cs, csplit) = _LAYOUT[fmt]
        if split is not None and csplit is None:
            raise ValueError(f"{path} ({fmt}) has no splits; --split applies to STS Benchmark files")
        report = LoadReport(str(path), fmt if split is None else f"{fmt}, split {split}")
        pairs: list[GradedPair] = []
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                report.skipped[f"rows with {len(row)} fields instead of {width}"] += 1
                continue
            if split is not None and csplit is not None and row[csplit].strip() != split:
                continue
            s1, s2 = " ".join(row[c1].split()), " ".join(row[c2].split())
            if not s1 or not s2:
                report.skipped["rows with an empty sentence"] += 1
                continue
            try:
                score = float(row[cs])
            except ValueError:
                score = math.nan
            if not math.isfinite(score):
                report.skipped["rows whose score is not a number"] += 1
                continue
            pairs.append(GradedPair(s1, s2, score))
            report.kept += 1
    if not pairs:
        hint = f" (is {split!r} a split of it?)" if split else ""
        raise ValueError(f"{report.summary()}: no pairs to evaluate{hint}")
    (logger.warning if report.n_skipped else logger.info)("loaded %s", report.summary())
    return pairs, report


def graded_similarities(encode: Callable[[list[str]], np.ndarray], pairs: list[GradedPair]) -> np.ndarray:
    """The cosine similarity of each pair, each distinct sentence encoded once. ``encode`` returns
    unit vectors, one row per text."""
    index: dict[str, int] = {}
    for pair in pairs:
        index.setdefault(pair.sentence1, len(index))
        index.setdefault(pair.sentence2, len(index))
    vectors = encode(list(index))
    first = np.array([index[p.sentence1] for p in pairs])
    second = np.array([index[p.sentence2] for p in pairs])
    return pair_dots(vectors, first, second)


def correlations(similarities: np.ndarray, pairs: list[GradedPair]) -> dict[str, float]:
    """Spearman and Pearson correlation of each pair's similarity with its score."""
    scores = np.array([p.score for p in pairs])
    return {"pairs": len(pairs), "spearman": spearman(similarities, scores), "pearson": pearson(similarities, scores)}


def graded_metrics(encode: Callable[[list[str]], np.ndarray], pairs: list[GradedPair]) -> dict[str, float]:
    """Spearman and Pearson correlation of the cosine similarity of each pair with its score.
    ``encode`` returns unit vectors, one row per text."""
    return correlations(graded_similarities(encode, pairs), pairs)


def threshold_figures(
    similarities: np.ndarray, pairs: list[GradedPair], threshold: float, duplicate_from: float
) -> dict[str, float]:
    """How a model's own duplicate threshold (tau, chosen on its training domain) answers on graded
    pairs of another kind of text, with the pairs graded at least ``duplicate_from`` counted as
    duplicates (on STS Benchmark's 0 to 5 scale, 4 is "mostly equivalent": only unimportant details
    differ): the share of duplicates (the accuracy of calling every pair one), the accuracy at the
    threshold, the share of pairs called duplicates, the recall of the duplicates and the
    false-positive rate.

    And whether it is the threshold or the ranking that falls short there: the balanced accuracy
    at tau (the mean of the duplicates' and the others' accuracy, which does not depend on the
    share of duplicates), the threshold with the best balanced accuracy on these pairs and that
    accuracy, and the ROC-AUC of the similarity, which no threshold changes."""
    duplicate = np.array([p.score for p in pairs]) >= duplicate_from
    said = similarities >= threshold
    both = bool(duplicate.any() and not duplicate.all())

    def rates(cut: float) -> tuple[float, float]:
        """The recall of the duplicates and the false-positive rate of ``similarity >= cut``."""
        called = similarities >= cut
        return (
            float(called[duplicate].mean()) if duplicate.any() else math.nan,
            float(called[~duplicate].mean()) if not duplicate.all() else math.nan,
        )

    recall, false_positive_rate = rates(threshold)
    best = best_threshold(similarities, duplicate, balanced=True) if both else math.nan
    best_recall, best_false_positive_rate = rates(best)
    return {
        "threshold": float(threshold),
        "duplicate_from": float(duplicate_from),
        "duplicates": float(duplicate.mean()),
        "accuracy": float((said == duplicate).mean()),
        "said_duplicate": float(said.mean()),
        "recall": recall,
        "false_positive_rate": false_positive_rate,
        "balanced_accuracy": (recall + 1.0 - false_positive_rate) / 2.0,
        "best_balanced_threshold": best,
        "best_balanced_accuracy": (best_recall + 1.0 - best_false_positive_rate) / 2.0 if both else math.nan,
        "roc_auc": roc_auc(similarities, duplicate),
    }
