import codecs
import csv
import gzip
import io
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.delimited import named_errors, open_text, quotes_fields


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


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig", "utf-8"])
@pytest.mark.parametrize("name", ["pairs.tsv", "pairs.tsv.gz"])
def test_utf_16_with_its_byte_order_mark_reads_as_utf_8_does(tmp_path: Path, encoding: str, name: str) -> None:
    # What Windows PowerShell's `>` and Excel's "Unicode Text" write: UTF-16, the mark first.
    text = "question1\tquestion2\tis_duplicate\nWhen does the café open?\tCafé hours?\t1\n"
    data = ("\ufeff" if encoding == "utf-16-be" else "") + text
    raw = data.encode(encoding)
    (tmp_path / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    with named_errors(tmp_path / name), open_text(tmp_path / name) as handle:
        assert handle.read() == text


def test_a_file_that_is_not_utf_8_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("id,text\n1,How old are you?\n2,When does the café open?\n".encode("cp1252"))
    with pytest.raises(ValueError) as caught, named_errors(path), open_text(path) as handle:
        handle.read()
    assert str(caught.value) == (
        f"{path} is not UTF-8 text (line 3: byte 0xe9, invalid continuation byte); save it as UTF-8, or convert "
        "it: `iconv -f cp1252 -t utf-8` for a file that Excel saved in Windows-1252"
    )
    path.write_bytes(codecs.BOM_UTF16_LE + "How old are you?".encode("utf-16-le")[:-1])  # cut in a character
    cut = "is not UTF-16-LE text, though it opens with its byte order mark"
    with pytest.raises(ValueError, match=cut), named_errors(path), open_text(path) as handle:
        handle.read()


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("questions.xlsx", "is a zip archive, not text (an Excel workbook is one): save the sheet as CSV UTF-8"),
        ("questions.xls", "is an Excel 97-2003 workbook, not text: save the sheet as CSV UTF-8"),
        ("questions.csv", "is gzip-compressed, though its name does not end in .gz: name it so, or gunzip it"),
    ],
)
def test_a_file_that_is_not_text_says_what_it_is(tmp_path: Path, name: str, says: str) -> None:
    # Told to `iconv -f cp1252` it, which would not have helped.
    path = tmp_path / name
    if name.endswith(".xlsx"):
        with zipfile.ZipFile(path, "w") as workbook:
            workbook.writestr("xl/sharedStrings.xml", "<sst><si><t>How old are you?</t></si></sst>" * 50)
    elif name.endswith(".xls"):
        path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(range(256)))
    else:
        path.write_bytes(gzip.compress(b"id,text\n1,How old are you?\n"))
    with pytest.raises(ValueError) as caught, named_errors(path), open_text(path) as handle:
        handle.read()
    assert str(caught.value) == f"{path} {says}"


def test_a_pipe_or_device_that_is_not_utf_8_is_not_read_again_for_the_line() -> None:
    # `dupq index <(cat excel.csv)`: read again, a pipe gives what comes after (or waits for a
    # writer), so the line told was another's; a device of random bytes stands in for it here.
    with pytest.raises(ValueError) as caught, named_errors("/dev/urandom"), open_text("/dev/urandom") as handle:
        handle.read(1 << 16)
    said = str(caught.value)  # UTF-16 where the bytes happen to open with its mark: 2 in 65,536
    assert said.startswith("/dev/urandom is not UTF-") and "(line " not in said
