"""The hyperparameters of the encoder and of its training, as plain dataclasses.

Both are stored in a model directory's ``config.json``; ``dupq train`` makes one flag of each
field, with the field's ``help`` as its help text. This module imports nothing heavy, so the
command line can build its parser without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of :class:`SiameseEncoder`; saved in the model directory's ``config.json``."""

    vocab_size: int = field(metadata={"help": "rows of the token embedding (the tokenizer's vocabulary)"})
    embed_dim: int = field(default=128, metadata={"help": "width of the token embedding"})
    hidden_dim: int = field(default=256, metadata={"help": "LSTM hidden size per direction"})
    num_layers: int = field(default=1, metadata={"help": "stacked LSTM layers"})
    bidirectional: bool = field(default=True, metadata={"help": "read the question both ways"})
    pooling: Literal["mean", "max", "mean_max"] = field(
        default="max", metadata={"help": "how the token states become one vector, over real tokens only"}
    )
    out_dim: int = field(
        default=256, metadata={"help": "width of the final embedding (a linear projection); 0 keeps the pooled width"}
    )
    dropout: float = field(default=0.1, metadata={"help": "on embeddings and pooled features, training only"})
    max_tokens: int = field(default=64, metadata={"help": "longer questions are truncated by the tokenizer"})


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters; stored in the model's config.json."""

    epochs: int = field(default=8, metadata={"help": "passes over the positive pairs"})
    batch_size: int = field(default=128, metadata={"help": "duplicate pairs per batch (rows of the similarity matrix)"})
    pair_batch_size: int = field(default=64, metadata={"help": "labelled pairs per step for the logistic pair loss"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW peak learning rate, linear warm-up then linear decay"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    loss: str = field(default="triplet+softmax", metadata={"help": "'+'-joined subset of {triplet, softmax}"})
    margin: float = field(default=0.25, metadata={"help": "alpha of the triplet loss"})
    temperature: float = field(default=0.05, metadata={"help": "of the softmax contrastive loss"})
    pair_weight: float = field(default=1.0, metadata={"help": "weight of the logistic pair loss (0 turns it off)"})
    hard_negatives: bool = field(
        default=True, metadata={"help": "add labelled non-duplicates of the anchors as negative columns"}
    )
    max_group_pairs: int = field(
        default=20, metadata={"help": "implied (transitive) positives drawn per duplicate group"}
    )
    topic_size: int = field(
        default=0,
        metadata={"help": "from epoch 2, batches drawn from k-means topics this many batches big (0: random)"},
    )
    topic_share: float = field(
        default=1.0, metadata={"help": "share of the pairs batched by topic; the others make random batches"}
    )
    patience: int = field(default=2, metadata={"help": "epochs without validation gain before stopping"})
    vocab_size: int = field(default=16000, metadata={"help": "word-piece vocabulary size"})
    glove: bool = field(default=False, metadata={"help": "initialise token embeddings from GloVe 6B 50d (train extra)"})
    minilm_embed: bool = field(
        default=False,
        metadata={
            "help": "initialise token embeddings from all-MiniLM-L6-v2's vector of each token alone, reduced by "
            "PCA (train extra); with --glove, the columns after GloVe's 50"
        },
    )
    seed: int = field(default=0, metadata={"help": "seeds the weights, the batches and dropout"})
    distill_weight: float = field(
        default=0.0, metadata={"help": "weight of similarity distillation from all-MiniLM-L6-v2 (train extra); 0: off"}
    )
    teacher_cache: str = field(
        default="",
        metadata={"help": ".npy file for the teacher's vectors of the training questions (reused if it matches)"},
    )
    teacher_dtype: Literal["float32", "bfloat16"] = field(
        default="float32",
        metadata={
            "help": "precision MiniLM encodes the training questions in: bfloat16 (torch autocast) is about 3 times "
            "as fast on a CPU with bfloat16 instructions (AVX-512 BF16); each vector has a cosine of 0.9999 or more "
            "with float32's"
        },
    )
    distill_all: bool = field(
        default=False, metadata={"help": "teach every training question, not only those with a known duplicate"}
    )
    distill_loss: Literal["mse", "kl"] = field(
        default="mse",
        metadata={
            "help": "how distillation compares the step's cosines with the teacher's: mse, each pair's cosine; "
            "kl, each question's softmax over the others (at --distill-temperature), so only their order counts"
        },
    )
    distill_temperature: float = field(
        default=0.05, metadata={"help": "of --distill-loss kl, student and teacher alike"}
    )
    pretrain_epochs: int = field(
        default=0,
        metadata={
            "help": "epochs over the training questions (see --pretrain-questions), before the pair training, "
            "that pull the network's vectors (see --pretrain-head) towards all-MiniLM-L6-v2's "
            "(train extra); 0: none"
        },
    )
    pretrain_head: Literal["linear", "projection"] = field(
        default="linear",
        metadata={
            "help": "how pretraining compares the network's vector with MiniLM's: linear, through a learned linear "
            "head (discarded afterwards); projection, with no head, against MiniLM's vector projected onto the "
            "network's width (the top singular directions of the taught questions' vectors), so the network's own "
            "cosines are pulled towards MiniLM's"
        },
    )
    pretrain_questions: int = field(
        default=0,
        metadata={
            "help": "how many training questions pretraining teaches (0: all): every one the distillation teaches "
            "(with a known duplicate unless --distill-all), then others drawn at random (--seed) up to this many; "
            "MiniLM encodes 150 to 270 of them a second on 2 cores (700 to 950 with --teacher-dtype bfloat16)"
        },
    )
    memory: int = field(
        default=0,
        metadata={
            "help": "cross-batch memory: from epoch 2 the softmax loss also scores each row against the vectors "
            "of up to this many questions of recent batches (no gradient through them; the row's own duplicate "
            "group left out), more negatives than one batch holds; 0: off"
        },
    )
    ema: float = field(
        default=0.0,
        metadata={
            "help": "keep an exponential moving average of the weights with this decay per step (e.g. 0.998); "
            "validation, early stopping and the written model use the average; 0: off"
        },
    )
    max_steps: int = field(
        default=0, metadata={"help": "stop after this many steps in all (0: no limit); for smoke tests"}
    )
    members: int = field(
        default=1,
        metadata={
            "help": "networks to train, each with its own seed (--seed, --seed + 1, ...), at once in processes of "
            "their own that share out --threads and share the tokenizer and MiniLM's vectors; the model's vector "
            "is theirs side by side, so its cosine is the mean of theirs (twice the vector and encoding cost for 2)"
        },
    )
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default), in all"})
    device: str = field(
        default="cpu", metadata={"help": "torch device to train on: cpu, or cuda where PyTorch has a GPU"}
    )
