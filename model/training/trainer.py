"""Training the Siamese encoder on labelled question pairs, by the recipe of :mod:`model.training.config`.

Each step draws b duplicate pairs from distinct duplicate groups (plus labelled non-duplicates of
the anchors as extra negative columns), encodes them with the one shared network, and scores the
b x (b + h) similarity matrix with the triplet loss (mean and closest negative) and the in-batch
softmax loss; a second batch of labelled pairs of both kinds adds a logistic pair loss, and the
teacher's cosines among the step's questions a distillation term (:mod:`model.training.losses`).
From the second epoch, each batch is drawn from one k-means topic of the network's vectors. Before
the pair training, the teacher (all-MiniLM-L6-v2) gives the token embeddings their start and
pretraining passes pull the network's vectors towards its own. Early stopping watches validation
accuracy + MRR@10; the best epoch is kept, and the threshold tau and the calibration are fitted on
the validation pairs (when fine-tuning, tau stays the model's unless they give evidence against it).

Each anchor's meaning-changing rewrite (:mod:`model.training.negatives`, unless
``--no-swap-negatives``) is one more negative column of its step's similarity matrix;
``--init-from`` continues from a model directory (fine-tuning, with a replay sample of its own
training pairs).

:class:`Trainer` trains one network; it is handed its data, its teacher and, in :meth:`Trainer.fit`,
its evaluator. :func:`train` reads the files, trains one network or several at once (side by side),
and writes the model directory.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import random
import tempfile
import time
import typing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

from model.config import EncoderConfig
from model.files import check_writable
from model.model_dir import TOKENIZER, read_json, sha256_file
from model.tokenizer import TokenIds, load_tokenizer, train_tokenizer, without_added_tokens
from model.training.config import TrainConfig
from model.training.data import LoadReport, Pair, load_pairs, load_validation_pairs, require_pairs
from model.training.evaluation import PairEvaluator
from model.training.export import load_network, save_model_dir
from model.training.groups import PairGraph, duplicate_batches
from model.training.losses import StepTensors, recipe_terms, total_loss
from model.training.metrics import fit_logistic, threshold_near
from model.training.negatives import choose, rewrites
from model.training.network import (
    Network,
    SiameseEncoder,
    SideBySide,
    encode,
    forward_by_length,
    with_unknown_rows,
)
from model.training.teacher import MiniLMTeacher, Teacher

logger = logging.getLogger(__name__)


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


def _warmup_then_decay(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate climbs linearly over the first 5 % of ``total`` steps, then falls
    linearly to 0 at the last one."""
    warmup = max(1, total // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )


def _snapshot(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``network``'s weights that later steps leave alone."""
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def teacher_for(config: TrainConfig) -> Teacher | None:
    """The teacher the config names."""
    if config.teacher != "minilm":
        return None
    return MiniLMTeacher(config.teacher_dtype, config.teacher_cache, config.teacher_threads)


class Trainer:
    """Trains one network on the pairs of ``graph``; ``teacher`` (or None) as the config says.
    ``init``: a trained network to continue from (fine-tuning) instead of a new one. ``boundary``:
    (tau, slope) of the model it continues from, where the logistic pair loss then puts its
    boundary, fixed, instead of learning one: a site's duplicates are taught to score above the
    tau the model has, and its non-duplicates below it."""

    def __init__(
        self,
        graph: PairGraph,
        tokenizer: Tokenizer,
        config: TrainConfig,
        encoder_config: dict[str, Any],
        teacher: Teacher | None,
        progress: bool = True,
        init: SiameseEncoder | None = None,
        boundary: tuple[float, float] | None = None,
    ) -> None:
        self.config = config
        self.progress = progress
        self.graph = graph
        self.tokenizer = tokenizer
        _seed_everything(config.seed)
        if init is not None:
            self.network = init
        else:
            # Its rows for unknown words come after training (_with_rows in train).
            architecture = {**encoder_config, "unknown_buckets": 0}
            self.network = SiameseEncoder(EncoderConfig(vocab_size=tokenizer.get_vocab_size(), **architecture))
            if teacher is not None:
                logger.info("token embeddings from the teacher for %d tokens", self._init_embedding(teacher))
        self.device = _device(config.device)
        self.network.to(self.device)
        self.token_ids = TokenIds(
            tokenizer, self.network.config.max_tokens, unknown_buckets=self.network.config.unknown_buckets
        )
        self.sequences = self.token_ids(graph.texts)
        # The logistic pair loss learns its own scale and shift (they are not part of the model),
        # or keeps those of the model it fine-tunes.
        scale, shift = (10.0, 0.7) if boundary is None else (boundary[1], boundary[0])
        self.pair_scale = torch.nn.Parameter(torch.tensor(scale, device=self.device), requires_grad=boundary is None)
        self.pair_shift = torch.nn.Parameter(torch.tensor(shift, device=self.device), requires_grad=boundary is None)
        self.terms = recipe_terms(
            config.margin,
            config.temperature,
            config.pair_weight,
            config.distill_weight if teacher is not None else 0.0,
            self.pair_scale,
            self.pair_shift,
        )
        self.labelled = [(a, b, 1) for a, b in graph.positives] + [(a, b, 0) for a, b in graph.negatives]
        # The teacher's unit vector of every training question, in the order of graph.texts.
        self.teacher: torch.Tensor | None = None
        if teacher is not None and (config.distill_weight or config.pretrain_epochs):
            self.teacher = torch.from_numpy(teacher.question_vectors(graph.texts)).to(self.device)
        # Each question's meaning-changing rewrites (model.training.negatives), made once.
        self.rewrites = [rewrites(text) for text in graph.texts] if config.swap_negatives else None
        logger.info(
            "training on %d questions in %d duplicate groups, %d labelled positives, %d labelled negatives",
            len(graph.texts),
            len(graph.members),
            len(graph.positives),
            len(graph.negatives),
        )

    def _init_embedding(self, teacher: Teacher) -> int:
        """Fill the token embedding with the teacher's vector of each token's text alone (a word
        piece without its ``##``), centred and reduced by PCA to the embedding's width, at the
        scale of the random initialisation (the way Model2Vec distils static vectors from a
        sentence encoder). [PAD] and [UNK] keep theirs. Returns how many tokens."""
        weight = self.network.embed.weight.data
        texts = [""] * weight.shape[0]
        for token, tid in self.tokenizer.get_vocab().items():
            if 2 <= tid < len(texts):
                texts[tid] = token[2:] if token.startswith("##") else token
        rows = [tid for tid, text in enumerate(texts) if text]
        vectors = teacher.token_vectors([texts[tid] for tid in rows]).astype(np.float64)
        vectors -= vectors.mean(0)
        _, _, components = np.linalg.svd(vectors, full_matrices=False)
        reduced = vectors @ components[: weight.shape[1]].T
        reduced *= float(weight[2:].std()) / reduced.std()
        weight[rows] = torch.from_numpy(reduced).to(weight.dtype)
        return len(rows)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors of the network as it stands."""
        return encode(self.network, self.token_ids, texts)

    def _swaps(self, anchors: list[int], rng: random.Random) -> list[list[int]]:
        """The token ids of a rewrite of each anchor that a rule rewrites (one drawn by ``rng``)."""
        if self.rewrites is None:
            return []
        chosen = (choose(self.rewrites[q], rng) for q in anchors)
        return self.token_ids([text for text in chosen if text is not None])

    def _loss(
        self,
        anchors: list[int],
        others: list[int],
        extra: list[int],
        labelled: list[tuple[int, int, int]],
        swaps: Sequence[list[int]] = (),
    ) -> torch.Tensor:
        questions = anchors + others + extra + [a for a, _, _ in labelled] + [b for _, b, _ in labelled]
        # (M + s, D): the step's questions, then the anchors' rewrites
        every = forward_by_length(self.network, [self.sequences[q] for q in questions] + list(swaps))
        b, h, m, n = len(anchors), len(extra), len(labelled), len(questions)
        vectors, rewritten = every[:n], every[n:]
        v1, v2, v3 = vectors[:b], vectors[b : 2 * b], vectors[2 * b : 2 * b + h]
        start = 2 * b + h
        pa, pb = vectors[start : start + m], vectors[start + m :]
        labels = [y for _, _, y in labelled]
        teacher = None
        if self.teacher is not None:
            teacher = self.teacher[torch.from_numpy(np.asarray(questions))]
        step = StepTensors(
            sim=v1 @ torch.cat([v2, v3, rewritten]).T,  # (b, b + h + s): positives on the diagonal
            sim_back=v2 @ v1.T,  # (b, b): the same pairs seen from the other side
            pair_sims=(pa * pb).sum(1),  # (m,): the labelled pairs
            pair_labels=torch.tensor(labels, device=vectors.device),
            vectors=vectors,
            teacher=teacher,
        )
        return total_loss(self.terms, step)

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
        return [int(assigned[row[a], 0]) for a, _ in positives]

    def pretrain(self, batch_size: int = 256) -> list[float]:
        """``pretrain_epochs`` passes over the training questions that pull the network's own
        vector of each towards the teacher's, projected onto the network's width (cosine loss, as
        Reimers & Gurevych (2020) distil sentence encoders by matching vectors): each question
        passes on what the teacher knows of it before the pairs shape the space. Returns each
        pass's mean loss."""
        c = self.config
        if self.teacher is None:
            raise ValueError("pretraining needs a teacher")
        rng = np.random.default_rng(c.seed)
        rows = np.arange(len(self.graph.texts))
        targets = self._projected_teacher()
        params = list(self.network.parameters())
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        steps = (len(rows) + batch_size - 1) // batch_size
        if c.max_steps:
            steps = min(steps, c.max_steps)
        scheduler = _warmup_then_decay(optimizer, steps * c.pretrain_epochs)
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
                vectors = forward_by_length(self.network, [self.sequences[q] for q in questions])
                loss = 1 - F.cosine_similarity(vectors, targets[torch.from_numpy(questions)]).mean()
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
        of the vectors): the network's own cosines are pulled towards the teacher's, with no head
        in between."""
        assert self.teacher is not None
        dim, width = self.network.dim, self.teacher.shape[1]
        if dim > width:
            raise ValueError(f"pretraining needs the network's width ({dim}) at most the teacher's ({width})")
        # The eigenvectors of T^T T are T's right singular vectors, all `width` of them however few
        # the rows; eigh sorts them by ascending eigenvalue.
        teacher = self.teacher.double()
        energy, basis = torch.linalg.eigh(teacher.T @ teacher)
        top = basis[:, -dim:]
        kept = float(energy[-dim:].sum() / energy.sum())
        logger.info("teacher projected onto %d of %d directions (%.1f %% of its energy)", dim, width, 100 * kept)
        return (teacher @ top).float()

    def fit(self, evaluator: PairEvaluator) -> tuple[dict[str, float], int]:
        """Pretrain (with a teacher), then train on the pairs, scoring each epoch with
        ``evaluator``; the network is left with the best epoch's weights. Returns that epoch's
        figures and number."""
        c = self.config
        if self.teacher is not None and c.pretrain_epochs:
            self.pretrain()
        rng = random.Random(c.seed)
        swap_rng = random.Random(c.seed + 1)  # its own stream: the batches stay those of a run without
        params = [p for p in (*self.network.parameters(), self.pair_scale, self.pair_shift) if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        steps_per_epoch = max(1, len(self.graph.group_positives(c.max_group_pairs, random.Random(0))) // c.batch_size)
        total = steps_per_epoch * c.epochs if not c.max_steps else min(c.max_steps, steps_per_epoch * c.epochs)
        scheduler = _warmup_then_decay(optimizer, total)
        best_score, best_state, best_metrics, best_epoch, stale, step = -math.inf, None, {}, 0, 0, 0
        for epoch in range(1, c.epochs + 1):
            positives = self.graph.group_positives(c.max_group_pairs, rng)
            # The first epoch's network knows too little to tell topics apart.
            topics = self._topics(positives, epoch) if c.topic_size and epoch > 1 else None
            self.network.train()
            labelled = self.labelled[:]
            rng.shuffle(labelled)
            batches = duplicate_batches(self.graph, positives, c.batch_size, rng, topics)
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
                loss = self._loss(anchors, others, extra, chunk, self._swaps(anchors, swap_rng))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if c.max_steps and step >= c.max_steps:
                    break
            metrics = evaluator(self.encode)
            score = metrics["accuracy"] + metrics["mrr@10"]
            logger.info(
                "epoch %d: valid accuracy %.4f, auc %.4f, mrr@10 %.4f (tau %.3f)",
                epoch,
                metrics["accuracy"],
                metrics["roc_auc"],
                metrics["mrr@10"],
                metrics["threshold"],
            )
            if score > best_score:
                best_score, best_epoch, best_metrics, stale = score, epoch, metrics, 0
                best_state = _snapshot(self.network)
            else:
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
        "sha256": report.sha256(),
        "format": report.format,
        "pairs": report.kept,
        "skipped": report.n_skipped,
        **({"labelled_both_ways": len(report.conflicting)} if report.conflicting else {}),
    }


def _check_one_batch(graph: PairGraph, batch_size: int) -> None:
    """A ``ValueError`` that says what to do where the training pairs cannot fill one batch: a
    step takes ``batch_size`` duplicate pairs of distinct groups, and with fewer not one step would
    run (only tau and the calibration would be fitted, on the validation pairs)."""
    groups = len({graph.group[a] for a, _ in graph.positives})
    if groups < batch_size:
        remedy = f", or lower --batch-size to at most {groups}" if groups >= 2 else " (a step takes at least 2)"
        raise ValueError(
            f"the training pairs' duplicates (label 1) fall into {groups} group{'' if groups == 1 else 's'} of "
            f"questions, and a step takes {batch_size} duplicate pairs of distinct groups: not one step would "
            f"train. Add duplicate pairs{remedy}"
        )


def train(
    train_files: Sequence[str | Path],
    valid_file: str | Path,
    out: str | Path,
    config: TrainConfig,
    encoder_config: dict[str, Any] | None = None,
    name: str = "siamese-lstm",
    tokenizer_file: str | Path | None = None,
    progress: bool = True,
    teacher: Teacher | None = None,
    init_from: str | Path | None = None,
    replay_files: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """Train on ``train_files``, validate on ``valid_file``, write the model directory ``out``;
    returns its config. With ``tokenizer_file``, reuse that tokenizer instead of training one. The
    teacher is the one the config names unless one is given. With ``members`` above 1, train that
    many networks at once (:func:`_train_members`) and write them side by side.

    ``init_from``: fine-tune, continuing from that model directory's network and tokenizer (its
    architecture: ``encoder_config`` must be empty), with ``config.replay`` times as many pairs
    as given drawn from ``replay_files`` (by default the model's own training files, as its
    ``config.json`` names them, checked against their sha256)."""
    _device(config.device)  # a device that is not there is refused before the data is read
    if init_from is not None and Path(out).resolve() == Path(init_from).resolve():
        raise ValueError(
            f"--out {out} is the model directory that --init-from starts from: write the fine-tuned model to "
            "another one, so that the model you have stays, to compare with and to go back to"
        )
    check_writable(out)
    if config.members < 1:
        raise ValueError(f"--members {config.members}: train at least 1 network")
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.time()
    start = _starting_point(init_from, config, encoder_config, tokenizer_file) if init_from else None
    train_pairs: list[Pair] = []
    reports = []
    for path in train_files:
        pairs, report = load_pairs(path)
        train_pairs += pairs
        reports.append(report)
    require_pairs(train_pairs, reports, "train on")
    valid_pairs, valid_report = load_validation_pairs(valid_file)
    replayed: dict[str, Any] = {}
    if start is not None and init_from is not None:
        count = round(config.replay * len(train_pairs))
        sample, replayed = _replay(init_from, start.config, replay_files, count, config.seed)
        train_pairs += sample
    given = load_tokenizer(tokenizer_file) if tokenizer_file else None  # read before `out` is overwritten
    if start is not None:
        given = start.tokenizer
    graph = PairGraph.build(train_pairs)
    _check_one_batch(graph, config.batch_size)
    # A tokenizer trained here is the same in every run (model.tokenizer.train_tokenizer); the
    # shipped model's was trained before it was, so reproducing that model takes its file. One
    # given or started from reads a typed "[PAD]" as text, as a trained one does: the network
    # trained here gets a version of its own anyway.
    tokenizer = without_added_tokens(given) if given else train_tokenizer(graph.texts, vocab_size=config.vocab_size)
    if teacher is not None and config.members > 1:
        # Each member runs in a process of its own and makes its teacher from the config.
        raise ValueError("a teacher object cannot be handed to members trained in processes of their own")
    evaluator = PairEvaluator(valid_pairs)
    started_at: dict[str, float] = {}
    if start is not None:
        start_ids = TokenIds(
            start.tokenizer, start.network.config.max_tokens, unknown_buckets=start.network.config.unknown_buckets
        )
        started_at = evaluator.score(lambda texts: encode(start.network, start_ids, texts)).metrics(start.boundary[0])
        logger.info(
            "%s on the validation pairs: accuracy %.4f at its tau %.3f",
            init_from,
            started_at["accuracy"],
            started_at["threshold"],
        )
    about: dict[str, Any]
    network: Network
    buckets = EncoderConfig(vocab_size=tokenizer.get_vocab_size(), **(encoder_config or {})).unknown_buckets
    if config.members > 1:
        network, member_configs = _train_members(
            train_files, valid_file, graph, config, encoder_config or {}, tokenizer
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
        teacher = teacher or teacher_for(config)
        trainer = Trainer(
            graph,
            tokenizer,
            config,
            encoder_config or {},
            teacher,
            progress=progress,
            init=_with_rows(start.network, buckets, config.seed) if start else None,
            boundary=start.boundary if start else None,
        )
        _, epoch = trainer.fit(evaluator)
        network, about = _with_rows(trainer.network, buckets, config.seed), {"best_epoch": epoch}
    if start is not None:
        about["init_from"] = {
            "path": str(init_from),
            "version": start.config.get("version"),
            "weights_sha256": start.config.get("weights_sha256"),
            "validation": {k: round(started_at[k], 5) for k in ("accuracy", "threshold", "mrr@10")},
        }
        about["replay"] = replayed
    # Threshold and calibration from the validation pairs, with the best epoch's weights. A
    # fine-tuned model keeps the tau it started from unless the pairs give evidence against it
    # (within one standard error of their best accuracy, the cut nearest to it): the pair loss
    # taught the site's pairs around that tau, and a few hundred pairs' own best cut is a noisy
    # estimate that can cost the old domain many points (docs/experiments.md).
    metrics, (slope, intercept) = fit_threshold(network, tokenizer, evaluator, start.boundary[0] if start else None)
    tau = metrics["threshold"]
    if start is not None and metrics["accuracy"] <= started_at["accuracy"]:
        logger.warning(
            "the fine-tuned model does no better on the validation pairs than %s (accuracy %.4f against %.4f): "
            "keep that one",
            init_from,
            metrics["accuracy"],
            started_at["accuracy"],
        )
    extra = {
        "training": {
            "config": dataclasses.asdict(config),
            "train_files": [_describe(r) for r in reports],
            "valid_file": _describe(valid_report),
            **about,
            "duration_s": round(time.time() - started, 1),
            "torch": torch.__version__,
            "tokenizer": _tokenizer_origin(tokenizer_file, init_from),
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


def fit_threshold(
    network: Network, tokenizer: Tokenizer, evaluator: PairEvaluator, near: float | None = None
) -> tuple[dict[str, float], tuple[float, float]]:
    """The validation figures of ``network`` at its tau, and its calibration (slope, intercept):
    tau is the best cut of the validation pairs, or with ``near`` (fine-tuning: the tau it started
    from) the cut nearest it within one standard error of the best (:func:`threshold_near`)."""
    config = network.config
    token_ids = TokenIds(tokenizer, config.max_tokens, unknown_buckets=config.unknown_buckets)
    scored = evaluator.score(lambda texts: encode(network, token_ids, texts))
    metrics = scored.metrics(None if near is None else threshold_near(scored.similarities, scored.labels, near))
    return metrics, fit_logistic(scored.similarities, scored.labels)


def save_refitted(
    out: str | Path,
    network: Network,
    tokenizer: Tokenizer,
    evaluator: PairEvaluator,
    *,
    name: str,
    training: dict[str, Any],
) -> dict[str, Any]:
    """Write ``network`` (trained elsewhere: a member taken out of a side-by-side model, a network
    given rows for unknown words) as a model directory, with tau and the calibration fitted on the
    validation pairs as training fits them (:func:`fit_threshold`); returns its config."""
    metrics, calibration = fit_threshold(network, tokenizer, evaluator)
    return save_model_dir(
        out,
        network,
        tokenizer,
        name=name,
        threshold=metrics["threshold"],
        calibration=calibration,
        extra={"training": training, "validation": {k: round(v, 5) for k, v in metrics.items()}},
    )


def _with_rows(network: SiameseEncoder, buckets: int, seed: int) -> SiameseEncoder:
    """``network`` as it is if it has rows for unknown words (a model fine-tuned again), else with
    ``buckets`` of them (:func:`with_unknown_rows`): after training from scratch, or before
    fine-tuning a model written without them."""
    if network.config.unknown_buckets or not buckets:
        return network
    logger.info("adding %d rows for unknown words to the token embedding", buckets)
    return typing.cast(SiameseEncoder, with_unknown_rows(network, buckets, seed))


def _tokenizer_origin(tokenizer_file: str | Path | None, init_from: str | Path | None) -> str:
    if init_from:
        return f"the tokenizer of {init_from}"
    return f"reused {tokenizer_file}" if tokenizer_file else "trained on the training questions"


@dataclasses.dataclass
class _Start:
    """What fine-tuning continues from: a model directory's network, tokenizer and config."""

    network: SiameseEncoder
    tokenizer: Tokenizer
    config: dict[str, Any]

    @property
    def boundary(self) -> tuple[float, float]:
        """The model's tau and its calibration's slope."""
        return float(self.config["threshold"]), float(self.config["calibration"]["slope"])


