import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.delimited import quotes_fields


def written(rows: list[list[str]], delimiter: str) -> str:
    """``rows`` as pandas and spreadsheets write them: CSV's quoting, quotes doubled."""
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter).writerows(rows)
    return out.getvalue()


TEXT = st.text(alphabet=st.sampled_from('ab "\t,;\n'), max_size=12)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.lists(TEXT, min_size=2, max_size=4), min_size=1, max_size=6), delimiter=st.sampled_from("\t,;"))
def test_a_file_csv_quoting_wrote_always_reads_as_quoted(rows: list[list[str]], delimiter: str) -> None:
    # quotes, delimiters and line breaks inside fields, quotes doubled at a piece's very ends
    assert quotes_fields(io.StringIO(written(rows, delimiter)), delimiter)


@pytest.mark.parametrize(
    "text",
    [
        'id\tWho wrote "Hamlet"?\n',  # a quote inside a field, not doubled
        'id\t"Hamlet" is by whom?\n',  # a quote that would close the field, followed by more of it
        'id\t"Why not?\nid2\tWhat for?\n',  # a quote that opens a field and never closes it
        'id\tWhat is "love"\n',
    ],
)
def test_a_file_of_fields_written_as_they_are_is_told_apart(text: str) -> None:
    assert not quotes_fields(io.StringIO("id\ttext\n" + text), "\t")


def test_a_file_that_reads_the_same_either_way_or_has_an_overlong_field_counts_as_quoted() -> None:
    assert quotes_fields(io.StringIO('id\ttext\n1\tno quotes here\n2\t"Hamlet"\n'), "\t")
    assert quotes_fields(io.StringIO(f'id,text\n1,"{"x" * 200_000}"\n2,"Who wrote ""Hamlet""?"\n'), ",")


def test_one_mistyped_or_cut_row_does_not_outvote_the_quoted_ones() -> None:
    rows = [["id", "text"], *([str(i), f'Who wrote "Hamlet", act {i}?'] for i in range(5))]
    quoted = written(rows, "\t")
    assert quotes_fields(io.StringIO(quoted + 'x\t"Hamlet" is by whom?\n'), "\t")  # typed by hand
    assert quotes_fields(io.StringIO(quoted + 'x\t"Who wrote ""Ham'), "\t")  # a download cut short
    # and the other way round: one field that CSV would read as quoted among many that are not
    plain = "".join(f'{i}\tWho wrote "Hamlet", act {i}?\n' for i in range(5))
    assert not quotes_fields(io.StringIO("id\ttext\n" + plain + '9\t"Hamlet"\n'), "\t")
