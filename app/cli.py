"""The ``dupq`` command: one entry point, one subcommand per job.

    dupq train     train a model directory from labelled pairs
    dupq split     cut a pair file in two by duplicate groups (no leakage)
    dupq evaluate  pair and retrieval metrics of a model on a pair file, with baselines
    dupq embed     print the embeddings of questions as JSON lines
    dupq index     add questions from a file to a data directory's store and index
    dupq serve     run the HTTP service

Heavy imports happen inside each subcommand, so ``dupq --help`` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

# The encoder's vocabulary size is the tokenizer's (``--vocab-size`` sizes the tokenizer), and
# ``--unidirectional`` reads better than ``--no-bidirectional``.
_NOT_ENCODER_FLAGS = ("vocab_size", "bidirectional")

logger = logging.getLogger(__name__)


def _train(args: argparse.Namespace) -> int:
    from model.config import EncoderConfig, TrainConfig
    from model.train import train

    def given(config: type, skip: Sequence[str] = ()) -> dict[str, typing.Any]:
        names = [f.name for f in dataclasses.fields(config) if f.name not in skip]
        return {name: vars(args)[name] for name in names if vars(args)[name] is not None}

    config = TrainConfig(**given(TrainConfig))
    encoder = given(EncoderConfig, skip=_NOT_ENCODER_FLAGS)
    if args.unidirectional:
        encoder["bidirectional"] = False
    written = train(args.train, args.valid, args.out, config, encoder, tokenizer_file=args.tokenizer)
    print(
        json.dumps({"out": str(args.out), "version": written["version"], "validation": written["validation"]}, indent=2)
    )
    return 0


def _split(args: argparse.Namespace) -> int:
    from model.data import load_pairs, write_bimpm
    from model.groups import split_by_groups

    pairs, _ = load_pairs(args.pairs)
    rest, held = split_by_groups(pairs, args.fraction, args.seed)
    write_bimpm(rest, args.out_rest)
    write_bimpm(held, args.out_held)
    print(json.dumps({"rest": len(rest), "held_out": len(held)}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model.data import load_pairs
    from model.evaluate import evaluate, write_report
    from model.model_dir import load_encoder

    encoder = load_encoder(args.model, threads=args.threads)
    pairs, _ = load_pairs(args.pairs)
    tune = load_pairs(args.tune)[0] if args.tune else None
    result = evaluate(encoder, pairs, tune_pairs=tune, reference=args.reference)
    result = {"model": encoder.full_name, "file": str(args.pairs), **result}
    if args.report:
        result["report"] = str(write_report(args.report, encoder, pairs, result, str(args.pairs)))
    print(json.dumps(result, indent=2))
    return 0


def _sts(args: argparse.Namespace) -> int:
    from model.evaluate import evaluate_graded
    from model.graded import load_graded
    from model.model_dir import load_encoder

    pairs, report = load_graded(args.pairs, split=args.split)
    encoder = load_encoder(args.model, threads=args.threads)
    result = evaluate_graded(encoder, pairs, reference=args.reference)
    head = {"model": encoder.full_name, "file": str(args.pairs), "split": args.split}
    skipped = {"skipped": report.n_skipped} if report.n_skipped else {}
    print(json.dumps(head | skipped | result, indent=2))
    return 0


def _read_questions(path: str, max_chars: int) -> tuple[list[tuple[str | None, str]], int]:
    """Lines of ``text`` or ``id<TAB>text``, '-' reads standard input; and how many lines were
    skipped (each is logged) because ``POST /questions`` would refuse them."""
    from app.store import describe_skipped, read_question_file

    items, skipped = read_question_file(path, max_chars)
    if skipped:
        logger.warning(describe_skipped(path, skipped))
    return items, len(skipped)


def _embed(args: argparse.Namespace) -> int:
    from app.settings import Settings
    from model.model_dir import load_encoder

    encoder = load_encoder(args.model, threads=args.threads)
    texts = [text for _, text in _read_questions(args.input, Settings().max_question_chars)[0]]
    for start in range(0, len(texts), 1024):
        chunk = texts[start : start + 1024]
        for text, vector in zip(chunk, encoder.encode(chunk), strict=True):
            print(json.dumps({"question": text, "embedding": [round(float(x), 6) for x in vector]}))
    return 0


def _index(args: argparse.Namespace) -> int:
    import asyncio

    from app.engine import Engine
    from app.settings import Settings

    overrides = {"model_dir": args.model_dir} if args.model_dir else {}
    settings = Settings(data_dir=args.data_dir, index_kind=args.index_kind, batch_wait_ms=0, **overrides)
    items, skipped = _read_questions(args.input, settings.max_question_chars)
    engine = Engine(settings)
    engine.load_model()  # a StartupError (bad model directory, store in use) ends it in one line
    engine.open()

    async def add_all() -> int:
        await engine.start()
        try:
            for start in range(0, len(items), 1024):
                await engine.add(items[start : start + 1024])
            return engine.index_size()
        finally:
            await engine.stop()

    size = asyncio.run(add_all())
    print(json.dumps({"added": len(items), "skipped": skipped, "index_size": size, "data_dir": str(args.data_dir)}))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import pydantic
    import uvicorn

    from app.engine import StartupError
    from app.logs import setup_logging
    from app.main import create_app
    from app.settings import Settings

    overrides = {k: v for k, v in (("data_dir", args.data_dir), ("model_dir", args.model_dir)) if v is not None}
    try:
        settings = Settings(**overrides)
    except pydantic.ValidationError as err:
        for error in err.errors():
            name = "DUPQ_" + "_".join(map(str, error["loc"])).upper()
            print(f"dupq serve: error: {name}={error['input']!r}: {error['msg']}", file=sys.stderr)
        return 1
    setup_logging(settings.log_level, settings.log_json)
    app = create_app(settings)
    try:
        # What the lifespan would do first, done here so that a bad model directory, data
        # directory or seed file ends the command with one line rather than a server traceback.
        app.state.engine.load_model()
    except StartupError as err:
        logging.getLogger("app.main").critical("cannot start: %s", err)
        return 1
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from model.config import EncoderConfig, TrainConfig

    p = sub.add_parser("train", help="train a model directory", description="Train the Siamese encoder.")
    p.add_argument(
        "--train", nargs="+", required=True, metavar="FILE", help="labelled pair files (any supported format)"
    )
    p.add_argument(
        "--valid", required=True, metavar="FILE", help="validation pairs: early stopping, threshold, calibration"
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="model directory to write")
    _add_config_flags(p, TrainConfig, skip=())
    _add_config_flags(p, EncoderConfig, skip=_NOT_ENCODER_FLAGS)
    p.add_argument(
        "--tokenizer", metavar="FILE", help="reuse this tokenizer.json instead of training one (repeatable runs)"
    )
    p.add_argument("--unidirectional", action="store_true", help="one-way LSTM instead of bidirectional")
    p.set_defaults(func=_train)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dupq", description="Duplicate-question detection: train, evaluate, serve.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)

    p = sub.add_parser(
        "split", help="split a pair file by duplicate groups", description="Cut pairs in two without leakage."
    )
    p.add_argument("--pairs", required=True, help="labelled pair file")
    p.add_argument("--fraction", type=float, default=0.5, help="share of questions held out (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-rest", required=True, help="where the rest goes (BiMPM layout)")
    p.add_argument("--out-held", required=True, help="where the held-out part goes (BiMPM layout)")
    p.set_defaults(func=_split)

    p = sub.add_parser(
        "evaluate", help="metrics of a model on labelled pairs", description="Evaluate a model directory."
    )
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--pairs", required=True, help="labelled pair file")
    p.add_argument(
        "--tune", help="pairs to choose the baselines' thresholds on (default: the evaluated pairs, an oracle)"
    )
    p.add_argument("--reference", action="store_true", help="also evaluate all-MiniLM-L6-v2 (train extra)")
    p.add_argument("--report", type=Path, metavar="DIR", help="write report.md with ROC and histogram plots")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "sts",
        help="correlation with graded similarity (STS Benchmark, SICK)",
        description="How well a model's cosine similarity ranks sentence pairs that people graded for "
        "similarity: Spearman and Pearson correlation, next to TF-IDF (and all-MiniLM-L6-v2).",
    )
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--pairs", required=True, help="graded pair file: STS Benchmark or SICK layout, may be .gz")
    p.add_argument("--split", help="only this split of an STS Benchmark file (train, dev or test)")
    p.add_argument("--reference", action="store_true", help="also evaluate all-MiniLM-L6-v2 (train extra)")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=_sts)

    p = sub.add_parser("embed", help="embeddings of questions as JSON lines", description="Embed questions.")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("input", nargs="?", default="-", help="file of questions, one per line ('-': standard input)")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=_embed)

    p = sub.add_parser(
        "index", help="add questions to a data directory", description="Bulk-load questions into the store and index."
    )
    p.add_argument("input", help="file of questions: 'text' or 'id<TAB>text' per line ('-': standard input)")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--index-kind", choices=["flat", "hnsw"], default="flat")
    p.set_defaults(func=_index)

    p = sub.add_parser(
        "serve", help="run the HTTP service", description="Serve the contract over HTTP (settings: DUPQ_* variables)."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", type=Path, default=None, help="overrides DUPQ_DATA_DIR")
    p.add_argument("--model-dir", type=Path, default=None, help="overrides DUPQ_MODEL_DIR")
    p.set_defaults(func=_serve)
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
    try:
        return int(args.func(args))
    except (OSError, ValueError) as err:  # a missing or unreadable file, a bad model directory, bad input
        if args.verbose:
            raise
        print(f"dupq {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
