"""``dupq import``: questions from a file into a running service, in batches, over HTTP.

Formats, from the file name (or ``--format``):

- ``jsonl`` (``.jsonl``, ``.ndjson``): one object per line, ``text`` and optional ``id``,
  ``namespace``, ``metadata``;
- ``csv`` (``.csv``): a header naming ``text`` and optionally ``id`` and ``namespace`` (in any
  case); every other column becomes a metadata key (empty cells are left out); separated by
  commas, or by the semicolons (or tabs) of a spreadsheet set to a decimal comma;
- ``text`` (anything else): ``text`` or ``id<TAB>text`` per line, as the seed file; or, if its
  first line names ``id`` and ``text`` among tab-separated columns, a CSV separated by tabs.

A CSV's fields may be quoted, or written as they are where most of the quotes in its questions
show that they are not (:mod:`model.delimited`).

The file is UTF-8, with or without the byte order mark that Excel puts before a CSV; it is read a
line at a time and never held whole. A row without an id gets one made from its namespace and text
(``imp-`` and 24 hex digits of their SHA-256), so a re-run after an interruption replaces what was
already sent instead of adding it twice. Each row is checked as ``POST /questions`` checks it, with
the service's own limits (``/info``); a row that fails is skipped and reported with its line
number, and never stops the rest.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import orjson
from pydantic import ValidationError

from app.client import Client, DupqError
from app.schemas import Limits, QuestionIn
from model.delimited import quotes_fields

Format = Literal["jsonl", "csv", "text"]
Row = tuple[int, dict[str, Any] | None, str]  # (line number, item or None, why it was skipped)


@dataclass
class ImportReport:
    imported: int = 0
    batches: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def summary(self, shown: int = 10) -> str:
        lines = [f"imported {self.imported} questions in {self.batches} batches; skipped {len(self.skipped)} rows"]
        lines += [f"  line {n}: {why}" for n, why in self.skipped[:shown]]
        if len(self.skipped) > shown:
            lines.append(f"  and {len(self.skipped) - shown} more")
        return "\n".join(lines)


def detect_format(path: str | Path) -> Format:
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    return "csv" if suffix == ".csv" else "text"


def stable_id(namespace: str, text: str) -> str:
    """The id of a row that has none: the same on every run for the same namespace and text."""
    return "imp-" + hashlib.sha256(f"{namespace}\x00{text}".encode()).hexdigest()[:24]


def read_rows(handle: TextIO, fmt: Format) -> Iterator[Row]:
    """The raw rows of a file, one at a time, with their line numbers. A text file whose first line
    names the columns ``id`` and ``text`` among others (a table exported with its header) is read
    as a CSV separated by tabs."""
    first = handle.readline()
    lines = itertools.chain([first], handle)
    if fmt == "text" and {"id", "text"} <= {_column(name) for name in first.rstrip("\r\n").split("\t")}:
        fmt = "csv"
    if fmt == "csv":
        delimiter = _delimiter(first)
        yield from _csv_rows(lines, first, delimiter, _quoted(handle, delimiter))
        return
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
            yield line, ({"id": qid.strip(), "text": text} if sep else {"text": raw}), ""


def _quoted(handle: TextIO, delimiter: str) -> bool:
    """Whether the rest of ``handle`` quotes its fields as CSV does (:mod:`model.delimited`); the
    handle is left where it was."""
    if not handle.seekable():
        return True
    at = handle.tell()
    quoted = quotes_fields(handle, delimiter)
    handle.seek(at)
    return quoted


def _csv_rows(lines: Iterator[str], first: str, delimiter: str, quoted: bool) -> Iterator[Row]:
    """The rows of a CSV whose header is ``first`` (and the first of ``lines``), read with CSV's
    quoting or, where ``quoted`` is false, none."""
    reader = csv.DictReader(lines, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
    if reader.fieldnames is None or "text" not in map(_column, reader.fieldnames):
        raise ValueError(f"the CSV header must name a 'text' column; it has {reader.fieldnames}")
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


def checked(rows: Iterator[Row], limits: Limits, namespace: str | None) -> Iterator[Row]:
    """The rows as ``POST /questions`` items, each with its id (``namespace`` for a row that names
    none), or skipped with the reason."""
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
        out: dict[str, Any] = {
            "id": question.id or stable_id(question.namespace, question.text),
            "text": question.text,
            "namespace": question.namespace,
        }
        if question.metadata:
            out["metadata"] = question.metadata
        yield line, out, ""


def import_file(
    client: Client,
    path: str | Path,
    namespace: str | None = None,
    fmt: Format | None = None,
    batch: int = 256,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Post the questions of a file in batches of at most ``batch`` items (and the service's
    ``max_batch`` and body limit). A batch the service refuses whole is sent again one item at a
    time, so that only its bad rows are skipped."""
    info = client.info()
    limits = Limits(info["max_question_chars"], info["max_batch"])
    size = min(batch, limits.max_batch)
    max_bytes = int(info.get("max_body_bytes", 1 << 20)) - 1024
    report = ImportReport()
    pending: list[tuple[int, dict[str, Any]]] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        if not pending:
            return
        try:
            client.add_questions([item for _, item in pending])
            report.imported += len(pending)
            report.batches += 1
        except DupqError as err:
            if err.status != 422:
                raise
            for line, item in pending:
                try:
                    client.add_questions([item])
                    report.imported += 1
                    report.batches += 1
                except DupqError as one:
                    if one.status != 422:
                        raise
                    report.skipped.append((line, f"refused by the service: {one.detail}"))
        if progress is not None:
            progress(len(pending))
        pending, pending_bytes = [], 0

    with open(path, encoding="utf-8-sig", newline="") as handle:  # "-sig": without a byte order mark
        try:
            for line, item, why in checked(read_rows(handle, fmt or detect_format(path)), limits, namespace):
                if item is None:
                    report.skipped.append((line, why))
                    continue
                item_bytes = len(orjson.dumps(item)) + 1
                if pending and (len(pending) >= size or pending_bytes + item_bytes > max_bytes):
                    flush()
                pending.append((line, item))
                pending_bytes += item_bytes
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text: byte 0x{err.object[err.start]:02x}, {err.reason}") from None
        flush()
    return report
