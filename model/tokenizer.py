"""The word-piece tokenizer, trained on the training text with Hugging Face ``tokenizers``.

Normalization lower-cases, applies Unicode NFKC, strips accents, and splits punctuation off
words, so a raw question (``Can't I?``) and its tokenized BiMPM form (``Ca n't I ?``) give the
same tokens. Unknown words fall back to word pieces. Characters the vocabulary has never seen (an
emoji, another script) are split off the word they touch, each run of them one ``[UNK]``, so
``nyc🍕`` keeps its ``nyc`` (word-piece alone would make the whole word ``[UNK]``).

A model with ``unknown_buckets`` rows past its vocabulary gives each ``[UNK]`` the row its text
hashes to (:func:`unknown_id`), so two questions in a script the vocabulary lacks are told apart
by their words instead of being one run of ``[UNK]``: the same word, the same row.
"""

from __future__ import annotations

import json
import re
import unicodedata
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1  # fixed by the order of the special tokens given to the trainer


def _normalizer() -> normalizers.Normalizer:
    # TokenIds below re-implements this for printable ASCII text (other text it normalizes with
    # this normalizer first): change both together.
    return normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Replace(Regex("[\u2018\u2019\u02bc`]"), "'"),
            normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True),
            # "can't" -> "ca n't", as the Penn Treebank tokenization of BiMPM writes it.
            normalizers.Replace("n't", " n't"),
        ]
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int = 16000, min_frequency: int = 2) -> Tokenizer:
    """Learn a word-piece vocabulary of at most ``vocab_size`` entries from ``texts``: the same
    vocabulary, ids included, in every process.

    ``tokenizers`` numbers the pieces that continue a word (``##s``) in the order of a hash map,
    which changes from one process to the next, and breaks ties between equally frequent merges
    by those numbers, so its vocabulary changed from run to run (huggingface/tokenizers#1794).
    Here each continuing piece of one character is handed to the trainer as a special token, so
    it is numbered first and in sorted order; the tokenizer returned has them as plain tokens."""
    texts = list(texts)
    bare = _untrained()
    words = (
        word for text in texts for word, _ in bare.pre_tokenizer.pre_tokenize_str(bare.normalizer.normalize_str(text))
    )
    continuing = sorted({"##" + ch for word in words for ch in word[1:]})
    trainer = WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, UNK, *continuing], show_progress=False
    )
    bare.train_from_iterator(texts, trainer)
    tokenizer = _untrained(bare.get_vocab())  # [PAD] and [UNK] in its vocabulary, not added tokens
    assert tokenizer.token_to_id(PAD) == PAD_ID and tokenizer.token_to_id(UNK) == UNK_ID
    # Every character of the training text is in the vocabulary, so this changes none of its tokens.
    return isolate_unknown(tokenizer)


def _untrained(vocab: dict[str, int] | None = None) -> Tokenizer:
    """A word-piece tokenizer with this module's normalizer, BERT's pre-tokenizer and ``vocab``."""
    tokenizer = Tokenizer(WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=64))
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def without_added_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` with no added tokens: a question that spells ``[PAD]`` or ``[UNK]`` is read as
    the words it is, as ``[pad]`` is, not as padding inside the question or an unknown word.
    :func:`train_tokenizer` of dupq 0.5.0 and earlier added both, and ``encode`` matched them in
    the text. A model trained with them keeps them, so that its vectors stay what its version
    names; training drops them from the tokenizer it starts from."""
    spec = json.loads(tokenizer.to_str())
    spec["added_tokens"] = []
    return Tokenizer.from_str(json.dumps(spec))


def alphabet(tokenizer: Tokenizer) -> set[str]:
    """The characters of the vocabulary's own tokens (special tokens left out)."""
    special = {PAD, UNK} | {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    return {ch for token in tokenizer.get_vocab() if token not in special for ch in token.removeprefix("##")}


def isolate_unknown(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` (one :func:`train_tokenizer` built before this step existed) with runs of
    characters outside its vocabulary split off the words they touch. Tokens of text made of known
    characters do not change."""
    tokenizer.pre_tokenizer = _pre_tokenizer(alphabet(tokenizer))
    return tokenizer


def _pre_tokenizer(known: set[str]) -> pre_tokenizers.PreTokenizer:
    # BERT's split on white space and punctuation, then each run of characters outside ``known``
    # its own piece, which word-piece makes one [UNK].
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.BertPreTokenizer(),
            pre_tokenizers.Split(Regex(f"[^{_char_class(known)}]+"), behavior="isolated"),
        ]
    )


def _char_class(chars: set[str]) -> str:
    """The inside of a regex character class for ``chars``: ranges of code points, each end
    written as ``\\x{...}`` so no character needs the class's own escaping."""
    points = sorted(map(ord, chars))
    ranges: list[list[int]] = []
    for point in points:
        if ranges and point == ranges[-1][1] + 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])
    return "".join(f"\\x{{{a:x}}}" + (f"-\\x{{{b:x}}}" if b > a else "") for a, b in ranges)


