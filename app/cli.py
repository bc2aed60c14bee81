"""The ``dupq`` command: one entry point, one subcommand per job.

    dupq serve     run the HTTP service
    dupq index     add questions from a file to a data directory's store and index
    dupq embed     print the embeddings of questions as JSON lines
    dupq import    post questions from a file to a running service (text, TSV, CSV, JSONL)
    dupq groups    the duplicate groups of a data directory's questions, as JSON lines
    dupq feedback  write moderators' labelled pairs as a training file
    dupq train     train a model directory from labelled pairs (train extra)
    dupq evaluate  pair and retrieval metrics of a model on a pair file, with baselines
    dupq sts       correlation with graded similarity (STS Benchmark, SICK)
    dupq split     cut a pair file in two by duplicate groups (no leakage)
    dupq swaps     the word-order check set: questions and the same words reordered
    dupq upgrade   bring a model directory of an older dupq to this format (train extra)
    dupq convert   make a sentence-transformers model a dupq model directory (train extra)

Each subcommand imports what it needs inside itself, so ``dupq --help`` is instant and ``dupq
serve`` never loads training code (``train``'s many flags are added only when it is asked for).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import math
import os
import sys
import typing
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

logger = logging.getLogger(__name__)
T = typing.TypeVar("T")

# The encoder's vocabulary size is the tokenizer's (``--vocab-size`` sizes the tokenizer), and
# ``--unidirectional`` reads better than ``--no-bidirectional``.
_NOT_ENCODER_FLAGS = ("vocab_size", "bidirectional")
_TRAIN_EXTRA = "pip install 'dupq[train]'"


def _version() -> str:
    try:
        return version("dupq")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _settings(**overrides: typing.Any) -> typing.Any:
    """The service's settings (``DUPQ_*`` variables), with the flags that were given on top; a
    variable it cannot take is a ``ValueError`` that names it, in one line."""
    import pydantic

    from app.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except pydantic.ValidationError as err:
        reasons = (
            f"DUPQ_{'_'.join(map(str, error['loc'])).upper()}={error['input']!r}: {error['msg']}"
            for error in err.errors()
        )
        raise ValueError("; ".join(reasons)) from None


def _limits(settings: typing.Any) -> typing.Any:
    from app.schemas import Limits

    return Limits(settings.max_question_chars, settings.max_batch)


def _read_questions(
    path: str, settings: typing.Any, make: Callable[[typing.Any], T], fmt: typing.Any, namespace: str | None = None
) -> tuple[list[T], int]:
    """``make`` of each question of a file ('-': standard input; ``fmt`` by default from its
    name), and how many rows were skipped (each is logged) because ``POST /questions`` would
    refuse them."""
    from app.question_file import describe_skipped, read_questions

    made, skipped = read_questions(path, _limits(settings), make, fmt, namespace)
    if skipped:
        logger.warning(describe_skipped(path, skipped))
    return made, len(skipped)


# Subcommands ----------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.engine import StartupError, open_model_and_store
    from app.logs import setup_logging
    from app.main import create_app

    try:
        settings = _settings(data_dir=args.data_dir, model_dir=args.model_dir, store_url=args.store_url)
    except ValueError as err:  # the service sets up its own logging, so main() does not answer this one
        print(f"dupq serve: error: {err}", file=sys.stderr)
        return 1
    setup_logging(settings.log_level, settings.log_json)
    try:
        # What the lifespan would do first, done here so that a bad model directory, data
        # directory or seed file ends the command with one line rather than a server traceback.
        opened = open_model_and_store(settings)
    except StartupError as err:
        logging.getLogger("app.main").critical("cannot start: %s", err)
        return 1
    uvicorn.run(
        create_app(settings, opened),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def _index(args: argparse.Namespace) -> int:
    import asyncio

    from tqdm import tqdm

    from app.engine import Engine, open_model_and_store
    from app.question_file import stable_id
    from app.store import NewQuestion

    settings = _settings(
        data_dir=args.data_dir,
        model_dir=args.model_dir,
        store_url=args.store_url,
        index_kind=args.index_kind,
        batch_wait_ms=0.0,
        snapshot_interval_s=0,  # one snapshot at the end: a crash on the way replays from the store
    )
    items, skipped = _read_questions(
        args.input,
        settings,
        lambda q: NewQuestion.of(q.id or stable_id(q.namespace, q.text), q.text, q.namespace, q.metadata),
        args.format,
        args.namespace,
    )
    encoder, store = open_model_and_store(settings)  # a StartupError ends it in one line
    try:
        engine = Engine.build(settings, encoder, store, progress=True)
    except BaseException:
        store.close()
        raise

    async def add_all() -> int:
        # Into an empty store, the index is made in the structure the whole file calls for at once,
        # instead of growing flat and being rebuilt as HNSW on the way.
        if items and not engine.index_size():
            engine.index.expect(collections.Counter(item.namespace for item in items))
        await engine.start()
        try:
            with tqdm(total=len(items), desc="indexing", unit="question") as bar:
                for start in range(0, len(items), 1024):
                    await engine.add(items[start : start + 1024])
                    bar.update(min(1024, len(items) - start))
            await engine.wait_rebuilds()
            return engine.index_size()
        finally:
            await engine.stop()

    size = asyncio.run(add_all())
    print(json.dumps({"added": len(items), "skipped": skipped, "index_size": size, "data_dir": str(settings.data_dir)}))
    return 0


def _embed(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from model.encoder import load_encoder

    settings = _settings(model_dir=args.model)
    encoder = load_encoder(settings.model_dir, threads=args.threads)
    texts = _read_questions(args.input, settings, lambda q: str(q.text), args.format)[0]
    with tqdm(total=len(texts), desc="embedding", unit="question") as bar:
        for start in range(0, len(texts), 1024):
            chunk = texts[start : start + 1024]
            for text, vector in zip(chunk, encoder.encode(chunk), strict=True):
                print(json.dumps({"question": text, "embedding": [round(float(x), 6) for x in vector]}))
            bar.update(len(chunk))
    return 0


def _import(args: argparse.Namespace) -> int:
    import httpx
    from tqdm import tqdm

    from app.client import Client, DupqError
    from app.importer import import_file

    try:
        with Client(args.url, api_key=args.api_key) as client, tqdm(desc="importing", unit="question") as bar:
            report = import_file(client, args.input, args.namespace, args.format, args.batch, progress=bar.update)
    except DupqError as err:  # the service refused: a wrong key, a read-only one, ...
        raise ValueError(f"the service at {args.url} answered {err}") from None
    except httpx.TransportError as err:
        raise ValueError(f"cannot reach the service at {args.url}: {err}") from None
    print(report.summary(), file=sys.stderr)
    print(json.dumps({"imported": report.imported, "skipped": len(report.skipped), "batches": report.batches}))
    return 0


def _read_only_store(settings: typing.Any) -> tuple[typing.Any, dict[str, typing.Any]]:
    """The store of ``settings.data_dir`` (or ``settings.store_url``), opened read-only beside
    whoever owns it, and the model directory's config (its dim, version and threshold)."""
    from app.engine import STORE_FILE
    from app.store import QuestionStore
    from model.model_dir import read_json

    config = read_json(settings.model_dir)
    if settings.store_url is not None and settings.store_url.startswith("postgres"):
        from app.pgstore import PostgresStore

        return PostgresStore(settings.store_url, int(config["dim"]), connect_timeout=5.0, existing=True), config
    path = settings.sqlite_path() or settings.data_dir / STORE_FILE
    return QuestionStore(path, int(config["dim"]), read_only=True), config


