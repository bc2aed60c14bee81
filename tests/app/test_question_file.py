"""The question file of the seed file and `dupq index`: the rules of POST /questions, line by line."""

import io
import sys
from pathlib import Path

import pytest

from app.question_file import parse_question_lines, read_question_file
from app.schemas import Limits


def test_question_lines_with_and_without_ids() -> None:
    lines = ["q-1\tHow old are you?\n", "\n", "  Why is the sky blue?  \n", "q-2\t  Where? \r\n", "\tWhen?"]
    assert parse_question_lines(lines, Limits(max_question_chars=100, max_batch=8)) == (
        [("q-1", "How old are you?"), (None, "Why is the sky blue?"), ("q-2", "Where?"), (None, "When?")],
        [],
    )


def test_question_lines_the_api_would_refuse_are_skipped_and_named() -> None:
    lines = [
        "a/b\tAn id with a slash?\n",  # 1: bad id
        "q-3\t   \n",  # 2: an id and no text, not the question "q-3"
        "x" * 11 + "\n",  # 3: too long
        "q-4\tok \ud800\n",  # 4: a lone surrogate
        "q-5\tFine?\n",
        "text\twith a tab\n",  # 6: "text" is an id, "with a tab" its question
        "two words\tand a tab\n",  # 7: "two words" is no id
        "q-8\ta \0 b\n",  # 8: NUL, which PostgreSQL cannot store
    ]
    items, skipped = parse_question_lines(lines, Limits(max_question_chars=10, max_batch=8))
    assert items == [("q-5", "Fine?"), ("text", "with a tab")]
    assert [number for number, _ in skipped] == [1, 2, 3, 4, 7, 8]
    reasons = dict(skipped)
    assert reasons[1].startswith("id: String should match pattern")
    assert reasons[2] == "text: Value error, must not be empty or white space"
    assert reasons[3] == "text: question has 11 characters; at most max_question_chars = 10"
    assert "lone surrogate U+D800" in reasons[4]
    assert "must not contain the NUL character U+0000 (at character 2)" in reasons[8]


def test_a_header_line_is_not_a_question() -> None:
    lines = ["id\ttext\n", "q-1\tHow old are you?\n"]
    assert parse_question_lines(lines, Limits(max_question_chars=100, max_batch=8)) == (
        [("q-1", "How old are you?")],
        [],
    )


def test_a_byte_order_mark_before_the_first_line_is_not_part_of_it(tmp_path: Path) -> None:
    path = tmp_path / "questions.txt"
    path.write_text("q-1\tHow old are you?\nWhat is your age?\n", encoding="utf-8-sig")  # as Notepad saves it
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_question_file(path, Limits(max_question_chars=100, max_batch=8)) == (
        [("q-1", "How old are you?"), (None, "What is your age?")],
        [],
    )


def test_standard_input_is_read_as_utf8_without_its_byte_order_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    # `type questions.txt | dupq index -` on Windows, or a file piped in whatever the locale
    sent = "\ufeffq-1\tHow old are you?\nQuel âge as-tu ?\n".encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(sent), encoding="latin-1"))
    assert read_question_file("-", Limits(max_question_chars=100, max_batch=8)) == (
        [("q-1", "How old are you?"), (None, "Quel âge as-tu ?")],
        [],
    )
