"""Loading labelled question pairs from the formats users actually have.

Supported formats (auto-detected from the first line, or named explicitly):

- ``tsv`` and ``csv``: separated by tabs, or by commas (semicolons where a spreadsheet set to a
  decimal comma saved it), with a header that names the two questions and the label, in any order
  and among any other columns (:data:`COLUMN_NAMES`: ``question1``, ``question2`` and
  ``is_duplicate``, or ``sentence1``, ``sentence2`` and ``label``, ...); fields may be quoted as
  CSV quotes them, or written as they are (a file whose quotes are mostly ones CSV would have
  doubled is read with no quoting: :mod:`model.delimited`). The original Quora release
  ``quora_duplicate_questions.tsv`` and Kaggle's ``train.csv`` (``id qid1 qid2 question1 question2
  is_duplicate``) are such files, and so is what a site exports from a spreadsheet or pandas;
- ``bimpm``: the BiMPM partition, ``label q1 q2 pair_id`` tab-separated, no header, no quoting;
- ``qqp``: this project's ``shared/data/qqp/train.tsv.gz``, header ``source_repo source_path id
  qid1 qid2 question1 question2 is_duplicate``, no quoting.

Any file may be gzip-compressed (``.gz``). A malformed row (wrong number of fields, an empty
question, a label that is not 0, 1, true or false) is skipped and counted in the
:class:`LoadReport`; it never stops a load and never shifts columns.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from model.delimited import detect_named, gzipped, named_errors, open_text, quotes_fields
from model.files import replacing_file
from model.model_dir import sha256_file

logger = logging.getLogger(__name__)

Format = Literal["tsv", "csv", "bimpm", "qqp"]
FORMATS: tuple[Format, ...] = ("tsv", "csv", "bimpm", "qqp")

# The names a header may give the first question, the second and the label (any case); the last
# of each are those of the Microsoft Research Paraphrase Corpus (``Quality #1 ID #2 ID #1 String
# #2 String``, its strings not quoted).
COLUMN_NAMES = (
    ("question1", "sentence1", "sentence_a", "text1", "text_a", "q1", "#1 string"),
    ("question2", "sentence2", "sentence_b", "text2", "text_b", "q2", "#2 string"),
    ("is_duplicate", "duplicate", "label", "quality"),
)
# A label: 1 or 0, or true or false in any case (as pandas writes a column of booleans).
LABELS = {"1": 1, "0": 0, "true": 1, "false": 0}


@dataclass(frozen=True)
class Pair:
    """One labelled pair of questions; ``label`` is 1 for duplicates, 0 otherwise."""

    question1: str
    question2: str
    label: int


def question_key(text: str) -> str:
    """The identity of a question: lower-cased, white space collapsed."""
    return " ".join(text.lower().split())


def conflicting(pairs: Iterable[Pair]) -> list[Pair]:
    """The first row of each pair of questions that ``pairs`` label both ways: the same two
    questions (:func:`question_key`, in either order) as duplicates in one row and not in another,
    as a decision reversed or two moderators who disagree leave in a site's export."""
    first: dict[tuple[str, str], Pair] = {}
    both: dict[tuple[str, str], Pair] = {}
    for pair in pairs:
        one, two = question_key(pair.question1), question_key(pair.question2)
        key = (one, two) if one <= two else (two, one)
        if first.setdefault(key, pair).label != pair.label:
            both.setdefault(key, first[key])
    return list(both.values())


@dataclass
class LoadReport:
    """What a load read: rows kept and rows skipped, with the reason for each skip, and the pairs
    of questions it holds under both labels (:func:`conflicting`; kept, not skipped)."""

    path: str
    format: str
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    conflicting: list[Pair] = field(default_factory=list)
    read_sha256: str | None = None  # of the bytes read, for a file that cannot be read again (a pipe)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def sha256(self) -> str:
        """The sha256 of the file the pairs came from, as read."""
        return self.read_sha256 or sha256_file(self.path)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        both = ""
        if self.conflicting:
            pair = self.conflicting[0]
            both = (
                f"; {len(self.conflicting)} pairs of questions labelled both ways, kept as they are "
                f"(the first: {pair.question1!r} / {pair.question2!r})"
            )
        return (
            f"{self.path} ({self.format}): {self.kept} pairs, {self.n_skipped} skipped"
            + (f" ({reasons})" if reasons else "")
            + both
        )


