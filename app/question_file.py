"""The question file of the seed file and ``dupq index``: ``text`` or ``id<TAB>text`` per line, UTF-8
(a first line ``id<TAB>text`` is a header).

Each line must meet the rules of ``POST /questions`` (the id format, a text that is not blank, at
most ``max_question_chars`` characters, valid Unicode) or it is skipped with its line number and
the reason, never loaded under another meaning (``id<TAB>`` with no text is not the question "id").
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from app.schemas import Limits, QuestionIn

Item = tuple[str | None, str]  # (id or None, text)
Skipped = tuple[int, str]  # (line number, reason)


def parse_question_lines(lines: Iterable[str], limits: Limits) -> tuple[list[Item], list[Skipped]]:
    """The questions of ``lines`` and the lines skipped. Blank lines are ignored, and so is a first
    line ``id<TAB>text``, a header; a line without a tab, or with nothing before it, has no id."""
    items: list[Item] = []
    skipped: list[Skipped] = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip() or (number == 1 and line == "id\ttext"):
            continue
        qid, sep, text = line.partition("\t")
        fields = {"id": qid.strip() or None, "text": text} if sep else {"text": line}
        try:
            item = QuestionIn.model_validate(fields, context=limits)
        except ValidationError as err:
            skipped.append((number, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())))
            continue
        items.append((item.id, item.text))
    return items, skipped


def read_question_file(path: str | Path, limits: Limits) -> tuple[list[Item], list[Skipped]]:
    """:func:`parse_question_lines` of a UTF-8 file ('-': standard input, read as UTF-8 whatever the
    locale), without the byte order mark that may open it; a file that is not UTF-8 is a
    ``ValueError`` that names it."""
    if str(path) == "-":
        handle: TextIO = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig")
    else:
        handle = open(path, encoding="utf-8-sig")  # noqa: SIM115
    with handle:
        try:
            return parse_question_lines(handle, limits)
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text: byte 0x{err.object[err.start]:02x}, {err.reason}") from None


def describe_skipped(source: object, skipped: list[Skipped], shown: int = 5) -> str:
    """One log line about the lines of ``source`` that were skipped: how many, and the first few."""
    first = "; ".join(f"line {number}: {reason}" for number, reason in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"{source}: skipped {len(skipped)} line(s) that POST /questions would refuse: {first}{more}"
