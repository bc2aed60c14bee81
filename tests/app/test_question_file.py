"""Files of questions, one reader for `dupq import`, `dupq index`, `dupq embed` and the seed file:
each format, and the rules of POST /questions, row by row."""

import gzip
import io
import json
import os
import sys
import threading
from pathlib import Path

import pytest

from app import question_file
from app.question_file import read_questions
from app.schemas import Limits, QuestionIn

LIMITS = Limits(max_question_chars=100, max_batch=8)


def _read(path: str | Path, limits: Limits = LIMITS, **options: str) -> tuple[list[tuple], list[tuple[int, str]]]:
    def fields(q: QuestionIn) -> tuple:
        return (
            (q.id, q.text) if q.namespace == "default" and not q.metadata else (q.id, q.text, q.namespace, q.metadata)
        )

    return read_questions(path, limits, fields, **options)  # type: ignore[arg-type]


def test_question_lines_with_and_without_ids(tmp_path: Path) -> None:
    path = tmp_path / "questions.txt"
    path.write_text("q-1\tHow old are you?\n\n  Why is the sky blue?  \nq-2\t  Where? \r\n\tWhen?", encoding="utf-8")
    assert _read(path) == (
        [("q-1", "How old are you?"), (None, "Why is the sky blue?"), ("q-2", "Where?"), (None, "When?")],
        [],
    )


def test_question_lines_the_api_would_refuse_are_skipped_and_named(tmp_path: Path) -> None:
    lines = [
        "a/b\tAn id with a slash?\n",  # 1: bad id
        "q-3\t   \n",  # 2: an id and no text, not the question "q-3"
        "x" * 11 + "\n",  # 3: too long
        "q-4\t\u2003\u00a0\n",  # 4: only white space (an em space, a no-break space)
        "q-5\tFine?\n",
        "text\twith a tab\n",  # 6: "text" is an id, "with a tab" its question
        "two words\tand a tab\n",  # 7: "two words" is no id
        "q-8\ta \0 b\n",  # 8: NUL, which PostgreSQL cannot store
    ]
    path = tmp_path / "questions.txt"
    path.write_text("".join(lines), encoding="utf-8")
    items, skipped = _read(path, Limits(max_question_chars=10, max_batch=8))
    assert items == [("q-5", "Fine?"), ("text", "with a tab")]
    assert [number for number, _ in skipped] == [1, 2, 3, 4, 7, 8]
    reasons = dict(skipped)
    assert reasons[1].startswith("id: String should match pattern")
    assert reasons[2] == reasons[4] == "text: Value error, must not be empty or white space"
    assert reasons[3] == "text: question has 11 characters; at most max_question_chars = 10"
    assert "must not contain the NUL character U+0000 (at character 2)" in reasons[8]


def test_jsonl_rows_are_checked_as_post_questions_checks_items(tmp_path: Path) -> None:
    path = tmp_path / "questions.jsonl"
    rows = [
        '{"id": "j1", "text": "ok \\ud800"}',  # 1: a lone surrogate, which only JSON's escapes can write
        "{not json",  # 2
        '["a list"]',  # 3
        '{"id": "j4", "text": "Deep?", "metadata": {"deep": {"x": 1}}}',  # 4
        '{"id": "j5", "text": "Fine?", "namespace": "forum", "metadata": {"n": 1}}',
        '{"text": "No id?", "extra": 1}',  # 6: a field POST /questions does not know
        '{"text": "No id at all?"}',
    ]
    path.write_text("\n".join(rows), encoding="utf-8")
    items, skipped = _read(path)
    assert items == [("j5", "Fine?", "forum", {"n": 1}), (None, "No id at all?")]
    reasons = dict(skipped)
    assert list(reasons) == [1, 2, 3, 4, 6]
    assert "lone surrogate U+D800" in reasons[1]
    assert reasons[2].startswith("not JSON:") and reasons[3] == "a JSON object per line, not list"
    assert reasons[4].startswith("metadata.deep:") and reasons[6].startswith("extra:")


def test_a_csv_is_read_as_a_table_never_as_lines_of_text(tmp_path: Path) -> None:
    # `dupq index` and the seed file once read a CSV's lines as questions: "id,text" among them.
    path = tmp_path / "questions.csv"
    path.write_text(
        'id,Text,status,namespace\n1,"A question\nover two lines?",open,\n2,"Who wrote ""Hamlet""?",,books\n',
        encoding="utf-8",
    )
    assert _read(path) == (
        [
            ("1", "A question\nover two lines?", "default", {"status": "open"}),
            ("2", 'Who wrote "Hamlet"?', "books", None),
        ],
        [],
    )
    # --namespace is the namespace of the rows that name none; --format overrides the file's name.
    assert _read(path, namespace="site")[0][0][2] == "site"
    jsonl = tmp_path / "rows.txt"
    jsonl.write_text(json.dumps({"id": "j", "text": "As JSON?"}), encoding="utf-8")
    assert _read(jsonl, fmt="jsonl") == ([("j", "As JSON?")], [])
    assert _read(jsonl) == ([(None, '{"id": "j", "text": "As JSON?"}')], [])


