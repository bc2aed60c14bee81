import gzip
import hashlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.training.data import Pair, conflicting, detect_format, load_pairs, load_validation_pairs, write_bimpm


def test_quora_release_with_quotes_and_malformed_rows(fixtures: Path) -> None:
    pairs, report = load_pairs(fixtures / "quora.tsv")
    assert report.format == "tsv"
    assert pairs == [
        Pair("How old are you?", "What is your age?", 1),
        Pair("Where are you from?", 'Where are you "going"?', 0),
        Pair("A question with a tab?", "Another one?", 1),  # the tab inside quotes became a space
    ]
    assert report.kept == 3
    assert report.skipped == {
        "rows with an empty question": 1,
        "rows with a label other than 0, 1, true or false": 1,
        "rows with 5 fields instead of 6": 1,
    }


def test_kaggle_csv(fixtures: Path) -> None:
    pairs, report = load_pairs(fixtures / "kaggle.csv")
    assert report.format == "csv"
    assert pairs == [
        Pair("How old are you?", "What is your age?", 1),
        Pair("Where are you from, friend?", "Where are you going?", 0),
    ]
    assert report.n_skipped == 2


def test_bimpm_partition(fixtures: Path) -> None:
    pairs, report = load_pairs(fixtures / "bimpm.tsv")
    assert report.format == "bimpm"
    assert [p.label for p in pairs] == [1, 0, 0]
    assert pairs[2].question1 == "Why ca n't I sleep ?"
    assert report.skipped == {"rows with 3 fields instead of 4": 1}


def test_shared_qqp_gzip_keeps_double_quotes(fixtures: Path) -> None:
    pairs, report = load_pairs(fixtures / "qqp.tsv.gz")
    assert report.format == "qqp"
    assert pairs[1] == Pair('Say "hi" to me?', "Say hello to me?", 1)
    assert report.kept == 2 and report.n_skipped == 2
    assert "2 skipped" in report.summary()


def test_a_cut_gzip_pair_file_is_refused_naming_it(fixtures: Path, tmp_path: Path) -> None:
    # A download cut short: dupq evaluate and train ended in an EOFError's traceback.
    whole = gzip.compress((fixtures / "bimpm.tsv").read_bytes() * 200)
    cut = tmp_path / "pairs.tsv.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=f"^{cut}: its gzip stream is damaged or cut short"):
        load_pairs(cut)


@pytest.mark.parametrize(
    ("name", "content", "fmt", "expected", "skipped"),
    [
        (  # columns in another order, names in any case, among others; quoted as CSV quotes
            "export.csv",
            'Label,Question2,answered,Question1\n1,"What is your age?",yes,How old are you?\n'
            '0,"Where are you ""going""?",no,"Where are you from, friend?"\n',
            "csv",
            [
                Pair("How old are you?", "What is your age?", 1),
                Pair("Where are you from, friend?", 'Where are you "going"?', 0),
            ],
            {},
        ),
        (  # sentence1/sentence2/label, labels as pandas writes booleans
            "pairs.tsv",
            "sentence1\tsentence2\tlabel\tsource\nHow old are you?\tWhat is your age?\tTrue\tforum\n"
            "Why?\tWhen?\t2\tforum\nWhere are you from?\tWhere are you going?\tfalse\tforum\n",
            "tsv",
            [Pair("How old are you?", "What is your age?", 1), Pair("Where are you from?", "Where are you going?", 0)],
            {"rows with a label other than 0, 1, true or false": 1},
        ),
        (  # the Microsoft Research Paraphrase Corpus's layout (made-up rows), strings written as they are
            "paraphrases.txt",
            'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t11\t12\tShe said "yes" at once.\tAt once she said "yes".\n'
            "0\t13\t14\tThe shop opens at nine.\tThe shop closes at nine.\n",
            "tsv",
            [
                Pair('She said "yes" at once.', 'At once she said "yes".', 1),
                Pair("The shop opens at nine.", "The shop closes at nine.", 0),
            ],
            {},
        ),
    ],
)
def test_a_sites_own_file_is_read_by_the_names_in_its_header(
    tmp_path: Path, name: str, content: str, fmt: str, expected: list[Pair], skipped: dict[str, int]
) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8-sig")  # with the byte order mark spreadsheets write
    pairs, report = load_pairs(tmp_path / name)
    assert (report.format, pairs, report.skipped) == (fmt, expected, skipped)


