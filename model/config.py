"""The encoder's architecture, as a frozen dataclass stored in every model directory's ``config.json``.

Serving reads it back from ``config.json`` (``max_tokens``); training builds the PyTorch network
from it (:mod:`model.training.network`), and ``dupq train`` makes one flag of each field, with the
field's ``help`` as its help text. The defaults are the shipped model's architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class EncoderConfig:
    """Token embedding -> (bi)LSTM -> pooling -> linear -> L2 normalization."""

    vocab_size: int = field(metadata={"help": "rows of the token embedding (the tokenizer's vocabulary)"})
    embed_dim: int = field(default=128, metadata={"help": "width of the token embedding"})
    hidden_dim: int = field(default=192, metadata={"help": "LSTM hidden size per direction"})
    num_layers: int = field(default=1, metadata={"help": "stacked LSTM layers"})
    bidirectional: bool = field(default=True, metadata={"help": "read the question both ways"})
    pooling: Literal["mean", "max", "mean_max"] = field(
        default="mean_max", metadata={"help": "how the token states become one vector, over real tokens only"}
    )
    out_dim: int = field(
        default=256, metadata={"help": "width of the final embedding (a linear projection); 0 keeps the pooled width"}
    )
    dropout: float = field(default=0.1, metadata={"help": "on embeddings and pooled features, training only"})
    max_tokens: int = field(default=64, metadata={"help": "longer questions are truncated by the tokenizer"})
    unknown_buckets: int = field(
        default=4096,
        metadata={
            "help": "rows after the vocabulary for the words it lacks (another script, an emoji), each word hashed "
            "to one so that different unknown words get different vectors; added after training from scratch, "
            "trained by fine-tuning; 0: every unknown word is [UNK]. A model directory without it has 0"
        },
    )
