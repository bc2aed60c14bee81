"""Whether a delimited text file quotes its fields, for the pair files of training and the tables
of ``dupq import``.

Two kinds of tab- (or comma-) separated files hold questions. pandas, spreadsheets and
PostgreSQL's CSV mode quote a field that holds a quote, the delimiter or a line break, and double
the quotes inside it (``"Who wrote ""Hamlet""?"``). PostgreSQL's text mode, Quora's and GLUE's
files and most hand-made TSVs write every field as it is (``Who wrote "Hamlet"?``). Read as CSV,
a field of the second kind that starts with a quote loses its quotes, and one whose quote never
closes swallows the rest of the file into one field; read as it is, a field of the first kind
keeps the quotes that wrap it.

Any of them may be gzip-compressed, told by the name (:func:`gzipped`): :func:`open_text` reads
both, and :func:`named_errors` turns a damaged or cut gzip stream into a ``ValueError`` that names
the file, as :func:`detect_named` does for a first line of no known layout.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import re
import typing
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO, TypeVar

_QUOTES = re.compile('"+')
T = TypeVar("T")


def gzipped(path: str | Path) -> bool:
    """Whether a file is read and written gzip-compressed: its name ends in ``.gz``, in any case."""
    return Path(path).suffix.lower() == ".gz"


def open_text(path: str | Path) -> TextIO:
    """A text file, gunzipped on the fly when its name ends in ``.gz`` (in any case), decoded by
    :func:`decoded`. Open and read it inside :func:`named_errors`."""
    raw = gzip.open(path, "rb") if gzipped(path) else open(path, "rb")  # noqa: SIM115  # the text stream closes it
    try:
        return decoded(typing.cast(BinaryIO, raw))
    except BaseException:
        raw.close()
        raise


def decoded(raw: BinaryIO) -> TextIO:
    """The text of a byte stream: UTF-16 where it opens with UTF-16's byte order mark (as Windows
    PowerShell's ``>`` and Excel's "Unicode Text" write), else UTF-8 with the byte order mark that
    spreadsheets and Notepad write dropped. A byte the encoding does not allow raises
    ``UnicodeDecodeError`` where it is read, which :func:`named_errors` names."""
    if not hasattr(raw, "peek"):  # a stream with no buffer of its own
        raw = typing.cast(BinaryIO, io.BufferedReader(typing.cast(typing.Any, raw)))
    utf16 = raw.peek(2)[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # type: ignore[attr-defined]
    return io.TextIOWrapper(raw, encoding="utf-16" if utf16 else "utf-8-sig", newline="")


@contextlib.contextmanager
def named_errors(path: str | Path) -> Iterator[None]:
    """Reading a file of :func:`open_text`: a file named ``.gz`` that is not gzip, or whose
    stream is damaged or cut short, or one that is not UTF-8 text, is a ``ValueError`` that names
    it (gzip's own errors name no file, a cut stream is an ``EOFError`` that no caller expects,
    and a byte that is not UTF-8 is told with its line). ``-`` is standard input."""
    try:
        yield
    except gzip.BadGzipFile as err:
        raise ValueError(f"{path} is not gzip-compressed, though its name ends in .gz ({err})") from None
    except (EOFError, zlib.error) as err:
        raise ValueError(f"{path}: its gzip stream is damaged or cut short ({err})") from None
    except UnicodeDecodeError as err:
        raise ValueError(_undecodable(path, err)) from None


# Files that are not text at all, by how they open: what they are, and what to do instead.
_NOT_TEXT = (
    (b"PK\x03\x04", "a zip archive, not text (an Excel workbook is one): save the sheet as CSV UTF-8"),
    (b"\xd0\xcf\x11\xe0", "an Excel 97-2003 workbook, not text: save the sheet as CSV UTF-8"),
    (b"\x1f\x8b", "gzip-compressed, though its name does not end in .gz: name it so, or gunzip it"),
)


def _undecodable(path: str | Path, err: UnicodeDecodeError) -> str:
    """What is wrong with a file that ``err`` stopped reading, and how to mend it."""
    name = "standard input" if str(path) == "-" else str(path)
    if err.encoding.replace("_", "-").lower() not in ("utf-8", "utf-8-sig"):
        return f"{name} is not {err.encoding.upper()} text, though it opens with its byte order mark ({err.reason})"
    where = f"byte 0x{err.object[err.start]:02x}, {err.reason}"
    if Path(path).is_file():  # not standard input, nor a pipe, which cannot be read again from its start
        helps = contextlib.suppress(OSError, EOFError, zlib.error)  # the line helps; it is not needed
        with helps, gzip.open(path, "rb") if gzipped(path) else open(path, "rb") as raw:
            opening = raw.peek(4)[:4]
            for magic, what in _NOT_TEXT:
                if opening.startswith(magic):
                    return f"{name} is {what}"
            for number, line in enumerate(raw, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as at:
                    where = f"line {number}: byte 0x{line[at.start]:02x}, {at.reason}"
                    break
    return (
        f"{name} is not UTF-8 text ({where}); save it as UTF-8, or convert it: `iconv -f cp1252 -t utf-8` for a "
        "file that Excel saved in Windows-1252"
    )


def detect_named(path: str | Path, first: str, detect: Callable[[str], T]) -> T:
    """``detect`` of the first line of the file ``path`` (its format, from its header), with the
    file's name on the ``ValueError`` of a line it cannot place; an empty file is one too."""
    if not first:
        raise ValueError(f"{path} is empty: no header, no pair")
    try:
        return detect(first)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def quotes_fields(lines: Iterable[str], delimiter: str) -> bool:
    """Whether the file of ``lines`` reads as CSV quotes fields, by a vote of its lines that hold
    a quote. A line votes "as it is" where a field holds a quote that CSV's quoting would have
    doubled: a run of an odd number of quotes that neither opens nor closes it (``Who wrote
    "Hamlet"?``, ``"Hamlet" is by whom?``); it votes "quoted" where a field opens or closes with a
    quote and none is of that kind. A quote that opens a field and never closes adds a vote for "as
    it is"; a tie goes to CSV's quoting if the whole file parses as strict CSV. A file that CSV's
    writer wrote never has a vote for "as it is", even split at a delimiter or a line break inside
    a quoted field, since the pieces' quotes are doubled but at their ends; one mistyped row among
    quoted ones does not outvote them."""
    as_it_is = quoted = 0

    def voting() -> Iterator[str]:
        nonlocal as_it_is, quoted
        for line in lines:
            if '"' in line:
                ends = undoubled = False
                for piece in line.rstrip("\r\n").split(delimiter):
                    for run in _QUOTES.finditer(piece):
                        if (run.end() - run.start()) % 2:
                            if run.start() > 0 and run.end() < len(piece):
                                undoubled = True
                            else:
                                ends = True
                as_it_is += undoubled
                quoted += ends and not undoubled
            yield line

    strict = True
    reader = csv.reader(voting(), delimiter=delimiter, strict=True)
    while True:
        try:
            if next(reader, None) is None:
                break
        except csv.Error as err:
            if str(err).startswith("field larger than field limit"):
                continue  # no evidence either way
            strict = False
            as_it_is += str(err) == "unexpected end of data"
    return quoted > as_it_is or (quoted == as_it_is and strict)