def test_a_csv_a_spreadsheet_saved_with_semicolons_is_read(tmp_path: Path) -> None:
    (tmp_path / "export.csv").write_text(
        'question1;question2;is_duplicate\n"How old are you?";What is your age?;1\n"One, two?";Three?;0\n',
        encoding="utf-8",
    )
    pairs, report = load_pairs(tmp_path / "export.csv")
    assert report.format == "csv" and report.n_skipped == 0
    assert pairs == [Pair("How old are you?", "What is your age?", 1), Pair("One, two?", "Three?", 0)]


def test_a_tsv_whose_questions_are_written_as_they_are_keeps_their_quotes_and_every_row(tmp_path: Path) -> None:
    # as PostgreSQL's text mode and hand-made files write them: read as CSV, the first question
    # lost its quotes and the second swallowed every row after it
    (tmp_path / "export.tsv").write_text(
        'question1\tquestion2\tis_duplicate\n"Hamlet" is by whom?\tWho wrote "Hamlet"?\t1\n'
        '"Why not?\tWhat for?\t0\nHow old are you?\tWhat is your age?\t1\n',
        encoding="utf-8",
    )
    pairs, report = load_pairs(tmp_path / "export.tsv")
    assert report.n_skipped == 0
    assert pairs == [
        Pair('"Hamlet" is by whom?', 'Who wrote "Hamlet"?', 1),
        Pair('"Why not?', "What for?", 0),
        Pair("How old are you?", "What is your age?", 1),
    ]


def test_a_pair_labelled_both_ways_is_kept_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A site's export where a moderator reversed a decision: the same two questions, in either
    # order and case, as duplicates and not. Before, nothing said so.
    rows = "question1,question2,is_duplicate\nHow old are you?,What is your age?,1\nWho?,Why?,0\n"
    rows += "what is your  age?,How old are you?,0\nWho?,Why?,0\nHow old are you?,What is your age?,1\n"
    (tmp_path / "site.csv").write_text(rows, encoding="utf-8")
    with caplog.at_level("INFO", logger="model.training.data"):
        pairs, report = load_pairs(tmp_path / "site.csv")
    assert len(pairs) == 5  # kept as they are: which decision stands is the site's to say
    assert report.conflicting == [Pair("How old are you?", "What is your age?", 1)]
    assert report.summary().endswith(
        "5 pairs, 0 skipped; 1 pairs of questions labelled both ways, kept as they are "
        "(the first: 'How old are you?' / 'What is your age?')"
    )
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert conflicting([Pair("a?", "b?", 1), Pair("b?", "c?", 0), Pair("A?", "B?", 1)]) == []


def test_a_row_past_the_csv_field_limit_is_skipped_and_the_rest_read(tmp_path: Path) -> None:
    rows = f'question1,question2,is_duplicate\nA?,B?,1\n"{"x" * 200_000}",C?,0\nD?,E?,0\n'
    (tmp_path / "big.csv").write_text(rows, encoding="utf-8")
    pairs, report = load_pairs(tmp_path / "big.csv")
    assert pairs == [Pair("A?", "B?", 1), Pair("D?", "E?", 0)]
    assert report.skipped == {"rows csv cannot read (a field past its limit: a quote left open?)": 1}


def test_a_header_without_the_label_or_with_two_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "scores.tsv").write_text("sentence1\tsentence2\tscore\nA?\tB?\t4.5\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"the header names no column for the label \(is_duplicate, duplicate, label, quality\)"
    ):
        load_pairs(tmp_path / "scores.tsv")
    (tmp_path / "two.csv").write_text("question1,question2,label,is_duplicate\nA?,B?,1,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="the header names 2 columns for the label"):
        load_pairs(tmp_path / "two.csv")


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("empty.tsv", b"", " is empty: no header, no pair"),
        ("empty.tsv.gz", gzip.compress(b""), " is empty: no header, no pair"),
        ("notes.csv", b"hello world\nA?,B?\n", ": cannot tell the format of a file starting with 'hello world'"),
    ],
    ids=["empty", "empty-gzip", "unknown"],
)
def test_a_file_of_no_known_layout_is_refused_naming_it(tmp_path: Path, name: str, content: bytes, says: str) -> None:
    # Before: "cannot tell the format of a file starting with ''", naming no file among `dupq train
    # --train`'s several.
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / name))}{says}"):
        load_pairs(tmp_path / name)


def test_detect_format_rejects_unknown_text() -> None:
    with pytest.raises(ValueError, match="cannot tell the format of a file starting with 'hello world': not the BiMPM"):
        detect_format("hello world")