def _groups(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from app.groups import find_groups
    from model.files import check_writable, replacing_file

    check_writable(args.out, file=True)  # before the grouping, which can take minutes
    settings = _settings(data_dir=args.data_dir, model_dir=args.model_dir, store_url=args.store_url)
    store, config = _read_only_store(settings)
    others = {v: n for v, n in store.model_versions().items() if v != config["version"]}
    if others:
        raise ValueError(
            f"{sum(others.values())} stored questions were embedded by model version(s) {', '.join(sorted(others))}, "
            f"not {config['version']} of {settings.model_dir}: serve this model once to re-embed them, or name "
            "the model that made them (--model-dir)"
        )
    threshold = args.threshold if args.threshold is not None else settings.threshold
    threshold = float(config["threshold"]) if threshold is None else threshold
    started = time.monotonic()
    ids, vectors = store.namespace_vectors(args.namespace)
    with tqdm(total=len(ids), desc="grouping", unit="question") as bar:
        found = find_groups(vectors, threshold, args.min_size, threads=settings.cpu_count(), progress=bar.update)
    with replacing_file(args.out) as partial, open(partial, "w", encoding="utf-8") as out:
        for rep, members in found:
            out.write(json.dumps({"representative": ids[rep], "ids": [ids[m] for m in members], "size": len(members)}))
            out.write("\n")
    grouped = sum(len(members) for _, members in found)
    summary = {
        "namespace": args.namespace,
        "questions": len(ids),
        "groups": len(found),
        "grouped": grouped,
        "threshold": threshold,
        "seconds": round(time.monotonic() - started, 1),
        "out": str(args.out),
    }
    print(json.dumps(summary))
    return 0


def _reembed(args: argparse.Namespace) -> int:
    import time

    import faiss
    import numpy as np
    from tqdm import tqdm

    from app.engine import index_params, index_tag
    from app.pgstaged import StagedRows, remove_staged_rows
    from app.pgstore import PostgresStore
    from app.staged import Staged, StagedVectors, reembed, remove_staged, stage_index, staged_index_path
    from app.store import TextRow
    from model.encoder import load_encoder

    settings = _settings(data_dir=args.data_dir, model_dir=args.model_dir, store_url=args.store_url)
    store, config = _read_only_store(settings)
    if args.discard:  # a model that will not be served after all
        try:
            files = remove_staged(settings.data_dir, str(config["version"]))
            rows = remove_staged_rows(store, str(config["version"])) if isinstance(store, PostgresStore) else 0
        finally:
            store.close()
        print(json.dumps({"model": config["version"], "discarded_files": files, "discarded_rows": rows}))
        return 0
    try:
        started = time.monotonic()
        threads = args.threads or settings.cpu_count()  # the encoder's and the index build's
        encoder = load_encoder(settings.model_dir, threads=threads)
        stale = sum(n for v, n in store.model_versions().items() if v != encoder.version)
        summary: dict[str, typing.Any] = {"model": encoder.version, "questions": stale}
        staged: Staged
        if stale:
            if isinstance(store, PostgresStore):  # where whichever replica re-embeds the store takes them
                staged = StagedRows.create(store, encoder.version, encoder.dim)
            else:
                staged = StagedVectors.create(settings.data_dir, encoder.version, encoder.dim)
            try:

                def put(rows: Sequence[TextRow], vectors: np.ndarray, encoded: np.ndarray) -> None:
                    staged.add([row for row, new in zip(rows, encoded, strict=True) if new], vectors[encoded])

                with tqdm(total=stale, desc="staging", unit="question") as bar:
                    done = reembed(encoder, store, staged, put, bar.update)
                dropped = staged.keep_only(done.seen)  # deleted or edited since an earlier run
                summary.update(encoded=done.encoded, already_staged=done.staged, dropped=dropped)
                index: str | None = None
                if args.no_index:  # the service builds it at the switch, as without dupq reembed
                    summary.update(indexed=0, index_kept=0)
                else:
                    faiss.omp_set_num_threads(threads)
                    tag = index_tag(encoder, store if isinstance(store, PostgresStore) else None)
                    indexed = stage_index(staged, settings.data_dir, tag, index_params(settings))
                    summary.update(indexed=indexed[0], index_kept=indexed[1])
                    index = str(staged_index_path(settings.data_dir, encoder.version))
            finally:
                staged.close()
            summary.update(staged_in=staged.name, index=index)
        else:  # the store is this model's already: the service will not re-embed, nothing to stage
            if isinstance(store, PostgresStore):  # what a run left after the re-embedding took the rest
                remove_staged_rows(store, encoder.version)
            summary.update(encoded=0, already_staged=0, dropped=0, indexed=0, index_kept=0, staged_in=None, index=None)
    finally:
        store.close()
    summary["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary))
    return 0


def _sqlite_store(settings: typing.Any) -> Path:
    """The SQLite file of ``settings``' store."""
    from app.engine import STORE_FILE

    return Path(settings.sqlite_path() or settings.data_dir / STORE_FILE)


def _replica_copy(args: argparse.Namespace, settings: typing.Any) -> Path:
    """The file of a replica's copy of a PostgreSQL store in its data directory (``--replica``)."""
    from app.replica import COPY_FILE

    if args.store_url is not None:
        raise ValueError("--replica names the data directory's copy of the store: give --data-dir, not --store-url")
    return Path(settings.data_dir / COPY_FILE)


def _backup(args: argparse.Namespace) -> int:
    from app.backup import backup, backup_postgres, snapshot_beside
    from app.engine import SNAPSHOT_FILE
    from model.files import check_writable

    settings = _settings(data_dir=args.data_dir, store_url=args.store_url)
    check_writable(args.out, file=True)
    if args.replica:
        copied = backup(_replica_copy(args, settings), args.out, settings.data_dir / SNAPSHOT_FILE)
    elif settings.store_url is not None and settings.store_url.startswith("postgres"):
        copied = backup_postgres(settings.store_url, args.out)
    else:
        copied = backup(_sqlite_store(settings), args.out, settings.data_dir / SNAPSHOT_FILE)
    index = snapshot_beside(args.out)[0]
    return _report(("out", copied.path), copied, bytes=copied.bytes, index=index if index.exists() else None)


def _report(where: tuple[str, typing.Any], copied: typing.Any, **more: typing.Any) -> int:
    """Print what ``dupq backup`` or ``restore`` copied, and where, as one JSON line (paths as
    text); exit status 0."""
    fields = {where[0]: where[1], "questions": copied.questions, "feedback": copied.feedback, **more}
    fields = {name: str(value) if isinstance(value, Path) else value for name, value in fields.items()}
    print(json.dumps({**fields, "seconds": round(copied.seconds, 1)}))
    return 0


def _restore(args: argparse.Namespace) -> int:
    from app.backup import restore, restore_postgres
    from app.engine import SNAPSHOT_FILE
    from app.pgstore import safe_url
    from app.replica import COPY_FILE

    settings = _settings(data_dir=args.data_dir, store_url=args.store_url)
    # With --replica, a PostgreSQL URL given as a flag, not one of a replica's own environment.
    postgres = settings.store_url is not None and settings.store_url.startswith("postgres")
    if postgres and (not args.replica or args.store_url is not None):
        if args.replace:
            raise ValueError(
                "--replace is for a data directory's store: a PostgreSQL store takes a backup only while it holds "
                "no questions and no feedback"
            )
        replica = (settings.data_dir / COPY_FILE, settings.data_dir / SNAPSHOT_FILE) if args.replica else None
        loaded = restore_postgres(args.backup, settings.store_url, replica)
        return _report(("store", safe_url(settings.store_url)), loaded, replica=loaded.replica, index=loaded.index)
    store = _replica_copy(args, settings) if args.replica else _sqlite_store(settings)
    restored = restore(args.backup, store, settings.data_dir / SNAPSHOT_FILE, replace=args.replace)
    return _report(
        ("store", restored.path), restored, bytes=restored.bytes, index=restored.index, kept_aside=restored.kept_aside
    )


def _feedback(args: argparse.Namespace) -> int:
    import csv

    from app.store import latest_feedback
    from model.files import check_writable, replacing_file

    check_writable(args.out, file=True)
    settings = _settings(data_dir=args.data_dir, model_dir=args.model_dir, store_url=args.store_url)
    store, _ = _read_only_store(settings)
    pairs, superseded, itself = latest_feedback((number, pair) for number, pair, _, _ in store.iter_feedback())
    with replacing_file(args.out) as partial, open(partial, "w", encoding="utf-8", newline="") as out:
        # Quora's layout, a TSV whose header names the questions and the label, which `dupq train` reads.
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "qid1", "qid2", "question1", "question2", "is_duplicate"])
        for number, pair in pairs:
            writer.writerow(
                [number, pair.id1 or "", pair.id2 or "", pair.question1, pair.question2, int(pair.is_duplicate)]
            )
    summary = {"pairs": len(pairs), "superseded": superseded, "same_question": itself, "out": str(args.out)}
    print(json.dumps(summary))
    return 0


