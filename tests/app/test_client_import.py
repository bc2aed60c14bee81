"""The Python client and ``dupq import`` against a real server over real HTTP; ``dupq groups`` and
``dupq feedback`` on its data directory while it runs."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import app.client
from app.cli import main
from app.client import Client, DupqError
from app.importer import stable_id

from ..conftest import CORPUS
from .server import Server

KEY = "import-key"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tiny_model_dir, tmp_path_factory.mktemp("import") / "data", DUPQ_API_KEY=KEY).start()
    yield running
    running.stop()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.url, api_key=KEY) as c:
        yield c


def test_the_client_speaks_every_route(client: Client) -> None:
    added = client.add_questions(
        [
            {"id": "c1", "text": CORPUS[0], "namespace": "cl", "metadata": {"tag": "a"}},
            {"text": CORPUS[1], "namespace": "cl"},
        ]
    )
    assert added["ids"][0] == "c1"
    assert client.get_question("c1") == {"id": "c1", "text": CORPUS[0], "namespace": "cl", "metadata": {"tag": "a"}}
    assert client.similarity(CORPUS[0], CORPUS[0])["is_duplicate"]
    assert len(client.similarity_batch([(CORPUS[0], CORPUS[1])])["results"]) == 1
    assert len(client.embed([CORPUS[0]])[0]) == client.info()["dim"]
    assert client.duplicates(CORPUS[0], k=1, namespace="cl")["matches"][0]["id"] == "c1"
    assert client.duplicates(CORPUS[0], namespace="cl", filter={"tag": "b"})["matches"] == []
    assert (
        client.duplicates_batch([CORPUS[0]], namespace="cl", exclude_ids=["c1"])["results"][0]["matches"][0]["id"]
        != "c1"
    )
    assert [m["id"] for m in client.question_duplicates("c1")["matches"]] == [added["ids"][1]]
    assert [q["id"] for q in client.iter_questions("cl", limit=1)] == added["ids"]
    assert {q["id"] for q in client.export("cl")} == set(added["ids"])
    assert client.groups("cl", threshold=-1.0)[0]["size"] == 2
    assert client.feedback([{"id1": "c1", "question2": "What?", "is_duplicate": False}]) == 1
    assert client.delete_questions(ids=["c1"]) == 1
    with pytest.raises(DupqError) as err:
        client.get_question("c1")
    assert err.value.status == 404 and "c1" in str(err.value.detail)
    assert client.delete_questions(namespace="cl") == 1


def test_a_wrong_key_is_an_error_with_its_status(server: Server) -> None:
    with Client(server.url, api_key="wrong") as wrong, pytest.raises(DupqError) as err:
        wrong.info()
    assert err.value.status == 401


def test_import_reads_each_format_skips_bad_rows_and_is_idempotent(
    server: Server, client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        "plain.txt": f"{CORPUS[0]}\n\n{CORPUS[1]}\n   \nt1\t{CORPUS[2]}\nbad id\t{CORPUS[3]}\nempty\t\n",
        "rows.csv": (
            f'id,text,status,namespace\nv1,"{CORPUS[4]}",open,\nv2,"{CORPUS[5]}",,other\n,,open,\nv3,"x",1,2,3\n'
        ),
        "rows.jsonl": "\n".join(
            [
                json.dumps({"id": "j1", "text": CORPUS[6], "metadata": {"n": 1}}),
                json.dumps({"text": CORPUS[7], "namespace": "other"}),
                "{not json",
                json.dumps(["a list"]),
                json.dumps({"id": "j3", "text": CORPUS[8], "metadata": {"deep": {"x": 1}}}),
            ]
        ),
    }
    expected = {"plain.txt": (3, [6, 7]), "rows.csv": (2, [4, 5]), "rows.jsonl": (2, [3, 4, 5])}
    for name, content in files.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        for _ in range(2):  # the second run replaces, never adds
            argv = ["import", str(path), "--url", server.url, "--api-key", KEY, "--namespace", "imp", "--batch", "2"]
            assert main(argv) == 0
            out, err = capsys.readouterr()
            result = json.loads(out)
            imported, skipped_lines = expected[name]
            assert result["imported"] == imported and result["skipped"] == len(skipped_lines), (name, err)
            for line in skipped_lines:
                assert f"line {line}:" in err, (name, err)
    listed = {q["id"]: q for q in client.iter_questions("imp")}
    assert listed[stable_id("imp", CORPUS[0])]["text"] == CORPUS[0] and listed["t1"]["text"] == CORPUS[2]
    assert listed["v1"]["metadata"] == {"status": "open"} and listed["j1"]["metadata"] == {"n": 1}
    assert len(listed) == 3 + 1 + 1  # plain.txt 3, rows.csv 1 (v2 went to "other"), rows.jsonl 1
    other = {q["id"]: q for q in client.iter_questions("other")}
    assert set(other) == {"v2", stable_id("other", CORPUS[7])}


def test_import_reports_a_file_that_is_not_utf8_and_a_csv_without_text(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "latin.txt").write_bytes("Qu'est-ce que c'est \xe9t\xe9 ?\n".encode("latin-1"))
    (tmp_path / "no-text.csv").write_text("id,question\n1,What?\n")
    for name, message in (("latin.txt", "is not UTF-8"), ("no-text.csv", "must name a 'text' column")):
        assert main(["import", str(tmp_path / name), "--url", server.url, "--api-key", KEY]) == 1
        assert message in capsys.readouterr().err


def test_import_reports_a_refusing_or_an_unreachable_service_in_one_line(
    server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "q.txt").write_text(f"{CORPUS[0]}\n")
    assert main(["import", str(tmp_path / "q.txt"), "--url", server.url, "--api-key", "wrong"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"dupq import: error: the service at {server.url} answered 401: missing or wrong API key" in err
    monkeypatch.setattr(app.client.time, "sleep", lambda seconds: None)  # the client's 8 retries, at once
    caplog.set_level(logging.INFO, logger="app.client")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{free.getsockname()[1]}"  # bound, not listening: refused
        assert main(["import", str(tmp_path / "q.txt"), "--url", nobody]) == 1
    assert f"dupq import: error: cannot reach the service at {nobody}: " in capsys.readouterr().err
    assert "GET /info: no connection" in caplog.text and "retry 8 of 8" in caplog.text  # said while it waits


def test_import_reads_files_as_spreadsheets_save_them(
    server: Server, client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {  # each with the byte order mark Excel writes before a CSV (UTF-8 with BOM)
        "bom.csv": f'id,text,status\nb1,"{CORPUS[9]}",open\n',
        "bom.txt": f"b2\t{CORPUS[10]}\n",
        "bom.jsonl": json.dumps({"id": "b3", "text": CORPUS[11]}) + "\n",
        # where the decimal mark is a comma, spreadsheets separate CSV fields with semicolons
        "semicolons.csv": f'status;ID;Text\nopen;b4;"{CORPUS[0]}, again"\n',
        # a table exported with its header, separated by tabs
        "table.tsv": f"id\ttext\tstatus\nb5\t{CORPUS[1]}, again\topen\n",
        # the same, its fields written as they are (PostgreSQL's text mode): not CSV's quotes
        "unquoted.tsv": f'id\ttext\tstatus\nb6\t"{CORPUS[2]}" and more\topen\n',
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8-sig")
        assert main(["import", str(tmp_path / name), "--url", server.url, "--api-key", KEY, "--namespace", "bom"]) == 0
        assert json.loads(capsys.readouterr().out) == {"imported": 1, "skipped": 0, "batches": 1}, name
    listed = {q["id"]: q for q in client.iter_questions("bom")}
    texts = {qid: q["text"] for qid, q in listed.items()}
    assert texts == {
        "b1": CORPUS[9],
        "b2": CORPUS[10],
        "b3": CORPUS[11],
        "b4": f"{CORPUS[0]}, again",
        "b5": f"{CORPUS[1]}, again",
        "b6": f'"{CORPUS[2]}" and more',
    }
    assert all(listed[qid]["metadata"] == {"status": "open"} for qid in ("b1", "b4", "b5", "b6"))


def test_import_skips_a_csv_row_past_the_field_limit_and_goes_on(
    server: Server, client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.csv"
    path.write_text(f'id,text\nf1,"{CORPUS[2]}"\nf2,"{"x" * 200_000}"\nf3,"{CORPUS[3]}"\n', encoding="utf-8")
    assert main(["import", str(path), "--url", server.url, "--api-key", KEY, "--namespace", "big"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"imported": 2, "skipped": 1, "batches": 1}
    assert "line 3: not readable as CSV: field larger than field limit (131072)" in err
    assert sorted(q["id"] for q in client.iter_questions("big")) == ["f1", "f3"]


def test_groups_and_feedback_commands_read_the_store_of_a_running_service(
    server: Server, client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client.add_questions([{"id": f"g{i}", "text": text, "namespace": "grp"} for i, text in enumerate(CORPUS)])
    client.feedback([{"question1": "A, b?", "question2": 'Say "c"\tnow?', "is_duplicate": True}])
    out = tmp_path / "groups.jsonl"
    argv = ["groups", "--data-dir", str(server.data_dir), "--model-dir", str(server.model_dir), "--namespace", "grp"]
    assert main([*argv, "--threshold", "-1", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["questions"] == len(CORPUS) and summary["groups"] == 1
    assert json.loads(out.read_text())["size"] == len(CORPUS)
    via_http = client.groups("grp", threshold=0.5)
    assert main([*argv, "--threshold", "0.5", "--out", str(out)]) == 0
    capsys.readouterr()
    assert [json.loads(line) for line in out.read_text().splitlines()] == via_http
    pairs = tmp_path / "feedback.tsv"
    fb = ["feedback", "--data-dir", str(server.data_dir), "--model-dir", str(server.model_dir), "--out", str(pairs)]
    assert main(fb) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] >= 1
    from model.training.data import load_pairs  # the file is what `dupq train` reads

    loaded, _ = load_pairs(pairs)
    # The training loader reads white space inside a question as one space.
    assert any(p.question1 == "A, b?" and p.question2 == 'Say "c" now?' and p.label == 1 for p in loaded)


def test_the_openai_client_gets_the_embeddings_of_embed(server: Server, client: Client) -> None:
    import openai

    remote = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY)
    # The client asks for base64 unless told otherwise, and decodes it itself.
    for kwargs in ({}, {"encoding_format": "float"}):
        answer = remote.embeddings.create(input=CORPUS[:3], model="dupq", **kwargs)
        got = np.array([d.embedding for d in answer.data])
        np.testing.assert_allclose(got, np.array(client.embed(CORPUS[:3])), atol=1e-6)
        assert answer.usage.prompt_tokens > 0
