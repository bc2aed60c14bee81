import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from model.tokenizer import UNK_ID, TokenIds, isolate_unknown, load_tokenizer, token_ids, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = load_tokenizer(ROOT / "models" / "dupq-qqp" / "tokenizer.json")
FAST = TokenIds(SHIPPED, max_tokens=64)
# A vocabulary without most letters: the fast path must split them off as the tokenizer does.
TINY = train_tokenizer(["hello world 42"] * 5, vocab_size=100, min_frequency=1)
TINY_FAST = TokenIds(TINY, max_tokens=16)


def test_training_gives_the_same_tokenizer_in_every_process() -> None:
    # `tokenizers` alone numbered its continuing pieces in hash-map order, seeded anew in each
    # process: on these questions each of 8 processes drew a vocabulary of its own.
    questions = ["How old are you?", "What is your age?", "Where are you going?", "How do I learn Python?"]
    questions += ["Is Rust hard to learn?", "How can I lose weight fast?", "Why is the sky blue?"]
    probe = f"from model.tokenizer import train_tokenizer; print(train_tokenizer({questions!r} * 3, 200, 1).to_str())"
    runs = [
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
        for _ in range(4)
    ]
    assert len({run.stdout for run in runs}) == 1
    assert json.loads(runs[0].stdout)["model"]["vocab"] == train_tokenizer(questions * 3, 200, 1).get_vocab()


def test_raw_and_bimpm_tokenized_text_give_the_same_tokens() -> None:
    tokenizer = train_tokenizer(["Why can't I sleep? What's the U.S. capital?"] * 5, vocab_size=300, min_frequency=1)
    raw = tokenizer.encode("Why can't I sleep? What's the café’s name?").tokens
    tokenized = tokenizer.encode("Why ca n't I sleep ? What 's the cafe 's name ?").tokens
    assert raw == tokenized
    assert raw[:3] == ["why", "ca", "n"]


def test_unknown_words_and_empty_text() -> None:
    tokenizer = train_tokenizer(["hello world"] * 5, vocab_size=100, min_frequency=1)
    ids = token_ids(tokenizer, ["zzzz qqq", "", "hello " * 100], max_tokens=8)
    assert ids[1] == [UNK_ID]  # never an empty sequence
    assert len(ids[2]) == 8  # truncated to max_tokens
    assert all(isinstance(i, int) for i in ids[0]) and ids[0]


def test_characters_outside_the_vocabulary_cost_only_themselves() -> None:
    # Word-piece alone makes a whole word [UNK] for one character it lacks ("nyc🍕" -> [UNK]).
    assert SHIPPED.encode("nyc🍕 pizza?").tokens == ["nyc", "[UNK]", "pizza", "?"]
    assert SHIPPED.encode("python😀😀🎉tips").tokens == ["python", "[UNK]", "tips"]  # one [UNK] per run
    assert SHIPPED.encode("😀").tokens == ["[UNK]"]
    assert TINY.encode("hello wqqqorld").tokens == ["hello", "w", "[UNK]", *TINY.encode("orld").tokens]


def test_isolating_unknown_characters_changes_no_known_text() -> None:
    old = train_tokenizer(["hello world 42"] * 5, vocab_size=100, min_frequency=1)
    old.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # as train_tokenizer built it before
    known, unknown = ["hello world", "Hello, WORLD 42!", "oh hello?"], ["hello qworld"]
    before = token_ids(old, known + unknown, 16)
    assert TokenIds(old, 16).fast and TokenIds(old, 16)(known + unknown) == before  # the fast path as before
    isolate_unknown(old)
    assert json.loads(old.to_str())["pre_tokenizer"] == json.loads(TINY.to_str())["pre_tokenizer"]  # as trained now
    assert token_ids(old, known, 16) == before[:3]
    assert token_ids(old, unknown, 16) != before[3:]  # "qworld" is no longer one [UNK]


TRICKY = [
    "",
    "   ",
    "?",
    "How old are you?",
    "HOW OLD ARE YOU ???",
    "Can't I? DON'T! won't`t isn`t",
    'What\'s 2+2=4; a<b>c & d|e~f^g_h @home #tag $100 50% (x) [y] {z} \\ / "quoted"',
    "What is [math]x^2[/math]?",
    "What does [UNK] mean? and [pad]?",
    "supercalifragilisticexpialidocious" * 3 + " word",
    "Where is the café? naïve résumé",
    "Tabs\tand\nnewlines",
    "n't n'tn't nn't",
    "ends with n't",
    "The quick brown fox " * 20,
    "zzqx qqqj xxyzzy",
    "\u2018quoted\u2019 \u00bdhalf \uff21\uff22 \u0130stanbul",
]


def test_the_fast_path_gives_the_ids_of_the_tokenizer_on_real_and_tricky_questions() -> None:
    demo = [line.split("\t", 1)[-1] for line in (ROOT / "demo" / "questions.tsv").read_text().splitlines()]
    texts = demo + TRICKY
    assert FAST.fast
    assert FAST(texts) == token_ids(SHIPPED, texts, 64)
    assert FAST(texts) == token_ids(SHIPPED, texts, 64)  # again, from the chunk cache


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F)) | st.text(), max_size=4))
def test_the_fast_path_agrees_with_the_tokenizer_on_any_text(texts: list[str]) -> None:
    assert FAST(texts) == token_ids(SHIPPED, texts, 64)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)) | st.text(), max_size=4))
def test_the_fast_path_agrees_with_a_tokenizer_that_lacks_letters(texts: list[str]) -> None:
    assert TINY_FAST.fast
    assert TINY_FAST(texts + TRICKY) == token_ids(TINY, texts + TRICKY, 16)


def test_another_pipeline_takes_the_tokenizer_itself() -> None:
    tokenizer = train_tokenizer(["hello world"] * 5, vocab_size=100, min_frequency=1)
    tokenizer.normalizer = None  # no lower-casing: the fast path would be wrong, so it is off
    ids = TokenIds(tokenizer, max_tokens=8)
    assert not ids.fast
    assert ids(["Hello world"]) == token_ids(tokenizer, ["Hello world"], 8)


def test_text_that_is_not_unicode_is_refused_by_name() -> None:
    # A lone surrogate (JSON's "\\ud800" escape) has no UTF-8 form; tokenizers fails obscurely on it.
    with pytest.raises(ValueError, match=r"text 1 is not valid Unicode: lone surrogate U\+D800 at character 2"):
        FAST(["fine", "ab\ud800"])