@pytest.mark.parametrize("name", ["out.tsv", "out.tsv.gz", "out.tsv.GZ"])
def test_write_bimpm_round_trip(tmp_path: Path, name: str) -> None:
    # A name the reader takes as gzip is written as gzip: out.tsv.GZ was written as plain text.
    pairs = [Pair("a b?", "c?", 1), Pair("d?", "e f?", 0)]
    write_bimpm(pairs, tmp_path / name)
    assert load_pairs(tmp_path / name)[0] == pairs


def test_a_pair_file_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv.gz"
    before = [Pair("How old are you?", "What is your age?", 1)]
    write_bimpm(before, path)

    def stopped() -> Iterator[Pair]:
        yield Pair("a b?", "c?", 1)
        raise KeyboardInterrupt  # Ctrl-C halfway: the old file stays, not one pair of the new

    with pytest.raises(KeyboardInterrupt):
        write_bimpm(stopped(), path)  # type: ignore[arg-type]
    assert load_pairs(path)[0] == before
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.tsv.gz"]


def test_a_pair_file_that_is_not_utf_8_is_refused_naming_the_line(tmp_path: Path) -> None:
    # Read with its bad bytes as U+FFFD, a file that Excel saved in Windows-1252 trained on "Caf�".
    rows = "question1\tquestion2\tis_duplicate\nHow old are you?\tWhat is your age?\t1\n"
    rows += "Café hours?\tWhen does it open?\t1\n"
    (tmp_path / "excel.tsv").write_bytes(rows.encode("cp1252"))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'excel.tsv'} is not UTF-8 text (line 3: byte 0xe9")):
        load_pairs(tmp_path / "excel.tsv")
    (tmp_path / "unicode.tsv").write_bytes(rows.encode("utf-16"))  # Excel's "Unicode Text"
    assert load_pairs(tmp_path / "unicode.tsv")[0][1] == Pair("Café hours?", "When does it open?", 1)


def test_a_pair_file_through_a_pipe_is_read_whole() -> None:
    # `dupq train --train <(zcat ...)`: each of the three readings opened the pipe again and went on
    # where the one before stopped, so the first 8 KiB of pairs were lost without a word.
    rows = "".join(f"1\tHow old is person {i}?\tWhat is the age of person {i}?\t{i}\n" for i in range(3000))
    read, write = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write, rows.encode()), os.close(write)))
    writer.start()
    try:
        pairs, report = load_pairs(f"/dev/fd/{read}")
        # What config.json records of a training file: read again, the pipe gave b"" and its sha256.
        assert report.sha256() == hashlib.sha256(rows.encode()).hexdigest()
    finally:
        os.close(read)  # a writer still blocked on a full pipe gets EPIPE and ends
        writer.join()
    assert len(pairs) == 3000 and not report.skipped
    assert pairs[0] == Pair("How old is person 0?", "What is the age of person 0?", 1)


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path: Path) -> None:
    rows = "1\tHow old are you?\tWhat is your age?\t0\n0\tWhere are you from?\tWhere are you going?\t1\n"
    (tmp_path / "pairs.tsv").write_text(rows, encoding="utf-8-sig")
    pairs, report = load_pairs(tmp_path / "pairs.tsv")
    assert report.format == "bimpm" and report.n_skipped == 0
    assert pairs == [
        Pair("How old are you?", "What is your age?", 1),
        Pair("Where are you from?", "Where are you going?", 0),
    ]


def test_validation_pairs_of_one_label_are_refused_naming_the_label_they_lack(tmp_path: Path) -> None:
    pairs = [Pair("How old are you?", "What is your age?", 1), Pair("Where are you from?", "Where do you live?", 1)]
    write_bimpm(pairs, tmp_path / "duplicates.tsv")
    with pytest.raises(ValueError, match=r"all 2 validation pairs have the same label; .* needs non-duplicates"):
        load_validation_pairs(tmp_path / "duplicates.tsv")
    write_bimpm([Pair(p.question1, p.question2, 0) for p in pairs], tmp_path / "others.tsv")
    with pytest.raises(ValueError, match=r"needs duplicates \(label 1\) too"):
        load_validation_pairs(tmp_path / "others.tsv")
    write_bimpm([pairs[0], Pair("Where are you from?", "Where are you going?", 0)], tmp_path / "both.tsv")
    assert [p.label for p in load_validation_pairs(tmp_path / "both.tsv")[0]] == [1, 0]
    (tmp_path / "header.tsv").write_text("question1\tquestion2\tis_duplicate\n")
    with pytest.raises(ValueError, match=r"^no pairs to choose the threshold on: .*header\.tsv \(tsv\): 0 pairs"):
        load_validation_pairs(tmp_path / "header.tsv")