# For each format: the csv dialect and whether a header names the columns; without one (BiMPM),
# the columns of (question1, question2, label) and the number of fields a row must have.
_DIALECT: dict[str, tuple[dict[str, Any], bool]] = {
    "tsv": ({"delimiter": "\t"}, True),
    "csv": ({"delimiter": ","}, True),
    "bimpm": ({"delimiter": "\t", "quoting": csv.QUOTE_NONE}, False),
    "qqp": ({"delimiter": "\t", "quoting": csv.QUOTE_NONE}, True),
}
_BIMPM_COLUMNS, _BIMPM_WIDTH = (1, 2, 0), 4


def header_columns(header: list[str]) -> tuple[int, int, int]:
    """The columns of (question1, question2, label) that a header names (:data:`COLUMN_NAMES`);
    a ``ValueError`` says which is missing or named twice."""
    names = [name.strip().lower() for name in header]
    columns = []
    for role, accepted in zip(("the first question", "the second question", "the label"), COLUMN_NAMES, strict=True):
        found = [i for i, name in enumerate(names) if name in accepted]
        if len(found) != 1:
            how = "names no column" if not found else f"names {len(found)} columns"
            raise ValueError(f"the header {how} for {role} ({', '.join(accepted)}); it has {header}")
        columns.append(found[0])
    return columns[0], columns[1], columns[2]


def detect_format(first_line: str) -> Format:
    """Guess a file's format from its first line."""
    line = first_line.rstrip("\r\n")
    if line.lower().startswith("source_repo\t"):
        return "qqp"
    fields = line.split("\t")
    if len(fields) == _BIMPM_WIDTH and fields[0].strip() in {"0", "1"}:
        return "bimpm"
    fmt: Format = "tsv" if "\t" in line else "csv"
    try:
        header_columns(next(csv.reader([line], **_dialect(fmt, line))))
    except ValueError as err:
        raise ValueError(
            f"cannot tell the format of a file starting with {line[:80]!r}: not the BiMPM layout (label, question1, "
            f"question2, id; tab-separated, no header), and {err}"
        ) from None
    return fmt


def _dialect(fmt: Format, first_line: str) -> dict[str, Any]:
    """The csv dialect of a file of ``fmt`` that starts with ``first_line``: a CSV is separated by
    commas, or by semicolons where those make the header's names (as a spreadsheet set to a
    decimal comma saves one)."""
    dialect = _DIALECT[fmt][0]
    if fmt == "csv":
        try:
            header_columns(next(csv.reader([first_line], delimiter=";")))
        except ValueError:
            return dialect
        return {**dialect, "delimiter": ";"}
    return dialect


