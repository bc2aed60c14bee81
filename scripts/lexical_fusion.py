"""An experiment, not part of the service: would adding word overlap to the model's cosine help?

The fused score of two questions is ``(1 - w) * cosine + w * tfidf``, where ``tfidf`` is the
cosine of their TF-IDF vectors (words, sublinear tf, IDF from the training questions). It is
still a dot product of unit vectors (the two vectors side by side, scaled by the square roots of
``1 - w`` and ``w``), so it could be served from the same kind of index. For each ``w`` the
script prints: accuracy on the validation half with the threshold best there, accuracy on the
held-out half with that threshold, and MRR@10 over every question of the whole dev file (the
retrieval protocol of ``dupq evaluate``).

    python scripts/lexical_fusion.py [--model models/dupq-qqp] [--weights 0,0.1,0.2,0.3,0.4]

Needs the train extra (scikit-learn) and ``make train``'s split (build/valid.tsv, build/holdout.tsv).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import sparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.data import Pair, load_pairs  # noqa: E402
from model.metrics import best_threshold, classification, retrieval  # noqa: E402
from model.model_dir import load_encoder  # noqa: E402
from model.train import score_pairs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from sklearn.feature_extraction.text import TfidfVectorizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "dupq-qqp"))
    data = ROOT.parent / "shared" / "data" / "qqp"
    parser.add_argument("--train", default=str(data / "train.tsv.gz"), help="IDF is fitted on its questions")
    parser.add_argument("--valid", default=str(ROOT / "build" / "valid.tsv"))
    parser.add_argument("--holdout", default=str(ROOT / "build" / "holdout.tsv"))
    parser.add_argument("--retrieval", default=str(data / "dev.tsv.gz"))
    parser.add_argument("--weights", default="0,0.1,0.2,0.3,0.4")
    args = parser.parse_args(argv)

    encoder = load_encoder(args.model, threads=2)
    train = load_pairs(args.train)[0]
    tfidf = TfidfVectorizer(lowercase=True, sublinear_tf=True)
    tfidf.fit(sorted({q for p in train for q in (p.question1, p.question2)}))

    def pair_scores(pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scored = score_pairs(encoder.encode, pairs)
        words = tfidf.transform(scored.texts)
        lexical = np.asarray(words[scored.first].multiply(words[scored.second]).sum(1)).ravel()
        return scored.similarities, lexical, scored.labels

    valid = pair_scores(load_pairs(args.valid)[0])
    held = pair_scores(load_pairs(args.holdout)[0])

    # Distinct questions, queries and targets exactly as `dupq evaluate` picks them.
    scored = score_pairs(encoder.encode, load_pairs(args.retrieval)[0])
    queries, targets = scored.retrieval_queries()
    vectors = scored.vectors
    words = sparse.csr_matrix(tfidf.transform(scored.texts))
    words_t = words.T.tocsc()

    print("w     valid acc  tau    held-out acc  MRR@10 (all of the retrieval file)")
    for w in (float(x) for x in args.weights.split(",")):
        fused_valid = (1 - w) * valid[0] + w * valid[1]
        tau = best_threshold(fused_valid, valid[2])
        valid_acc = classification(fused_valid, valid[2], tau).accuracy
        held_acc = classification((1 - w) * held[0] + w * held[1], held[2], tau).accuracy
        fused = retrieval(
            vectors,
            queries,
            targets,
            chunk=512,
            scores_of=lambda q, w=w: (1 - w) * (vectors[q] @ vectors.T) + w * (words[q] @ words_t).toarray(),
        )
        print(f"{w:<5.2f} {valid_acc:.4f}     {tau:.3f}  {held_acc:.4f}        {fused['mrr@10']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
