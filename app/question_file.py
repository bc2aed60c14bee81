"""Files of questions, one reader for all that take them: ``dupq import``, ``dupq index``, ``dupq
embed`` and the seed file.

Formats, from the file name (or ``--format``), which may end in ``.gz`` for a gzip-compressed
file (``questions.csv.gz``):

- ``jsonl`` (``.jsonl``, ``.ndjson``): one object per line, ``text`` and optional ``id``,
  ``namespace``, ``metadata``;
- ``csv`` (``.csv``): a header naming ``text`` and optionally ``id`` and ``namespace`` (in any
  case); every other column becomes a metadata key (empty cells are left out); separated by
  commas, or by the semicolons (or tabs) of a spreadsheet set to a decimal comma;
- ``text`` (anything else): ``text`` or ``id<TAB>text`` per line (a line without a tab, or with
  nothing before it, has no id); or, if its first line names ``id`` and ``text`` among
  tab-separated columns, a CSV separated by tabs.

A CSV's fields may be quoted, or written as they are where most of the quotes in its questions
show that they are not (:mod:`model.delimited`).

The file is UTF-8, with or without the byte order mark that Excel or Notepad puts before it, or
UTF-16 with its byte order mark ('-': standard input, read so whatever the locale); it is read a
line at a time and never held whole (a CSV from a pipe, which cannot be read twice, is copied to a
temporary file first: in memory up to 64 MiB). Each row must meet the rules of ``POST /questions``
(the id format, a text that is not blank, at most ``max_question_chars`` characters, valid Unicode,
the metadata rules) or it is skipped with its line number and the reason, never loaded under another
meaning (``id<TAB>`` with no text is not the question "id", and a CSV's lines are not questions).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar, cast

from pydantic import ValidationError

from app.schemas import Limits, QuestionIn
from model.delimited import decoded, gzipped, named_errors, open_text, quotes_fields

Format = Literal["jsonl", "csv", "text"]
FORMATS: tuple[Format, ...] = ("text", "csv", "jsonl")
RawRow = tuple[int, dict[str, Any] | None, str]  # (line number, fields or None, why it was skipped)
Row = tuple[int, QuestionIn | None, str]  # (line number, question or None, why it was skipped)
Skipped = tuple[int, str]  # (line number, reason)
T = TypeVar("T")
# A CSV from a pipe is copied aside to be read twice: in memory up to this, on disk beyond.
SPOOL_BYTES = 64 << 20


class BadHeader(ValueError):
    """A CSV file of questions without the header it needs; :func:`question_rows` names the file."""


def detect_format(path: str | Path) -> Format:
    """The format a file's name says, ``.gz`` aside (``questions.csv.gz`` is a CSV)."""
    suffix = (Path(path).with_suffix("") if gzipped(path) else Path(path)).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    return "csv" if suffix == ".csv" else "text"


def stable_id(namespace: str, text: str) -> str:
    """The id of a row that has none: the same on every run for the same namespace and text, so a
    file loaded again replaces what it loaded before instead of adding it twice."""
    return "imp-" + hashlib.sha256(f"{namespace}\x00{text}".encode()).hexdigest()[:24]


def question_rows(
    path: str | Path, limits: Limits, fmt: Format | None = None, namespace: str | None = None
) -> Iterator[Row]:
    """The rows of a file (``fmt`` by default from its name), one at a time, each checked as
    ``POST /questions`` checks an item (``namespace`` for a row that names none). A file that is
    not UTF-8 (nor UTF-16 with its byte order mark) is a ``ValueError`` that names it and the line,
    raised when the reader reaches the bad byte."""
    with named_errors(path), decoded(sys.stdin.buffer) if str(path) == "-" else open_text(path) as handle:
        try:
            yield from _checked(read_rows(handle, fmt or detect_format(path)), limits, namespace)
        except BadHeader as err:
            raise ValueError(f"{'standard input' if str(path) == '-' else path}: {err}") from None


def read_questions(
    path: str | Path,
    limits: Limits,
    make: Callable[[QuestionIn], T],
    fmt: Format | None = None,
    namespace: str | None = None,
) -> tuple[list[T], list[Skipped]]:
    """``make`` of every question of :func:`question_rows`, and the lines skipped."""
    made: list[T] = []
    skipped: list[Skipped] = []
    for line, question, why in question_rows(path, limits, fmt, namespace):
        if question is None:
            skipped.append((line, why))
        else:
            made.append(make(question))
    return made, skipped