def _train(args: argparse.Namespace) -> int:
    from model.config import EncoderConfig
    from model.training.config import FINE_TUNING, TrainConfig
    from model.training.trainer import train

    def given(config: type, skip: Sequence[str] = ()) -> dict[str, typing.Any]:
        names = [f.name for f in dataclasses.fields(config) if f.name not in skip]
        return {name: vars(args)[name] for name in names if vars(args)[name] is not None}

    config = TrainConfig(**{**(FINE_TUNING if args.init_from else {}), **given(TrainConfig)})
    encoder = given(EncoderConfig, skip=_NOT_ENCODER_FLAGS)
    if args.unidirectional:
        encoder["bidirectional"] = False
    written = train(
        args.train,
        args.valid,
        args.out,
        config,
        encoder,
        tokenizer_file=args.tokenizer,
        init_from=args.init_from,
        replay_files=args.replay_from,
    )
    print(
        json.dumps({"out": str(args.out), "version": written["version"], "validation": written["validation"]}, indent=2)
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model.encoder import load_encoder
    from model.files import check_writable
    from model.training.data import load_pairs, require_pairs
    from model.training.evaluation import evaluate, write_report

    if args.report:
        check_writable(args.report, "--report")  # before the evaluation, which can take minutes
    encoder = load_encoder(_settings(model_dir=args.model).model_dir, threads=args.threads)
    pairs, report = load_pairs(args.pairs)
    require_pairs(pairs, [report], "evaluate")
    tune = None
    if args.tune:
        tune, tune_report = load_pairs(args.tune)
        require_pairs(tune, [tune_report], "choose the baselines' thresholds on")
    result = evaluate(encoder, pairs, tune_pairs=tune, reference=args.reference)
    result = {"model": encoder.full_name, "file": str(args.pairs), **result}
    if args.report:
        result["report"] = str(write_report(args.report, encoder, pairs, result, str(args.pairs)))
    print(json.dumps(result, indent=2))
    return 0


def _sts(args: argparse.Namespace) -> int:
    from model.encoder import load_encoder
    from model.training.evaluation import evaluate_graded
    from model.training.graded import load_graded

    pairs, report = load_graded(args.pairs, split=args.split)
    encoder = load_encoder(_settings(model_dir=args.model).model_dir, threads=args.threads)
    result = evaluate_graded(encoder, pairs, reference=args.reference, duplicate_from=args.duplicate_from)
    head = {"model": encoder.full_name, "file": str(args.pairs), "split": args.split}
    skipped = {"skipped": report.n_skipped} if report.n_skipped else {}
    print(json.dumps(head | skipped | result, indent=2))
    return 0


def _split(args: argparse.Namespace) -> int:
    from model.files import check_writable
    from model.training.data import load_pairs, require_pairs, write_bimpm
    from model.training.groups import split_by_groups

    check_writable(args.out_rest, "--out-rest", file=True)
    check_writable(args.out_held, "--out-held", file=True)  # not one file written where the other cannot be
    pairs, report = load_pairs(args.pairs)
    rest, held = split_by_groups(require_pairs(pairs, [report], "split"), args.fraction, args.seed)
    write_bimpm(rest, args.out_rest)
    write_bimpm(held, args.out_held)
    print(json.dumps({"rest": len(rest), "held_out": len(held)}))
    return 0


def _swaps(args: argparse.Namespace) -> int:
    import collections

    from model.files import check_writable
    from model.training.data import Pair, load_pairs, require_pairs, write_bimpm
    from model.training.negatives import check_pairs

    check_writable(args.out, file=True)
    pairs, report = load_pairs(args.pairs)
    questions = [q for pair in require_pairs(pairs, [report], "reorder") for q in (pair.question1, pair.question2)]
    rows = check_pairs(questions)
    if not rows:
        raise ValueError(
            f"{args.pairs}: no rule of model/training/negatives.py reorders any of its {len(set(questions))} "
            "questions, so there is no check set to write"
        )
    write_bimpm([Pair(a, b, label) for label, a, b, _ in rows], args.out)
    print(json.dumps({"pairs": len(rows), "by_rule": dict(collections.Counter(rule for *_, rule in rows))}))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from model.training.convert import convert

    config = convert(
        args.st_model_dir,
        args.valid,
        args.out,
        name=args.name,
        prompt_name=args.prompt,
        dim=args.dim,
        trust_remote_code=args.trust_remote_code,
    )
    print(
        json.dumps({"out": str(args.out), "version": config["version"], "validation": config["validation"]}, indent=2)
    )
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    from model.training.export import upgrade_model_dir

    config = upgrade_model_dir(args.model_dir)
    print(
        json.dumps({"model_dir": str(args.model_dir), "version": config["version"], "format": config["format_version"]})
    )
    return 0


# The parser -----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose flags may be added when it is first used (``add_flags``), so that
    building the whole command line imports no subcommand's modules."""

    def __init__(
        self,
        *args: typing.Any,
        add_flags: Callable[[argparse.ArgumentParser], None] | None = None,
        **kwargs: typing.Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._add_flags = add_flags

    def _complete(self) -> None:
        if self._add_flags is not None:
            add, self._add_flags = self._add_flags, None
            add(self)

    def parse_known_args(self, args: typing.Any = None, namespace: typing.Any = None) -> typing.Any:
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def _train_flags(p: argparse.ArgumentParser) -> None:
    from model.config import EncoderConfig
    from model.training.config import FINE_TUNING, TrainConfig

    p.add_argument(
        "--train", nargs="+", required=True, metavar="FILE", help="labelled pair files (any supported format)"
    )
    p.add_argument(
        "--valid", required=True, metavar="FILE", help="validation pairs: early stopping, threshold, calibration"
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="model directory to write")
    p.add_argument(
        "--tokenizer", metavar="FILE", help="reuse this tokenizer.json instead of training one (repeatable runs)"
    )
    p.add_argument(
        "--init-from",
        type=Path,
        metavar="MODEL_DIR",
        help="fine-tune: continue from this model directory's network and tokenizer (its architecture), "
        "keeping its tau unless --valid gives evidence against it (one standard error), with the fine-tuning "
        "defaults: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in FINE_TUNING.items()),
    )
    p.add_argument(
        "--replay-from",
        nargs="+",
        metavar="FILE",
        help="with --init-from: the pairs to replay (default: the model's own training files, as its config.json "
        "names them, checked against their sha256)",
    )
    _add_config_flags(p, TrainConfig, skip=())
    _add_config_flags(p, EncoderConfig, skip=_NOT_ENCODER_FLAGS)
    p.add_argument("--unidirectional", action="store_true", help="one-way LSTM instead of bidirectional")


def _add_config_flags(p: argparse.ArgumentParser, config: type, skip: Sequence[str]) -> None:
    """One flag per field of the dataclass ``config``, its help taken from the field's metadata.
    Flags default to None, so that only what is given overrides the dataclass' own default."""
    hints = typing.get_type_hints(config)
    for field in dataclasses.fields(config):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        text = f"{field.metadata['help']} (default: {field.default if field.default != '' else 'none'})"
        if typing.get_origin(hints[field.name]) is typing.Literal:
            p.add_argument(flag, choices=typing.get_args(hints[field.name]), default=None, help=text)
        elif hints[field.name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            p.add_argument(flag, type=hints[field.name], default=None, help=text)


def _ranged(kind: Callable[[str], typing.Any], low: float, high: float = math.inf) -> Callable[[str], typing.Any]:
    """An argparse type: ``kind`` of the text, from ``low`` to ``high``; anything else is refused
    before the command starts, as the service refuses it in a request."""

    def parse(text: str) -> typing.Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not low <= value <= high:  # NaN too
            raise argparse.ArgumentTypeError(
                f"{text} is not in [{low:g}, {high:g}]" if high < math.inf else f"{text} is below {low:g}"
            )
        return value

    return parse


def _namespace(text: str) -> str:
    """An argparse type: a namespace, by the rule of the API's (:data:`app.schemas.Namespace`)."""
    import pydantic

    from app.schemas import Namespace

    try:
        return str(pydantic.TypeAdapter(Namespace).validate_python(text))
    except pydantic.ValidationError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err.errors()[0]['msg']}") from None


# The formats of app/question_file.py, not imported from it: `dupq --help` imports no pydantic.
_FORMATS = ("text", "csv", "jsonl")
_QUESTION_FILE = (
    "file of questions, UTF-8: 'text' or 'id<TAB>text' per line, a .csv (or tab-separated file) with a header "
    "naming 'text' and optionally 'id' and 'namespace' (other columns become metadata), or .jsonl; "
    "gzipped if its name ends in .gz"
)


def _question_file_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", type=_namespace, help="namespace of the rows that name none (default: default)")
    p.add_argument("--format", choices=_FORMATS, help="default: from the file name (.gz aside)")


def _store_flags(
    p: argparse.ArgumentParser, data_dir: str = "data directory", model_dir: str = "the model that embedded it"
) -> None:
    """The data directory, its store, and the model whose vectors it holds, each defaulting to its
    DUPQ_* variable as the service's settings do; ``data_dir`` and ``model_dir`` say what each
    is to this command."""
    env = " (default: $%s, else %s)"
    p.add_argument("--data-dir", type=Path, help=data_dir + env % ("DUPQ_DATA_DIR", "data"))
    p.add_argument(
        "--store-url",
        help="sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB"
        + env % ("DUPQ_STORE_URL", "the data directory's SQLite file"),
    )
    p.add_argument("--model-dir", type=Path, help=model_dir + env % ("DUPQ_MODEL_DIR", "the bundled model"))


def _backup_flags(p: argparse.ArgumentParser, data_dir: str, postgres: str) -> None:
    """Where the store of ``dupq backup`` or ``dupq restore`` is: the data directory, or a URL,
    each defaulting to its DUPQ_* variable as the service's settings do."""
    env = " (default: $%s, else %s)"
    p.add_argument("--data-dir", type=Path, help=data_dir + env % ("DUPQ_DATA_DIR", "data"))
    p.add_argument(
        "--store-url",
        help=f"sqlite:///PATH, or postgresql://USER:PASSWORD@HOST:PORT/DB {postgres}"
        + env % ("DUPQ_STORE_URL", "the data directory's SQLite file"),
    )
    p.add_argument(
        "--replica",
        action="store_true",
        help="the data directory of a replica on PostgreSQL: its copy of the store (replica.sqlite3) and its index "
        "snapshot, to start a new replica from another's, following the store's change feed from there instead of "
        "copying the whole store and building its index (restore with a PostgreSQL --store-url: the backup loaded "
        "into it also made the data directory's first replica)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dupq", description="Duplicate-question detection: serve, index, import, group, embed, train, evaluate."
    )
    parser.add_argument("--version", action="version", version=f"dupq {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    env = " (default: $%s, else %s)"

    p = sub.add_parser(
        "serve", help="run the HTTP service", description="Serve the contract over HTTP; settings are DUPQ_* variables."
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    _store_flags(p, "where the store and index live", "model directory to serve")
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "index",
        help="add questions to a data directory",
        description="Bulk-load questions into the store and index of a data directory that no service has open. "
        "A row without an id gets one made from its namespace and text, so loading a file again replaces "
        "its questions instead of adding them twice.",
    )
    p.add_argument("input", help=f"{_QUESTION_FILE}; '-': standard input")
    _question_file_flags(p)
    _store_flags(p, model_dir="model directory")
    p.add_argument(
        "--index-kind", choices=["auto", "flat", "hnsw"], help="index to build" + env % ("DUPQ_INDEX_KIND", "auto")
    )
    p.set_defaults(func=_index)

    p = sub.add_parser("embed", help="embeddings of questions as JSON lines", description="Embed questions.")
    p.add_argument("input", nargs="?", default="-", help=f"{_QUESTION_FILE}; '-', the default: standard input")
    p.add_argument("--format", choices=_FORMATS, help="default: from the file name (.gz aside)")
    p.add_argument("--model", type=Path, help="model directory" + env % ("DUPQ_MODEL_DIR", "the bundled model"))
    p.add_argument("--threads", type=_ranged(int, 0), default=0, help="encoder threads (default: 0, every CPU)")
    p.set_defaults(func=_embed)

    p = sub.add_parser(
        "import",
        help="post questions from a file to a running service",
        description="Bulk-import questions into a running service over HTTP, in batches; idempotent by id "
        "(a row without one gets an id made from its namespace and text), so a re-run after an interruption "
        "is safe. Skipped rows are reported with their line numbers.",
    )
    p.add_argument("input", help=f"{_QUESTION_FILE}; '-': standard input")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default: http://127.0.0.1:8000)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("DUPQ_API_KEY"),
        help="the full API key, if the service has one (default: $DUPQ_API_KEY)",
    )
    _question_file_flags(p)
    p.add_argument(
        "--batch", type=_ranged(int, 1), default=256, help="questions per request, at most max_batch (default 256)"
    )
    p.set_defaults(func=_import)

    p = sub.add_parser(
        "groups",
        help="duplicate groups of a data directory's questions",
        description="Find the disjoint groups of duplicates among the stored questions of a namespace, as "
        "POST /groups does, for any size; reads the store beside a running service, never writes it.",
    )
    _store_flags(p)
    p.add_argument("--namespace", type=_namespace, default="default", help="namespace to group (default: default)")
    p.add_argument(
        "--threshold", type=_ranged(float, -1, 1), help="least similarity to a representative (default: tau)"
    )
    p.add_argument("--min-size", type=_ranged(int, 1), default=2, help="smallest group written (default 2)")
    p.add_argument("--out", required=True, type=Path, help="JSON lines, one group per line, largest first")
    p.set_defaults(func=_groups)

    p = sub.add_parser(
        "reembed",
        help="embed a data directory's questions with a new model beside the running service",
        description="Encode the stored questions with another model while the service serves the old one, "
        "into a file of the data directory (with --store-url: a table of the PostgreSQL store, staged_vectors), "
        "and build their index in the data directory; the service then started on that model takes those "
        "vectors and that index and encodes only the questions added or edited since, instead of encoding and "
        "indexing all of them before it is ready. Never writes the questions; run it again to catch up, or to "
        "go on after an interruption.",
    )
    _store_flags(
        p,
        "the running service's data directory (the staged files go there; with a PostgreSQL --store-url, only "
        "the staged index, which the replica of this directory loads)",
        "the new model directory",
    )
    p.add_argument(
        "--threads",
        type=_ranged(int, 0),
        default=0,
        help="threads for the encoder and the index build (default: 0, DUPQ_THREADS or else every CPU the "
        "process may use; fewer leave the running service its share)",
    )
    p.add_argument(
        "--no-index",
        action="store_true",
        help="stage the vectors only, not their index: where no replica will start from this data directory "
        "(a job of its own beside PostgreSQL replicas), or its disk has no room; the service builds the index "
        "when it switches, as without dupq reembed (an index an earlier run staged is left, and checked vector "
        "by vector if loaded)",
    )
    p.add_argument(
        "--discard",
        action="store_true",
        help="remove what earlier runs staged for this model (its files in the data directory, its rows in a "
        "PostgreSQL store) instead of staging: for a model that will not be served after all",
    )
    p.set_defaults(func=_reembed)

    p = sub.add_parser(
        "backup",
        help="copy the question store into one SQLite file, beside the running service",
        description="Copy the question store (questions, metadata, vectors, feedback) as it is at one moment "
        "into one SQLite file, with SQLite's online backup: beside the running service, whose writes go on "
        "meanwhile; and first the service's last index snapshot beside it (OUT.faiss and OUT.faiss.json), which "
        "dupq restore puts back. With a PostgreSQL --store-url, copy that store (questions, metadata, vectors, "
        "feedback) as it is at one moment into such a file, beside the running replicas, with no index.",
    )
    _backup_flags(p, "the service's data directory", "to copy")
    p.add_argument("--out", required=True, type=Path, help="the backup file to write")
    p.set_defaults(func=_backup)

    p = sub.add_parser(
        "restore",
        help="make a backup the store of a data directory (the service stopped), or load it into PostgreSQL",
        description="Make a file of dupq backup the question store of a data directory, which no dupq process "
        "may have open. A store already there is replaced only with --replace, and kept beside it whole "
        "(questions.sqlite3.before-restore-TIME); its index snapshot is replaced by the one beside the backup, "
        "which the service catches up at its next start (without one, it rebuilds the index from the restored "
        "vectors). With a PostgreSQL --store-url, load the backup into that store, which must hold no questions "
        "and no feedback yet: ids, texts, namespaces, metadata, vectors, feedback and the model version kept, "
        "nothing encoded again, in one transaction (the move from one SQLite store to replicas).",
    )
    p.add_argument("backup", type=Path, help="a file written by dupq backup")
    _backup_flags(p, "the data directory", "to load the backup into")
    p.add_argument("--replace", action="store_true", help="replace a store that is there (kept beside it)")
    p.set_defaults(func=_restore)

    p = sub.add_parser(
        "feedback",
        help="write moderators' feedback as a training file",
        description="Write the labelled pairs of POST /feedback in the Quora layout that dupq train reads: "
        "the last decision on each pair of questions (a reversed one replaces the first), none that pairs a "
        "question with itself.",
    )
    _store_flags(p)
    p.add_argument("--out", required=True, type=Path, help="the pair file to write (tab-separated)")
    p.set_defaults(func=_feedback)

    sub.add_parser(
        "train",
        help="train a model directory (train extra)",
        description="Train the Siamese encoder. The defaults are the recipe of the shipped model: "
        "`dupq train --train FILE --valid FILE --out DIR` runs it.",
        add_flags=_train_flags,
    ).set_defaults(func=_train)

    p = sub.add_parser(
        "evaluate", help="metrics of a model on labelled pairs", description="Evaluate a model directory."
    )
    p.add_argument("--model", type=Path, help="model directory" + env % ("DUPQ_MODEL_DIR", "the bundled model"))
    p.add_argument("--pairs", required=True, help="labelled pair file")
    p.add_argument(
        "--tune", help="pairs to choose the baselines' thresholds on (default: the evaluated pairs, an oracle)"
    )
    p.add_argument("--reference", action="store_true", help="also evaluate all-MiniLM-L6-v2 (train extra)")
    p.add_argument("--report", type=Path, metavar="DIR", help="write report.md with ROC and histogram plots")
    p.add_argument("--threads", type=_ranged(int, 0), default=0, help="encoder threads (default: 0, every CPU)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "sts",
        help="correlation with graded similarity (STS Benchmark, SICK)",
        description="How well a model's cosine similarity ranks sentence pairs that people graded for "
        "similarity: Spearman and Pearson correlation, next to TF-IDF (and all-MiniLM-L6-v2); and how the "
        "model's own threshold answers on them (at_threshold), the pairs graded at least --duplicate-from "
        "counted as duplicates, next to the threshold those pairs would want (classes weighed equally) and "
        "the ROC-AUC that no threshold changes.",
    )
    p.add_argument("--model", type=Path, help="model directory" + env % ("DUPQ_MODEL_DIR", "the bundled model"))
    p.add_argument("--pairs", required=True, help="graded pair file: STS Benchmark or SICK layout, may be .gz")
    p.add_argument("--split", help="only this split of an STS Benchmark file (train, dev or test)")
    p.add_argument("--reference", action="store_true", help="also evaluate all-MiniLM-L6-v2 (train extra)")
    p.add_argument(
        "--duplicate-from",
        type=float,
        default=4.0,
        help="pairs graded at least this count as duplicates for at_threshold (default: 4, STS Benchmark's "
        '"mostly equivalent")',
    )
    p.add_argument("--threads", type=_ranged(int, 0), default=0, help="encoder threads (default: 0, every CPU)")
    p.set_defaults(func=_sts)

    p = sub.add_parser(
        "split", help="split a pair file by duplicate groups", description="Cut pairs in two without leakage."
    )
    p.add_argument("--pairs", required=True, help="labelled pair file")
    p.add_argument(
        "--fraction", type=_ranged(float, 0, 1), default=0.5, help="share of questions held out (default 0.5)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the cut (default 0)")
    p.add_argument("--out-rest", required=True, help="where the rest goes (BiMPM layout)")
    p.add_argument("--out-held", required=True, help="where the held-out part goes (BiMPM layout)")
    p.set_defaults(func=_split)

    p = sub.add_parser(
        "swaps",
        help="the word-order check set: the same words reordered, with and without the meaning kept",
        description="From the questions of a pair file held out from training, write pairs of a question and "
        "the same words in another order: duplicates where two named things joined by and/or/vs are exchanged, "
        "non-duplicates where a rule of the training's hard negatives changes the meaning "
        "(model/training/negatives.py). Score them with dupq evaluate.",
    )
    p.add_argument("--pairs", required=True, help="labelled pair file whose questions to reorder")
    p.add_argument("--out", required=True, help="where the pairs go (BiMPM layout)")
    p.set_defaults(func=_swaps)

    p = sub.add_parser(
        "upgrade",
        help="bring an older model directory to this format (train extra)",
        description="Write model.onnx from the weights of a model directory an older dupq wrote; no vector changes.",
    )
    p.add_argument("model_dir", type=Path, help="model directory to upgrade in place")
    p.set_defaults(func=_upgrade)

    p = sub.add_parser(
        "convert",
        help="make a sentence-transformers model a dupq model directory (train extra)",
        description="Turn a sentence-transformers model directory (a transformer, BERT-style or a decoder, its "
        "pooling and any Dense layers, like all-MiniLM-L6-v2) into a dupq model directory: an ONNX graph, its "
        "tokenizer.json, tau and the calibration fitted on --valid. dupq serve runs it without PyTorch.",
    )
    p.add_argument("st_model_dir", type=Path, help="sentence-transformers model directory (with modules.json)")
    p.add_argument("--valid", required=True, help="labelled pairs: tau and the calibration are fitted on them")
    p.add_argument("--out", required=True, type=Path, help="model directory to write")
    p.add_argument("--name", help="the model's name (default: the source directory's name)")
    p.add_argument(
        "--prompt",
        metavar="NAME",
        help="the source's prompt to put before every question, as sentence-transformers' encode(prompt_name=NAME) "
        "does (default: the model's default prompt, if it has one; '' for none)",
    )
    p.add_argument(
        "--dim",
        type=int,
        metavar="N",
        help="cut the vectors to their first N columns, as sentence-transformers' truncate_dim does (for a "
        "Matryoshka model; default: the model's saved truncate_dim, if it has one, else every column)",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code that the model brings in its directory (auto_map in its config.json: nomic-embed, "
        "jina-embeddings, gte-*-v1.5), as sentence-transformers does when asked; only for code you have read or trust",
    )
    p.set_defaults(func=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return int(args.func(args))  # the service sets up its own logging
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # FAISS logs each build it tries and cannot load, as if it were an error
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # each failed try: the error line says why
    try:
        return int(args.func(args))
    except ModuleNotFoundError as err:  # an extra that is not installed
        if args.verbose:
            raise
        print(f"dupq {args.command}: error: {err} (this needs the train extra: {_TRAIN_EXTRA})", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:  # a missing or unreadable file, a bad model directory, bad input
        if args.verbose:
            raise
        print(f"dupq {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