def _starting_point(
    model_dir: str | Path, config: TrainConfig, encoder_config: dict[str, Any] | None, tokenizer_file: Any
) -> _Start:
    """The model directory ``--init-from`` names, refused with the reason where fine-tuning
    cannot continue from it."""
    if encoder_config:
        raise ValueError(
            f"--init-from {model_dir}: the architecture is the model's own; drop "
            + ", ".join("--" + k.replace("_", "-") for k in sorted(encoder_config))
        )
    if tokenizer_file:
        raise ValueError(f"--init-from {model_dir}: the tokenizer is the model's own; drop --tokenizer")
    if config.members != 1:
        raise ValueError(f"--init-from {model_dir}: fine-tuning continues one network; drop --members")
    network = load_network(model_dir)
    if not isinstance(network, SiameseEncoder):
        raise ValueError(f"--init-from {model_dir}: a model of {len(network.members)} networks side by side")
    return _Start(network.train(), load_tokenizer(Path(model_dir) / TOKENIZER), read_json(model_dir))


def _replay(
    model_dir: str | Path, model_config: dict[str, Any], files: Sequence[str | Path] | None, count: int, seed: int
) -> tuple[list[Pair], dict[str, Any]]:
    """``count`` pairs drawn at random (seeded) from ``files``, by default the training files the
    config.json of ``model_dir`` names (:func:`_recorded_file`), each checked against its recorded
    sha256."""
    if count <= 0:
        return [], {"pairs": 0}
    if files is None:
        recorded = model_config.get("training", {}).get("train_files") or []
        if not recorded:
            raise ValueError(
                "the model's config.json names no training files to replay: pass --replay-from, or --replay 0"
            )
        files = []
        for entry in recorded:
            path = _recorded_file(Path(entry["path"]), Path(model_dir))
            if path is None:
                raise ValueError(
                    f"the model was trained on {entry['path']}, which is not there to replay (from here, or from "
                    f"{model_dir} or a directory above it): pass --replay-from FILE (a copy of it) or --replay 0"
                )
            if sha256_file(path) != entry["sha256"]:
                raise ValueError(
                    f"{path} is not the file the model was trained on (its sha256 differs): pass --replay-from"
                )
            files.append(path)
    pool: list[Pair] = []
    described = []
    for name in files:
        pairs, report = load_pairs(name)
        pool += pairs
        described.append({"path": str(name), "sha256": report.sha256()})
    sample = random.Random(seed).sample(pool, min(count, len(pool)))
    logger.info("replaying %d of the %d pairs of %s", len(sample), len(pool), ", ".join(map(str, files)))
    return sample, {"files": described, "pairs": len(sample)}


