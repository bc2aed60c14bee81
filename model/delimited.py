"""Whether a delimited text file quotes its fields, for the pair files of training and the tables
of ``dupq import``.

Two kinds of tab- (or comma-) separated files hold questions. pandas, spreadsheets and
PostgreSQL's CSV mode quote a field that holds a quote, the delimiter or a line break, and double
the quotes inside it (``"Who wrote ""Hamlet""?"``). PostgreSQL's text mode, Quora's and GLUE's
files and most hand-made TSVs write every field as it is (``Who wrote "Hamlet"?``). Read as CSV,
a field of the second kind that starts with a quote loses its quotes, and one whose quote is never
closed swallows the rest of the file into one field.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator

_QUOTES = re.compile('"+')


def quotes_fields(lines: Iterable[str], delimiter: str) -> bool:
    """Whether the file of ``lines`` reads as CSV quotes fields. It does not where a field holds a
    quote that CSV's quoting would have doubled (a run of an odd number of quotes that neither
    opens nor closes it: ``Who wrote "Hamlet"?``), where a quote that closes a field is followed
    by more of it (``"Hamlet" is by whom?``), or where a quote opens a field that never closes.
    A quoted file has none of these, even split at a delimiter or a line break inside a quoted
    field, since the pieces' quotes are doubled but at their ends. A field past csv's size limit
    is no evidence either way."""
    undoubled = False

    def checked() -> Iterator[str]:
        nonlocal undoubled
        for line in lines:
            if '"' in line and any(
                run.start() > 0 and run.end() < len(piece) and (run.end() - run.start()) % 2
                for piece in line.rstrip("\r\n").split(delimiter)
                for run in _QUOTES.finditer(piece)
            ):
                undoubled = True
                return
            yield line

    reader = csv.reader(checked(), delimiter=delimiter, strict=True)
    while True:
        try:
            if next(reader, None) is None:
                return not undoubled
        except csv.Error as err:
            if not str(err).startswith("field larger than field limit"):
                return False
