"""The training recipe: :class:`TrainConfig`'s defaults are the recipe that made the shipped model.

``dupq train --train FILE... --valid FILE --out DIR`` alone runs it (``make train`` adds only the
tokenizer to reuse and where to cache MiniLM's vectors, so that a rerun is byte-identical). Every
field is a ``dupq train`` flag with the field's ``help`` as its help text, and the whole config is
stored in the written model directory's ``config.json``. What was tried and left out of the
recipe is in ``docs/experiments.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters; the network's own are :class:`model.config.EncoderConfig`."""

    # The steps: each draws ``batch_size`` duplicate pairs from distinct duplicate groups (the
    # rows and columns of the similarity matrix) and ``pair_batch_size`` labelled pairs.
    epochs: int = field(default=9, metadata={"help": "passes over the positive pairs"})
    batch_size: int = field(default=256, metadata={"help": "duplicate pairs per batch (rows of the similarity matrix)"})
    pair_batch_size: int = field(default=128, metadata={"help": "labelled pairs per step for the logistic pair loss"})
    max_group_pairs: int = field(
        default=20, metadata={"help": "implied (transitive) positives drawn per duplicate group"}
    )
    topic_size: int = field(
        default=8,
        metadata={"help": "from epoch 2, batches drawn from k-means topics this many batches big (0: random)"},
    )
    lr: float = field(default=2e-3, metadata={"help": "AdamW peak learning rate, linear warm-up then linear decay"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    patience: int = field(default=2, metadata={"help": "epochs without validation gain before stopping"})
    # The loss: triplet (mean and closest negative) + in-batch softmax, each both ways, + the
    # weighted logistic pair loss + the weighted distillation (model.training.losses).
    margin: float = field(default=0.25, metadata={"help": "alpha of the triplet loss"})
    temperature: float = field(default=0.05, metadata={"help": "of the in-batch softmax loss"})
    pair_weight: float = field(default=1.0, metadata={"help": "weight of the logistic pair loss (0 turns it off)"})
    swap_negatives: bool = field(
        default=True,
        metadata={
            "help": "each anchor that a rule rewrites into the same words with another meaning (two things "
            "exchanged, a negation moved; model.training.negatives) brings the rewrite as one more negative "
            "column of its step's similarity matrix"
        },
    )
    # The teacher, all-MiniLM-L6-v2 (train extra): token embeddings from its vectors of each token,
    # pretraining passes towards its vectors of the questions, then distillation of its cosines.
    teacher: Literal["minilm", "none"] = field(
        default="minilm",
        metadata={
            "help": "all-MiniLM-L6-v2 initialises the token embeddings and teaches every training question "
            "(pretraining, distillation); none: random embeddings, no pretraining, no distillation"
        },
    )
    pretrain_epochs: int = field(
        default=3,
        metadata={
            "help": "passes over the training questions, before the pair training, that pull the network's "
            "vectors towards the teacher's, projected onto the network's width (0: none)"
        },
    )
    distill_weight: float = field(
        default=5.0,
        metadata={"help": "weight of the distillation of the teacher's cosines among each step's questions (0: off)"},
    )
    teacher_dtype: Literal["float32", "bfloat16"] = field(
        default="float32",
        metadata={
            "help": "precision the teacher encodes the training questions in: bfloat16 (torch autocast) is about "
            "3 times as fast as float32 on a CPU with bfloat16 instructions (AVX-512 BF16), each vector within a "
            "cosine of 0.9999 of float32's, so the weights differ a little; elsewhere it is refused (5 times slower)"
        },
    )
    teacher_threads: int = field(
        default=0,
        metadata={
            "help": "torch threads for the teacher's pass over the training questions (0: every CPU this process "
            "may use); apart from --threads, which the pair training keeps: MiniLM's vectors came out bit for bit "
            "the same on 1 and 2 threads"
        },
    )
    teacher_cache: str = field(
        default="",
        metadata={"help": ".npy file for the teacher's vectors of the training questions (reused if it matches)"},
    )
    # Fine-tuning (dupq train --init-from MODEL_DIR).
    replay: float = field(
        default=1.0,
        metadata={
            "help": "with --init-from: pairs drawn from the model's own training files, as a multiple of the "
            "pairs given, mixed in so that what it knew is not forgotten (0: none)"
        },
    )
    # The run.
    vocab_size: int = field(default=16000, metadata={"help": "word-piece vocabulary size"})
    members: int = field(
        default=1,
        metadata={
            "help": "networks to train, each with its own seed (--seed, --seed + 1, ...), at once in processes of "
            "their own that share out --threads and share the tokenizer and the teacher's vectors; the model's "
            "vector is theirs side by side, so its cosine is the mean of theirs"
        },
    )
    seed: int = field(default=0, metadata={"help": "seeds the weights, the batches and dropout"})
    threads: int = field(default=0, metadata={"help": "torch threads in all (0: torch's default)"})
    device: str = field(
        default="cpu", metadata={"help": "torch device to train on: cpu, or cuda where PyTorch has a GPU"}
    )
    max_steps: int = field(
        default=0, metadata={"help": "stop after this many steps in all (0: no limit); for smoke tests"}
    )


FINE_TUNING = {
    "epochs": 20,
    "patience": 5,
    "batch_size": 64,
    "pair_batch_size": 64,
    "lr": 5e-4,
    "topic_size": 0,
    "teacher": "none",
    "pretrain_epochs": 0,
    "pair_weight": 10.0,
}
"""What ``dupq train --init-from`` changes in the recipe unless the flag is given: short, gentle
passes over a site's own pairs (about a thousand; up to 20, stopping after 5 without gain on
``--valid``, whose few hundred pairs make one or two flat epochs noise), without the teacher, with
a heavy logistic pair loss whose boundary is the model's own tau
(:class:`model.training.trainer.Trainer`), so that the model's tau still serves (kept unless
``--valid`` gives evidence against it, :func:`model.training.metrics.threshold_near`) and the
original domain keeps its accuracy."""