def _rows(
    path: Path, handle: TextIO, fmt: Format, first: str
) -> tuple[tuple[int, int, int], int, Iterator[list[str] | None]]:
    """The columns of (question1, question2, label), the number of fields a row must have, and
    the rows after the header, of the file ``path`` open as ``handle`` (seekable), whose first
    line is ``first``."""
    dialect, has_header = _dialect(fmt, first), _DIALECT[fmt][1]
    if fmt in ("tsv", "csv"):
        handle.seek(0)
        if not quotes_fields(handle, dialect["delimiter"]):
            dialect = {**dialect, "quoting": csv.QUOTE_NONE}

    def rows() -> Iterator[list[str] | None]:
        """The rows, None for one that csv cannot read: a field past its limit of 131,072
        characters, as a quote left open makes (it goes on from the next line)."""
        handle.seek(0)
        reader = csv.reader(handle, **dialect)
        if has_header:
            next(reader, None)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error:
                row = None
            yield row

    if not has_header:
        return _BIMPM_COLUMNS, _BIMPM_WIDTH, rows()
    header = next(csv.reader([first], **dialect), [])
    try:
        return header_columns(header), len(header), rows()
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def iter_pairs(path: str | Path, fmt: Format | None = None, report: LoadReport | None = None) -> Iterator[Pair]:
    """Yield the well-formed pairs of ``path``; skipped rows are counted in ``report``. The file
    is read more than once (its layout, its quoting, its rows): one that cannot seek (a pipe, as
    ``<(zcat ...)`` gives) is read into memory first."""
    path = Path(path)
    with named_errors(path), open_text(path) as opened:
        handle: TextIO = opened
        read_sha256 = None
        if not opened.seekable():
            data = opened.buffer.read()
            read_sha256 = hashlib.sha256(data).hexdigest()
            handle = io.StringIO(data.decode(opened.encoding), newline="")
        first = handle.readline()
        fmt = fmt or detect_named(path, first, detect_format)
        if fmt not in _DIALECT:
            raise ValueError(f"unknown pair format {fmt!r}; expected one of {', '.join(FORMATS)}")
        report = report if report is not None else LoadReport(str(path), fmt)
        report.format, report.read_sha256 = fmt, read_sha256
        (c1, c2, cl), width, rows = _rows(path, handle, fmt, first)
        for row in rows:
            if row is None:
                report.skipped["rows csv cannot read (a field past its limit: a quote left open?)"] += 1
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != width:
                report.skipped[f"rows with {len(row)} fields instead of {width}"] += 1
                continue
            q1, q2, label = row[c1].strip(), row[c2].strip(), LABELS.get(row[cl].strip().lower())
            if not q1 or not q2:
                report.skipped["rows with an empty question"] += 1
                continue
            if label is None:
                report.skipped["rows with a label other than 0, 1, true or false"] += 1
                continue
            report.kept += 1
            yield Pair(" ".join(q1.split()), " ".join(q2.split()), label)


def load_pairs(path: str | Path, fmt: Format | None = None) -> tuple[list[Pair], LoadReport]:
    """Read every well-formed pair of a file, with a report of what was skipped."""
    report = LoadReport(str(path), fmt or "auto")
    pairs = list(iter_pairs(path, fmt, report))
    report.conflicting = conflicting(pairs)
    log = logger.warning if report.n_skipped or report.conflicting else logger.info
    log("loaded %s", report.summary())
    return pairs, report


def require_pairs(pairs: list[Pair], reports: Sequence[LoadReport], purpose: str) -> list[Pair]:
    """``pairs``, or a ``ValueError`` that says what the files held where there are none (a header
    alone, or every row skipped, with the reasons)."""
    if not pairs:
        raise ValueError(f"no pairs to {purpose}: " + "; ".join(report.summary() for report in reports))
    return pairs


def load_validation_pairs(path: str | Path) -> tuple[list[Pair], LoadReport]:
    """:func:`load_pairs` for the pairs that choose tau and fit the calibration, which take both
    duplicates and non-duplicates: a file with none, or of one kind, is refused, naming what it
    lacks."""
    pairs, report = load_pairs(path)
    require_pairs(pairs, [report], "choose the threshold on")
    duplicates = sum(p.label for p in pairs)
    if duplicates in (0, len(pairs)):
        lacking = "non-duplicates (label 0)" if duplicates else "duplicates (label 1)"
        raise ValueError(
            f"{path}: all {len(pairs)} validation pairs have the same label; choosing tau and fitting the "
            f"calibration needs {lacking} too"
        )
    return pairs, report


def write_bimpm(pairs: list[Pair], path: str | Path) -> None:
    """Write pairs in the BiMPM layout (``label q1 q2 pair_id``), the simplest one to read back;
    whole or not at all (:func:`model.files.replacing_file`)."""
    opener = gzip.open if gzipped(path) else open
    with replacing_file(path) as partial, opener(partial, "wt", encoding="utf-8", newline="") as handle:
        for i, pair in enumerate(pairs):
            handle.write(f"{pair.label}\t{pair.question1}\t{pair.question2}\t{i}\n")