def test_a_gzip_compressed_file_is_read_as_the_name_under_gz_says(tmp_path: Path) -> None:
    # A site's export of its backlog, compressed: read as a CSV, not refused as bytes that are not UTF-8.
    path = tmp_path / "questions.csv.GZ"
    path.write_bytes(gzip.compress(b'id,text,status\n1,"Who wrote ""Hamlet""?",open\n'))
    assert _read(path) == ([("1", 'Who wrote "Hamlet"?', "default", {"status": "open"})], [])
    lines = tmp_path / "questions.gz"
    lines.write_bytes(gzip.compress(b"q-1\tHow old are you?\n"))
    assert _read(lines) == ([("q-1", "How old are you?")], [])


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (gzip.compress(b"q-1\tHow old are you?\n" * 1000)[:60], "its gzip stream is damaged or cut short"),
        (b"q-1\tHow old are you?\n", "is not gzip-compressed, though its name ends in .gz"),
    ],
    ids=["cut", "not-gzip"],
)
def test_a_cut_or_false_gzip_file_is_refused_by_its_name(tmp_path: Path, content: bytes, says: str) -> None:
    # Before: an EOFError or gzip's own "Not a gzipped file", neither naming the file.
    path = tmp_path / "questions.txt.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"^{path}.*{says}"):
        _read(path)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("", "the file is empty, where a CSV starts with a header that names a 'text' column"),
        ("id,question\n1,How old are you?\n", r"the CSV header must name a 'text' column; it has \['id', 'question'\]"),
    ],
    ids=["empty", "no-text-column"],
)
def test_a_csv_without_its_header_is_refused_by_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, says: str
) -> None:
    # Before: the reason alone, naming no file (the seed file's among the service's start-up
    # lines), and an empty file was said to have the header [].
    path = tmp_path / "questions.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{path}: {says}$"):
        _read(path)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(content.encode())))
    with pytest.raises(ValueError, match=f"^standard input: {says}$"):
        _read("-", fmt="csv")


def test_a_header_line_is_not_a_question(tmp_path: Path) -> None:
    path = tmp_path / "questions.tsv"
    path.write_text("id\ttext\nq-1\tHow old are you?\n", encoding="utf-8")
    assert _read(path) == ([("q-1", "How old are you?")], [])


def test_a_byte_order_mark_before_the_first_line_is_not_part_of_it(tmp_path: Path) -> None:
    path = tmp_path / "questions.txt"
    path.write_text("q-1\tHow old are you?\nWhat is your age?\n", encoding="utf-8-sig")  # as Notepad saves it
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert _read(path) == (
        [("q-1", "How old are you?"), (None, "What is your age?")],
        [],
    )


@pytest.mark.parametrize("name", ["questions.csv", "-"])
def test_utf_16_is_read_where_it_opens_with_its_byte_order_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # Excel's "Unicode Text" and Windows PowerShell's `>` write UTF-16: it was refused as not UTF-8.
    sent = "id,text\nq-1,Quel âge as-tu ?\n".encode("utf-16")
    path = tmp_path / name
    if name == "-":
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(sent))))
        path = Path("-")
    else:
        path.write_bytes(sent)
    assert _read(path, fmt="csv") == ([("q-1", "Quel âge as-tu ?")], [])


def test_standard_input_is_read_as_utf8_without_its_byte_order_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    # `type questions.txt | dupq index -` on Windows, or a file piped in whatever the locale
    sent = "\ufeffq-1\tHow old are you?\nQuel âge as-tu ?\n".encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(sent), encoding="latin-1"))
    assert _read("-") == (
        [("q-1", "How old are you?"), (None, "Quel âge as-tu ?")],
        [],
    )


@pytest.mark.parametrize("source", ["fifo", "stdin", "stdin spooled to disk"])
def test_a_csv_through_a_pipe_is_read_as_the_same_file_on_disk_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    # Questions written as they are, quotes and all: from a pipe (`dupq index --format csv -`, or
    # `<(zcat ...)`), which cannot be read twice to tell, the file was read with CSV's quoting:
    # line 3 lost its first two quotes, and line 4's open quote took line 5 into its question.
    content = 'id,text\n1,What is a 5" screen?\n2,How big is a 7" tablet?\n3,"Dune" or "Hamlet"?\n4,"Quoted?\n5,Why?\n'
    on_disk = tmp_path / "questions.csv"
    on_disk.write_text(content, encoding="utf-8")
    texts = ['What is a 5" screen?', 'How big is a 7" tablet?', '"Dune" or "Hamlet"?', '"Quoted?', "Why?"]
    expected = ([(str(i), text) for i, text in enumerate(texts, 1)], [])
    assert _read(on_disk) == expected
    if source.startswith("stdin"):
        if source.endswith("disk"):
            monkeypatch.setattr(question_file, "SPOOL_BYTES", 16)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(_Unseekable(content.encode())))
        assert _read("-", fmt="csv") == expected
        return
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=(content,), kwargs={"encoding": "utf-8"})
    writer.start()
    try:
        assert _read(fifo, fmt="csv") == expected
    finally:
        writer.join()


class _Unseekable(io.BytesIO):
    """Bytes that cannot seek, as standard input from a pipe."""

    def seekable(self) -> bool:
        return False
