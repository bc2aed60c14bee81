import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, pre_tokenizers

from model.tokenizer import (
    PAD,
    PAD_ID,
    UNK,
    UNK_ID,
    TokenIds,
    _step_ids,
    isolate_unknown,
    load_tokenizer,
    token_ids,
    train_tokenizer,
    unknown_id,
    without_added_tokens,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = load_tokenizer(ROOT / "models" / "dupq-qqp" / "tokenizer.json")
FAST = TokenIds(SHIPPED, max_tokens=64)
BUCKETS = 4096
FAST_ROWS = TokenIds(SHIPPED, max_tokens=64, unknown_buckets=BUCKETS)  # unknown words hashed to rows of their own
# A vocabulary without most letters: the fast path must split them off as the tokenizer does.
TINY = train_tokenizer(["hello world 42"] * 5, vocab_size=100, min_frequency=1)
TINY_FAST = TokenIds(TINY, max_tokens=16)
TINY_ROWS = TokenIds(TINY, max_tokens=16, unknown_buckets=BUCKETS)


def _with_added_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` as train_tokenizer of dupq 0.5.0 built it: [PAD] and [UNK] added tokens, which
    encode matches in the text itself."""
    old = Tokenizer.from_str(tokenizer.to_str())
    old.add_special_tokens([PAD, UNK])
    return old


# A model trained by dupq 0.5.0 is served with such a tokenizer, and must keep its vectors.
OLD = _with_added_tokens(SHIPPED)
OLD_FAST = TokenIds(OLD, max_tokens=64)
OLD_ROWS = TokenIds(OLD, max_tokens=64, unknown_buckets=BUCKETS)


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
    "A" * 70 + " and " + "x" * 80 + "n't, a word past word-piece's 64 characters",
    "ქალაქი სად არის? ՔԱՂԱՔ nyc🍕 Сколько тебе лет?",
    # Text that normalizes to printable ASCII, which the fast path takes once normalized.
    "What\u2019s the caf\u00e9\u2019s na\u00efve r\u00e9sum\u00e9? I don\u2019t know\u2026",
    "cafe\u0301 \ufb01ne \uff26\uff55\uff4c\uff4c\u3000width \u00b2 \u2460 \u216b \u212a \u01c5 \u0130stanbul",
    "no\u00a0break\u2028line\u200bzero\x7fdel\x00nul\r\n\u00ad",
    "\uff3bUNK\uff3d \uff3bpad\uff3d and [\u00fcNK]",
    "STRASSE stra\u00dfe \u00bd \u00e6on",
    "\u201cDune\u201d \u2014 or \u00bfHamlet? \u2013 \u2022 \u00abx\u00bb\u201c\u201c",
    "10\u20ac 5\u00b0 \u3001\u3002 caf\u00e9\u2014no \u201c\u043c\u0438\u0440\u201d",
]


def test_the_fast_path_gives_the_ids_of_the_tokenizer_on_real_and_tricky_questions() -> None:
    demo = [line.split("\t", 1)[-1] for line in (ROOT / "demo" / "questions.tsv").read_text().splitlines()]
    texts = demo + TRICKY
    assert FAST.fast
    assert FAST(texts) == token_ids(SHIPPED, texts, 64)
    assert FAST(texts) == token_ids(SHIPPED, texts, 64)  # again, from the chunk cache


def test_text_that_normalizes_to_printable_ascii_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # A curly apostrophe or quotes (as phones type them), a dash, an accent, a tab: such text went
    # through the tokenizer itself, 132 against 6 us for the two questions of a /similarity request.
    texts = ["What\u2019s your age?", "Where is the caf\u00e9?", "How old\tare you?", "\uff28\uff49 \ufb01ne"]
    texts += ["Is \u201cDune\u201d \u2014 or \u00bfHamlet? \u2013 \u2022 \u00abbetter\u00bb?", "\u201cx\u201d\u201dy"]
    expected = token_ids(SHIPPED, texts, 64)
    assert expected[0] == token_ids(SHIPPED, ["What's your age?"], 64)[0]
    tokenizer_itself = [
        TokenIds(tokenizer, 64, unknown_buckets=buckets) for tokenizer in (SHIPPED, OLD) for buckets in (0, BUCKETS)
    ]

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tokenizer itself was asked")

    monkeypatch.setattr("model.tokenizer._encode", refused)
    for ids in tokenizer_itself:
        assert ids(texts) == expected
    for other in ("\u00bd cup?", "10\u20ac?", "5\u00b0c?", "\u0431\u0438\u0442?"):  # a symbol, a letter: not alone
        with pytest.raises(AssertionError, match="asked"):
            FAST([other])
    with pytest.raises(AssertionError, match="asked"):  # nor does an added token spelled in full width
        OLD_FAST(["\uff3bUNK\uff3d?"])
    monkeypatch.undo()
    # Text in another script goes to the tokenizer without being normalized twice (its first
    # letter says so): normalizing it first cost Armenian questions about 30 us a pair.
    ids, cyrillic = TokenIds(SHIPPED, 64), "\u0421\u043a\u043e\u043b\u044c\u043a\u043e \u201c\u043b\u0435\u0442\u201d?"
    ids._normalize = refused
    assert ids([cyrillic]) == token_ids(SHIPPED, [cyrillic], 64)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F)) | st.text(), max_size=4))
def test_the_fast_path_agrees_with_the_tokenizer_on_any_text(texts: list[str]) -> None:
    assert FAST(texts) == token_ids(SHIPPED, texts, 64)
    assert FAST_ROWS(texts + TRICKY) == token_ids(SHIPPED, texts + TRICKY, 64, unknown_buckets=BUCKETS)
    assert OLD_FAST(texts + TRICKY) == token_ids(OLD, texts + TRICKY, 64)
    assert OLD_ROWS(texts + TRICKY) == token_ids(OLD, texts + TRICKY, 64, unknown_buckets=BUCKETS)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)) | st.text(), max_size=4))
def test_the_fast_path_agrees_with_a_tokenizer_that_lacks_letters(texts: list[str]) -> None:
    assert TINY_FAST.fast
    assert TINY_FAST(texts + TRICKY) == token_ids(TINY, texts + TRICKY, 16)
    assert TINY_ROWS(texts + TRICKY) == token_ids(TINY, texts + TRICKY, 16, unknown_buckets=BUCKETS)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)) | st.text(), max_size=4))
def test_the_tokenizers_steps_one_by_one_give_the_ids_of_encode(texts: list[str]) -> None:
    # A few texts take the steps one by one (_step_ids), more take encode_batch: the same ids, each
    # [UNK] of encode in its row with the rows.
    every = texts + TRICKY + ["[UNK][PAD] x[UNK]y", "can't won't"]
    for tokenizer in (SHIPPED, TINY, OLD):
        for text in every:
            plain = tokenizer.encode(text, add_special_tokens=False).ids
            assert _step_ids(tokenizer, text) == plain, text
            rows = _step_ids(tokenizer, text, BUCKETS)
            assert [tid if tid < tokenizer.get_vocab_size() else UNK_ID for tid in rows] == plain
        for buckets in (0, BUCKETS):
            one_by_one = [token_ids(tokenizer, [text], 64, unknown_buckets=buckets)[0] for text in every]
            assert token_ids(tokenizer, every, 64, unknown_buckets=buckets) == one_by_one


def test_unknown_words_get_rows_of_their_own_by_their_text() -> None:
    # Without the rows, any two questions in a script the vocabulary lacks are one run of [UNK]:
    # the shipped model scored "ქალაქი სად არის?" / "რა გქვია?" 0.99, a duplicate.
    city, name, city_upper = FAST_ROWS(["ქალაქი სად არის?", "რა გქვია?", "ՔԱՂԱՔ ՔԱՂԱՔ"])
    assert FAST(["ქალაქი სად არის?"]) == [[UNK_ID, UNK_ID, UNK_ID, 32]]
    assert len(set(city[:3])) == 3 and not set(city[:3]) & set(name) and city[3] == 32  # "?" is known
    assert min(city[:3] + name[:2]) >= SHIPPED.get_vocab_size() > max(city[3:] + name[2:])
    assert city_upper[0] == city_upper[1] == FAST_ROWS(["քաղաք"])[0][0]  # the normalized word decides
    # A character the vocabulary lacks, inside a word, costs only itself: "б" of "бит" is its own row.
    assert FAST_ROWS(["бит"]) == [[unknown_id("б", 16000, BUCKETS), *FAST(["бит"])[0][1:]]]
    assert FAST_ROWS(["How old are you?", ""]) == FAST(["How old are you?", ""])  # known text as before
    # The rows are part of every stored vector: the hash may never change (CRC-32 of UTF-8).
    assert [unknown_id(word, 16000, BUCKETS) for word in ("ქალაქი", "🍕", "б")] == [19941, 17979, 17274]


def test_a_question_that_spells_a_special_token_is_read_as_its_words() -> None:
    # Typed in a question, "[PAD]" was the padding id, a zero vector inside the question, and
    # "[UNK]" the id of an unknown word: "What does [PAD] mean in BERT?" scored 0.744 against
    # "What does [UNK] mean in BERT?" with the shipped model, a duplicate, and 0.968 against
    # "What does mean in BERT?".
    typed, lower = "What does [PAD] mean? Or [UNK]?", "what does [pad] mean? or [unk]?"
    for tokenizer in (SHIPPED, TINY):
        assert not tokenizer.get_added_tokens_decoder()
        for buckets in (0, BUCKETS):
            for ids in (
                token_ids(tokenizer, [typed], 64, unknown_buckets=buckets),  # the steps one by one
                token_ids(tokenizer, [typed] * 8, 64, unknown_buckets=buckets)[:1],  # encode_batch
                TokenIds(tokenizer, 64, unknown_buckets=buckets)([typed]),  # the fast path
            ):
                assert ids == token_ids(tokenizer, [lower], 64, unknown_buckets=buckets) and PAD_ID not in ids[0]
    # A model trained before keeps its vectors (its version names them): its tokenizer still
    # matches them, on every path, and training drops them from it.
    assert token_ids(OLD, [typed], 64)[0][2] == PAD_ID == OLD_FAST([typed])[0][2] == _step_ids(OLD, typed)[2]
    assert without_added_tokens(OLD).to_str() == SHIPPED.to_str()


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
