"""The word-piece tokenizer, trained on the training text with Hugging Face ``tokenizers``.

Normalization lower-cases, applies Unicode NFKC, strips accents, and splits punctuation off
words, so a raw question (``Can't I?``) and its tokenized BiMPM form (``Ca n't I ?``) give the
same tokens. Unknown words fall back to word pieces, then to ``[UNK]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1  # fixed by the order of the special tokens given to the trainer


def _normalizer() -> normalizers.Normalizer:
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
    """Learn a word-piece vocabulary of at most ``vocab_size`` entries from ``texts``."""
    tokenizer = Tokenizer(WordPiece(unk_token=UNK, max_input_chars_per_word=64))
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, UNK], show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    assert tokenizer.token_to_id(PAD) == PAD_ID and tokenizer.token_to_id(UNK) == UNK_ID
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def token_ids(tokenizer: Tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_tokens``; a text with no token gets ``[UNK]``."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return [enc.ids[:max_tokens] or [UNK_ID] for enc in encodings]
