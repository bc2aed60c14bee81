"""Tokenizer speed: the shipped tokenizer through ``tokenizers`` itself (``encode_batch``) against
``TokenIds``'s fast path for printable ASCII (model/tokenizer.py), on the dev questions, in one
run: questions per second over all of them (the fast path cold and warm), microseconds per call
of two questions (a /similarity request; also through the tokenizer's steps one by one, which
``token_ids`` takes for a few texts that are not printable ASCII), and whether both give the same
ids. Then text that is not printable ASCII, per call of two through the tokenizer's steps and
through the fast path (which normalizes it first): the dev questions with each apostrophe typed
as phones type it (U+2019), those with quotes typed so (U+201C and U+201D), and those of the dev
questions that are not printable ASCII. Then the same questions in Armenian letters
(``fine_tune.SCRIPTS``, every word unknown to the tokenizer), per call of two: each unknown word
one ``[UNK]``, against each its row (``--unknown-buckets``).

    python bench/tokenizer.py [--model DIR] [--pairs FILE] [--questions 20000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fine_tune import SCRIPTS  # noqa: E402

from model.tokenizer import TokenIds, load_tokenizer, token_ids  # noqa: E402
from model.training.data import iter_pairs  # noqa: E402


def _curly_quotes(question: str) -> str:
    """A question of the BiMPM dev file (its quotes tokenized as ``` `` ``` and ``''``) with its
    quotes and apostrophes as a phone types them."""
    return question.replace("``", "\u201c").replace("''", "\u201d").replace("'", "\u2019")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "dupq-qqp")
    parser.add_argument("--pairs", type=Path, default=ROOT.parent / "shared" / "data" / "qqp" / "dev.tsv.gz")
    parser.add_argument("--questions", type=int, default=20000)
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.model / "tokenizer.json")
    texts = [q for pair in iter_pairs(args.pairs) for q in (pair.question1, pair.question2)][: args.questions]

    started = time.perf_counter()
    reference = token_ids(tokenizer, texts, 64)
    library = len(texts) / (time.perf_counter() - started)
    fast = TokenIds(tokenizer, 64)
    started = time.perf_counter()
    ids = fast(texts)
    cold = len(texts) / (time.perf_counter() - started)
    started = time.perf_counter()
    fast(texts)
    warm = len(texts) / (time.perf_counter() - started)

    pairs = [texts[i : i + 2] for i in range(0, min(len(texts), 4000), 2)]
    others_figures: dict[str, dict[str, object]] = {}
    started = time.perf_counter()
    for pair in pairs:
        tokenizer.encode_batch(pair, add_special_tokens=False)
    per_pair_library = (time.perf_counter() - started) / len(pairs) * 1e6
    started = time.perf_counter()
    for pair in pairs:
        token_ids(tokenizer, pair, 64)  # a few texts: the tokenizer's steps one by one (model/tokenizer.py)
    per_pair_steps = (time.perf_counter() - started) / len(pairs) * 1e6
    started = time.perf_counter()
    for pair in pairs:
        fast(pair)
    per_pair_fast = (time.perf_counter() - started) / len(pairs) * 1e6

    # Text that is not printable ASCII: the dev questions with each apostrophe typed as a phone
    # types it (U+2019), those with quotes typed so (U+201C, U+201D), and the dev questions that
    # are not printable ASCII as they are (accents, other scripts, symbols). The fast path
    # normalizes them first; the tokenizer takes the rest.
    others = {
        "curly_apostrophes": [q.replace("'", "\u2019") for q in texts if "'" in q][:4000],
        "curly_quotes": [_curly_quotes(q) for q in texts if "``" in q or "''" in q][:4000],
        "not_ascii_in_dev": [q for q in texts if not (q.isascii() and q.isprintable())],
    }
    for name, group in others.items():
        fast_ids = TokenIds(tokenizer, 64)
        same = fast_ids(group) == token_ids(tokenizer, group, 64)  # and the chunk dictionary warm, as above
        group_pairs = [group[i : i + 2] for i in range(0, len(group) - 1, 2)]
        timings = {}
        for label, call in (("steps", lambda pair: token_ids(tokenizer, pair, 64)), ("fast_path", fast_ids)):
            started = time.perf_counter()
            for pair in group_pairs:
                call(pair)
            timings[label] = (time.perf_counter() - started) / len(group_pairs) * 1e6
        others_figures[name] = {
            "questions": len(group),
            "same_ids": same,
            "steps_us_per_pair": round(timings["steps"], 1),
            "fast_path_us_per_pair": round(timings["fast_path"], 1),
        }

    armenian = [[q.translate(SCRIPTS["armenian"]) for q in pair] for pair in pairs]
    per_pair_script = {}
    for buckets in (0, 4096):
        ids_of = TokenIds(tokenizer, 64, unknown_buckets=buckets)
        started = time.perf_counter()
        for pair in armenian:
            ids_of(pair)
        per_pair_script[buckets] = (time.perf_counter() - started) / len(armenian) * 1e6

    figures = {
        "questions": len(texts),
        "same_ids": ids == reference,
        "encode_batch_questions_per_s": round(library),
        "fast_path_cold_questions_per_s": round(cold),
        "fast_path_warm_questions_per_s": round(warm),
        "encode_batch_us_per_pair": round(per_pair_library, 1),
        "steps_us_per_pair": round(per_pair_steps, 1),
        "fast_path_us_per_pair": round(per_pair_fast, 1),
        "armenian_letters_us_per_pair_one_unk": round(per_pair_script[0], 1),
        "armenian_letters_us_per_pair_rows": round(per_pair_script[4096], 1),
        **others_figures,
    }
    print(json.dumps(figures))
    return 0 if figures["same_ids"] and all(group["same_ids"] for group in others_figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