def _recorded_file(path: Path, model_dir: Path) -> Path | None:
    """A training file as a model's config.json names it, relative to where the training ran (the
    repository's root for ``make train``): from the working directory, or else from the model
    directory or the first directory above it where it is; None if nowhere."""
    if path.is_file():
        return path
    if path.is_absolute():
        return None
    for base in (model_dir, *model_dir.resolve().parents):
        if (base / path).is_file():
            return base / path
    return None


def _train_members(
    train_files: Sequence[str | Path],
    valid_file: str | Path,
    graph: PairGraph,
    config: TrainConfig,
    encoder_config: dict[str, Any],
    tokenizer: Tokenizer,
) -> tuple[SideBySide, list[dict[str, Any]]]:
    """``config.members`` networks, each trained as one would be alone but with its own seed
    (``seed``, ``seed + 1``, ...), all at once in processes of their own, the threads shared out
    among them: the LSTM's small steps use a second thread poorly (200 steps: 74 s on 2 threads,
    93 s on 1), so two processes of one thread each train two networks in 108 s instead of 148 s.
    The tokenizer and the teacher's vectors of the questions are made here, once, and shared
    through files. Returns the members side by side, and each member's config as it wrote it."""
    k = config.members
    threads = max(1, (config.threads or torch.get_num_threads()) // k)
    with tempfile.TemporaryDirectory(prefix="dupq-members-") as tmp:
        work = Path(tmp)
        tokenizer.save(str(work / "tokenizer.json"))
        shared = dataclasses.replace(config, teacher_cache=config.teacher_cache or str(work / "teacher.npy"))
        teacher = teacher_for(shared)  # each member makes the same from the config
        if teacher is not None and (config.distill_weight or config.pretrain_epochs):
            teacher.question_vectors(graph.texts)  # into the cache the members read
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
            member.load_state_dict(load_network(work / f"member-{i}").state_dict())
    return network.eval(), written


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
        train_files,
        valid_file,
        out,
        config,
        encoder_config,
        tokenizer_file=tokenizer_file,
        progress=index == 0,
    )