def describe_skipped(source: object, skipped: list[Skipped], shown: int = 5) -> str:
    """One log line about the lines of ``source`` that were skipped: how many, and the first few."""
    first = "; ".join(f"line {number}: {reason}" for number, reason in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"{source}: skipped {len(skipped)} line(s) that POST /questions would refuse: {first}{more}"


def read_rows(handle: TextIO, fmt: Format) -> Iterator[RawRow]:
    """The raw rows of a file, one at a time, with their line numbers. A text file whose first line
    names the columns ``id`` and ``text`` among others (a table exported with its header) is read
    as a CSV separated by tabs."""
    first = handle.readline()
    if fmt == "text" and {"id", "text"} <= {_column(name) for name in first.rstrip("\r\n").split("\t")}:
        fmt = "csv"
    if fmt == "csv":
        delimiter = _delimiter(first)
        with _rereadable(handle) as rest:
            yield from _csv_rows(itertools.chain([first], rest), first, delimiter, _quoted(rest, delimiter))
        return
    lines = itertools.chain([first], handle)
    for line, raw in enumerate(lines, 1):
        raw = raw.rstrip("\r\n")
        if not raw.strip():
            continue
        if fmt == "jsonl":
            try:
                item = json.loads(raw)
            except json.JSONDecodeError as err:
                yield line, None, f"not JSON: {err.msg} at column {err.colno}"
                continue
            if not isinstance(item, dict):
                yield line, None, f"a JSON object per line, not {type(item).__name__}"
                continue
            yield line, item, ""
        else:
            qid, sep, text = raw.partition("\t")
            if not sep:
                yield line, {"text": raw}, ""
            else:
                yield line, ({"id": qid.strip(), "text": text} if qid.strip() else {"text": text}), ""


@contextlib.contextmanager
def _rereadable(handle: TextIO) -> Iterator[TextIO]:
    """``handle``, or where it cannot seek (a pipe, standard input), the rest of it copied to a
    temporary file (in memory up to :data:`SPOOL_BYTES`, on disk beyond): a CSV is read twice,
    once to tell whether it quotes its fields."""
    if handle.seekable():
        yield handle
        return
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", encoding="utf-8", newline="") as spool:
        shutil.copyfileobj(handle, spool)
        spool.seek(0)
        yield cast(TextIO, spool)


def _quoted(handle: TextIO, delimiter: str) -> bool:
    """Whether the rest of ``handle`` (seekable) quotes its fields as CSV does
    (:mod:`model.delimited`); the handle is left where it was."""
    at = handle.tell()
    quoted = quotes_fields(handle, delimiter)
    handle.seek(at)
    return quoted


def _csv_rows(lines: Iterator[str], first: str, delimiter: str, quoted: bool) -> Iterator[RawRow]:
    """The rows of a CSV whose header is ``first`` (and the first of ``lines``), read with CSV's
    quoting or, where ``quoted`` is false, none."""
    if not first:
        raise BadHeader("the file is empty, where a CSV starts with a header that names a 'text' column")
    reader = csv.DictReader(lines, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
    if reader.fieldnames is None or "text" not in map(_column, reader.fieldnames):
        raise BadHeader(f"the CSV header must name a 'text' column; it has {reader.fieldnames}")
    reader.fieldnames = [_column(name) for name in reader.fieldnames]
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:  # a field past csv's limit, as a quote left open makes: skip to the next line
            # DictReader's own line_num moves only with a row it returns; its reader's has moved on.
            yield reader.reader.line_num, None, f"not readable as CSV: {err}"
            continue
        line = reader.line_num
        if None in record:  # more fields than the header names
            yield line, None, f"more fields than the {len(reader.fieldnames)} the header names"
            continue
        item: dict[str, Any] = {"text": record.pop("text") or ""}
        for name in ("id", "namespace"):
            if record.get(name):
                item[name] = record.pop(name)
            record.pop(name, None)
        metadata = {k: v for k, v in record.items() if v not in (None, "")}
        if metadata:
            item["metadata"] = metadata
        yield line, item, ""


def _column(name: str) -> str:
    """A header's name for a column: ``id``, ``text`` and ``namespace`` in any case and with any
    white space around them, every other name (a metadata key) as it is."""
    plain = name.strip().lower()
    return plain if plain in ("id", "text", "namespace") else name


def _delimiter(header: str) -> str:
    """The delimiter of a CSV: a comma, or the semicolon or tab that spreadsheets set to the
    decimal comma use, whichever makes a ``text`` column of the header."""
    for delimiter in (",", ";", "\t"):
        if "text" in map(_column, next(csv.reader([header], delimiter=delimiter), [])):
            return delimiter
    return ","


def _checked(rows: Iterator[RawRow], limits: Limits, namespace: str | None) -> Iterator[Row]:
    """The rows as ``POST /questions`` items (``namespace`` for a row that names none), or skipped
    with the reason."""
    for line, item, why in rows:
        if item is None:
            yield line, None, why
            continue
        if namespace is not None and "namespace" not in item:
            item["namespace"] = namespace
        try:
            question = QuestionIn.model_validate(item, context=limits)
        except ValidationError as err:
            yield line, None, "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in err.errors())
            continue
        yield line, question, ""
