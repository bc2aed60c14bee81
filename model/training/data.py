"""Loading labelled question pairs from the formats users actually have.

Supported formats (auto-detected from the first line, or named explicitly):

- ``quora``: the original Quora release ``quora_duplicate_questions.tsv``, tab-separated,
  header ``id qid1 qid2 question1 question2 is_duplicate``, fields may be quoted;
- ``kaggle``: Kaggle's ``train.csv``, the same columns comma-separated and quoted;
- ``bimpm``: the BiMPM partition, ``label q1 q2 pair_id`` tab-separated, no header, no quoting;
- ``qqp``: this project's ``shared/data/qqp/train.tsv.gz``, header ``source_repo source_path id
  qid1 qid2 question1 question2 is_duplicate``, no quoting.

Any file may be gzip-compressed (``.gz``). A malformed row (wrong number of fields, an empty
question, a label that is not 0 or 1) is skipped and counted in the :class:`LoadReport`; it never
stops a load and never shifts columns.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

Format = Literal["quora", "kaggle", "bimpm", "qqp"]
FORMATS: tuple[Format, ...] = ("quora", "kaggle", "bimpm", "qqp")

# Quora questions are short, but a broken quote can make csv swallow many lines into one field.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class Pair:
    """One labelled pair of questions; ``label`` is 1 for duplicates, 0 otherwise."""

    question1: str
    question2: str
    label: int


@dataclass
class LoadReport:
    """What a load read: rows kept and rows skipped, with the reason for each skip."""

    path: str
    format: str
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        return f"{self.path} ({self.format}): {self.kept} pairs, {self.n_skipped} skipped" + (
            f" ({reasons})" if reasons else ""
        )


# For each format: the csv dialect, whether a header comes first, and the columns of
# (question1, question2, label) with the number of fields a row must have.
_LAYOUT: dict[str, tuple[dict[str, object], bool, tuple[int, int, int], int]] = {
    "quora": ({"delimiter": "\t"}, True, (3, 4, 5), 6),
    "kaggle": ({"delimiter": ","}, True, (3, 4, 5), 6),
    "bimpm": ({"delimiter": "\t", "quoting": csv.QUOTE_NONE}, False, (1, 2, 0), 4),
    "qqp": ({"delimiter": "\t", "quoting": csv.QUOTE_NONE}, True, (5, 6, 7), 8),
}


def open_text(path: Path) -> io.TextIOBase:
    """A UTF-8 text file, gunzipped on the fly when it ends in ``.gz``; bad bytes become U+FFFD,
    and a byte order mark that opens the file (as spreadsheets and Notepad write) is dropped."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", errors="replace", newline="")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")


def detect_format(first_line: str) -> Format:
    """Guess a file's format from its first line."""
    line = first_line.rstrip("\r\n")
    lowered = line.lower()
    if lowered.startswith("source_repo\t"):
        return "qqp"
    if "question1" in lowered and "is_duplicate" in lowered:
        return "quora" if "\t" in line else "kaggle"
    fields = line.split("\t")
    if len(fields) == 4 and fields[0].strip() in {"0", "1"}:
        return "bimpm"
    raise ValueError(f"cannot tell the format of a file starting with {line[:80]!r}")


def _rows(path: Path, fmt: Format) -> Iterator[list[str]]:
    dialect, has_header, _, _ = _LAYOUT[fmt]
    with open_text(path) as handle:
        reader = csv.reader(handle, **dialect)  # type: ignore[arg-type]
        if has_header:
            next(reader, None)
        yield from reader


def iter_pairs(path: str | Path, fmt: Format | None = None, report: LoadReport | None = None) -> Iterator[Pair]:
    """Yield the well-formed pairs of ``path``; skipped rows are counted in ``report``."""
    path = Path(path)
    if fmt is None:
        with open_text(path) as handle:
            fmt = detect_format(handle.readline())
    if fmt not in _LAYOUT:
        raise ValueError(f"unknown pair format {fmt!r}; expected one of {', '.join(FORMATS)}")
    report = report if report is not None else LoadReport(str(path), fmt)
    report.format = fmt
    _, _, (c1, c2, cl), width = _LAYOUT[fmt]
    for row in _rows(path, fmt):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != width:
            report.skipped[f"rows with {len(row)} fields instead of {width}"] += 1
            continue
        q1, q2, label = row[c1].strip(), row[c2].strip(), row[cl].strip()
        if not q1 or not q2:
            report.skipped["rows with an empty question"] += 1
            continue
        if label not in {"0", "1"}:
            report.skipped["rows with a label other than 0 or 1"] += 1
            continue
        report.kept += 1
        yield Pair(" ".join(q1.split()), " ".join(q2.split()), int(label))


def load_pairs(path: str | Path, fmt: Format | None = None) -> tuple[list[Pair], LoadReport]:
    """Read every well-formed pair of a file, with a report of what was skipped."""
    report = LoadReport(str(path), fmt or "auto")
    pairs = list(iter_pairs(path, fmt, report))
    log = logger.warning if report.n_skipped else logger.info
    log("loaded %s", report.summary())
    return pairs, report


def load_validation_pairs(path: str | Path) -> tuple[list[Pair], LoadReport]:
    """:func:`load_pairs` for the pairs that choose tau and fit the calibration, which take both
    duplicates and non-duplicates: a file of one kind is refused, naming the kind it lacks."""
    pairs, report = load_pairs(path)
    duplicates = sum(p.label for p in pairs)
    if pairs and duplicates in (0, len(pairs)):
        lacking = "non-duplicates (label 0)" if duplicates else "duplicates (label 1)"
        raise ValueError(
            f"{path}: all {len(pairs)} validation pairs have the same label; choosing tau and fitting the "
            f"calibration needs {lacking} too"
        )
    return pairs, report


def write_bimpm(pairs: list[Pair], path: str | Path) -> None:
    """Write pairs in the BiMPM layout (``label q1 q2 pair_id``), the simplest one to read back."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        for i, pair in enumerate(pairs):
            handle.write(f"{pair.label}\t{pair.question1}\t{pair.question2}\t{i}\n")