def load_tokenizer(path: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def unknown_id(piece: str, vocab_size: int, buckets: int) -> int:
    """The id of an ``[UNK]`` piece (normalized text, as the tokenizer's normalizer leaves it) in
    a model with ``buckets`` rows after its ``vocab_size``: the same in every process and
    platform (CRC-32 of the UTF-8 bytes)."""
    return vocab_size + zlib.crc32(piece.encode("utf-8")) % buckets


def token_ids(
    tokenizer: Tokenizer, texts: list[str], max_tokens: int, special: bool = False, unknown_buckets: int = 0
) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_tokens``; a text with no token gets ``[UNK]``.
    ``special``: with the tokenizer's own special tokens (a converted transformer's [CLS] and
    [SEP]), truncated by the tokenizer itself so that they stay. ``unknown_buckets``: each
    ``[UNK]`` piece of a text gets its own row (:func:`unknown_id`) instead of ``[UNK]``'s.

    Raises ``ValueError`` for a text that is not valid Unicode (a lone surrogate, which JSON's
    ``"\\ud800"`` escape and ``surrogateescape`` decoding produce)."""
    _refuse_surrogates(texts, range(len(texts)))
    if special:
        return [enc.ids for enc in tokenizer.encode_batch(texts, add_special_tokens=True)]
    return _encode(tokenizer, texts, max_tokens, unknown_buckets)


# Up to this many texts, the tokenizer's steps run one by one (_step_ids) beat ``encode_batch``,
# whose threads pay off only on more: texts with an accent, 26,972 against 22,577 texts/s four at
# a time, 27,072 against 30,693 eight at a time (a scratch loop over the dev questions, 2026-12-07).
_STEPS_MOST = 4


def _encode(tokenizer: Tokenizer, texts: list[str], max_tokens: int, buckets: int = 0) -> list[list[int]]:
    if len(texts) <= _STEPS_MOST:
        return [_step_ids(tokenizer, text, buckets)[:max_tokens] or [UNK_ID] for text in texts]
    out = [enc.ids[:max_tokens] or [UNK_ID] for enc in tokenizer.encode_batch(texts, add_special_tokens=False)]
    if buckets:  # only encode's own [UNK] tells which texts need their words' rows
        for i, ids in enumerate(out):
            if UNK_ID in ids:
                out[i] = _step_ids(tokenizer, texts[i], buckets)[:max_tokens] or [UNK_ID]
    return out


def _step_ids(tokenizer: Tokenizer, text: str, buckets: int = 0) -> list[int]:
    """The ids ``encode`` gives ``text`` (no special tokens, no truncation), with ``buckets`` each
    ``[UNK]`` word piece in its row (:func:`unknown_id`, on its normalized text). The tokenizer's
    own steps, one by one, as ``encode`` runs them: added tokens split off first (a tokenizer of
    dupq 0.5.0 or earlier gives a typed ``[UNK]`` its id), then each stretch between them
    normalized, split into words and cut into word pieces. (An encoding's offsets cannot give the
    text of a piece: after the normalizer's ``n't`` -> `` n't``, "can't" gives three pieces one
    offset.)"""
    added = {token.content: tid for tid, token in tokenizer.get_added_tokens_decoder().items()}
    stretches = re.split("(" + "|".join(map(re.escape, added)) + ")", text) if added else [text]
    normalizer, pre_tokenizer, model = tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.model
    size = tokenizer.get_vocab_size()
    ids: list[int] = []
    for stretch in stretches:
        if stretch in added:
            ids.append(added[stretch])
            continue
        normalized = normalizer.normalize_str(stretch) if normalizer else stretch
        for word, _ in pre_tokenizer.pre_tokenize_str(normalized) if pre_tokenizer else [(normalized, None)]:
            for token in model.tokenize(word):
                if token.id == UNK_ID and buckets:
                    ids.append(unknown_id(word[token.offsets[0] : token.offsets[1]], size, buckets))
                else:
                    ids.append(token.id)
    return ids


def _refuse_surrogates(texts: list[str], numbers: Iterable[int]) -> None:
    for number, text in zip(numbers, texts, strict=True):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"text {number} is not valid Unicode: "
                f"lone surrogate U+{ord(text[err.start]):04X} at character {err.start}"
            ) from None


# Printable ASCII after the normalizer: a word is a run of letters and digits, every other
# printable character is punctuation (BertPreTokenizer isolates each), spaces only separate.
_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"


_OUTSIDE_ASCII = re.compile(r"[^\x00-\x7f]")


def _may_leave(char: str) -> bool:
    """Whether the normalizer may make ``char`` (outside ASCII) something the fast path takes:
    a character that decomposes (``é``, ``ﬁ``, full-width ``Ａ``), punctuation, a space, a control
    or format character, a mark. Text whose first such character is another (Cyrillic, CJK, an
    emoji, ``€``) goes to the tokenizer without being normalized twice; a wrong guess costs time,
    never other ids."""
    return bool(unicodedata.decomposition(char)) or unicodedata.category(char)[0] in "PZCM"


def _ascii_words(unknown: str) -> re.Pattern[str]:
    """The words of a lower-cased printable ASCII chunk, ``unknown`` letters and digits (those
    the pre-tokenizer splits off) in runs of their own."""
    if not unknown:
        return re.compile(r"[a-z0-9]+|[^ a-z0-9]")
    known = "".join(ch for ch in _ALNUM if ch not in unknown)
    runs = [f"[{known}]+"] if known else []
    return re.compile("|".join([*runs, f"[{unknown}]+", r"[^ a-z0-9]"]))


class TokenIds:
    """``token_ids`` for one tokenizer, several times faster on the questions a service sees.

    Printable ASCII text (99 % of the Quora questions) takes a fast path in Python. For such text
    the normalizer comes down to lower-casing, backtick -> apostrophe and ``n't`` -> `` n't``
    (NFKC, accent stripping and control-character cleaning change nothing), and the pre-tokenizer
    to splitting on spaces and isolating every other non-alphanumeric character (and runs of any
    letter or digit the vocabulary lacks, which only a tiny vocabulary does). None of these
    steps crosses a space, so the ids of each space-separated chunk (``you?``, ``can't``) are
    worked out once, with the tokenizer's own WordPiece model, and kept in a dictionary of at most
    ``cache_chunks`` chunks. Other text is put through the tokenizer's own normalizer first, and
    takes the fast path when that gives printable ASCII (``What’s`` -> ``what's``, ``café`` ->
    ``cafe``, a tab -> a space), punctuation outside ASCII that the pre-tokenizer splits off alone
    allowed (``“``, ``—``). Text still outside it (another script, an emoji, ``€``), text that
    contains an added token (``[UNK]`` of a tokenizer from dupq 0.5.0 or earlier:
    :func:`without_added_tokens`), and a tokenizer whose normalizer or pre-tokenizer is not the
    one :func:`train_tokenizer` builds go through the tokenizer itself (:func:`token_ids`: its
    steps one by one for a few texts, ``encode_batch`` for more). Tests check that every path
    gives the same ids, ``unknown_buckets`` included.

    Why two paths: on the dev questions (``python bench/tokenizer.py``, 2026-12-04) ``encode_batch``
    took 127 us for the two questions of a /similarity request and the fast path 10 us, the
    encoder's share of such a request being about 0.7 ms; over 20,000 questions, 31,802 against
    114,976 questions/s (182,096 with the dictionary warm), with the same ids for every one. With
    apostrophes and quotes typed as phones type them (U+2019, U+201C, U+201D), two questions
    take 54 to 68 us through the normalizer and the fast path, against 128 to 155 us through the
    tokenizer before (2026-12-07); the normalizer is about 36 of them.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_tokens: int,
        cache_chunks: int = 100_000,
        special: bool = False,
        unknown_buckets: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.cache_chunks = cache_chunks
        self.special = special
        self.unknown_buckets = 0 if special else unknown_buckets
        self._size = tokenizer.get_vocab_size()
        self._words = None if special else _fast_words(tokenizer)
        self.fast = self._words is not None
        # Used by the fast path only, whose tokenizers all have train_tokenizer's normalizer and
        # pre-tokenizer (_fast_words).
        normalizer, pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
        self._normalize = normalizer.normalize_str if normalizer else None
        self._pre_tokenize = pre_tokenizer.pre_tokenize_str if pre_tokenizer else None
        self._alone: dict[str, bool] = {}  # non-ASCII characters: whether the pre-tokenizer splits each off alone
        added = [token.content.lower() for token in tokenizer.get_added_tokens_decoder().values()]
        self._added = re.compile("|".join(map(re.escape, added))) if added else None
        self._chunks: dict[str, list[int]] = {}

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if not self.fast:
            return token_ids(self.tokenizer, texts, self.max_tokens, self.special, self.unknown_buckets)
        out: list[list[int]] = []
        slow: list[int] = []
        chunks, chunk_ids, most = self._chunks, self._chunk_ids, self.max_tokens
        for i, text in enumerate(texts):
            low = self._fast_text(text)
            if low is not None:
                ids = [t for chunk in low.split() for t in (chunks.get(chunk) or chunk_ids(chunk))]
                out.append(ids[:most] or [UNK_ID])
            else:
                out.append([])
                slow.append(i)
        if slow:
            others = [texts[i] for i in slow]
            _refuse_surrogates(others, slow)  # named by their place in ``texts``
            for i, ids in zip(slow, _encode(self.tokenizer, others, most, self.unknown_buckets), strict=True):
                out[i] = ids
        return out

    def _fast_text(self, text: str) -> str | None:
        """``text`` lower-cased for the fast path, normalized first where it is not printable
        ASCII (``What’s`` -> ``what's``, ``café`` -> ``cafe``, a tab -> a space), or None when the
        tokenizer must take it: text that is still not printable ASCII once normalized (another
        script, an emoji), unless each character outside ASCII is punctuation that the
        pre-tokenizer splits off alone (``“``, ``—``: :meth:`_splits_off`); text that is not valid
        Unicode (refused there, by its place); text that contains an added token before or after
        normalizing."""
        added = self._added
        if text.isascii() and text.isprintable():
            low = text.lower()
            return None if added and added.search(low) else low
        first = _OUTSIDE_ASCII.search(text)  # text in another script says so at its first letter
        if (first and not _may_leave(first.group())) or (added and added.search(text.lower())):
            return None
        assert self._normalize is not None
        try:
            normalized = self._normalize(text)
        except UnicodeEncodeError:  # a lone surrogate
            return None
        # The normalizer's own output again through the fast path's lower-casing, "`" -> "'" and
        # "n't" -> " n't" gives the same words: each is a no-op on it, or splits an "n't" that the
        # pre-tokenizer splits anyway.
        if not normalized.isprintable() or (added and added.search(normalized)):
            return None
        if normalized.isascii() or all(map(self._splits_off, _OUTSIDE_ASCII.findall(normalized))):
            return normalized
        return None

    def _splits_off(self, char: str) -> bool:
        """Whether the pre-tokenizer makes ``char`` (normalized text, outside ASCII) a word of its
        own wherever it stands, as the fast path's words do any character but a letter or digit:
        BERT's split isolates punctuation (``“``, ``—``, ``¿``), and a symbol (``€``), a letter or a
        run of characters the vocabulary lacks is not isolated alone. Asked of the pre-tokenizer
        itself, once a character: ``a““a`` must give ``a``, ``“``, ``“``, ``a``."""
        alone = self._alone.get(char)
        if alone is None:
            assert self._pre_tokenize is not None
            alone = [word for word, _ in self._pre_tokenize(f"a{char}{char}a")] == ["a", char, char, "a"]
            if len(self._alone) < 10_000:
                self._alone[char] = alone
        return alone

    def _chunk_ids(self, chunk: str) -> list[int]:
        assert self._words is not None
        words = self._words.findall(chunk.replace("`", "'").replace("n't", " n't"))
        ids = [token.id for word in words for token in self.tokenizer.model.tokenize(word)]
        if self.unknown_buckets and UNK_ID in ids:
            ids = [
                unknown_id(word[token.offsets[0] : token.offsets[1]], self._size, self.unknown_buckets)
                if token.id == UNK_ID
                else token.id
                for word in words
                for token in self.tokenizer.model.tokenize(word)
            ]
        if len(self._chunks) < self.cache_chunks:
            self._chunks[chunk] = ids
        return ids


def _fast_words(tokenizer: Tokenizer) -> re.Pattern[str] | None:
    """The words of the fast path for ``tokenizer``, or None when it does not normalize and split
    exactly as :func:`train_tokenizer` sets it up (or did before :func:`isolate_unknown`)."""
    spec = json.loads(tokenizer.to_str())
    if spec["model"]["type"] != "WordPiece" or spec["normalizer"] != _spec(normalizer=_normalizer())["normalizer"]:
        return None
    if spec["pre_tokenizer"] == _spec(pre_tokenizer=pre_tokenizers.BertPreTokenizer())["pre_tokenizer"]:
        return _ascii_words("")
    known = alphabet(tokenizer)
    if spec["pre_tokenizer"] == _spec(pre_tokenizer=_pre_tokenizer(known))["pre_tokenizer"]:
        return _ascii_words("".join(ch for ch in _ALNUM if ch not in known))
    return None


def _spec(**parts: Any) -> dict[str, Any]:
    """The JSON form of a word-piece tokenizer made of ``parts``, to compare pipelines by."""
    reference = Tokenizer(WordPiece(unk_token=UNK))
    for name, part in parts.items():
        setattr(reference, name, part)
    spec: dict[str, Any] = json.loads(reference.to_str())
    return spec
