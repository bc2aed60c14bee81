"""Schemathesis against the app's own OpenAPI over real HTTP: every check it has, positive and negative."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .server import Server


@pytest.mark.slow
@pytest.mark.parametrize("keyed", [False, True], ids=["sqlite, open", "postgresql, with a key"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    tiny_model_dir: Path, tmp_path: Path, keyed: bool, request: pytest.FixtureRequest
) -> None:
    # Once on the data directory's SQLite file with no key; once on PostgreSQL with a key, which
    # the document then asks for everywhere but the open paths (a NUL in a question, which
    # PostgreSQL cannot store, was a 500 there and only there).
    env = {"DUPQ_MAX_BATCH": "16"}
    auth: list[str] = []
    if keyed:
        env["DUPQ_STORE_URL"] = request.getfixturevalue("postgres").new_database()
        env["DUPQ_API_KEY"] = "fuzz-key"
        auth = ["--header", "Authorization: Bearer fuzz-key"]
    server = Server(tiny_model_dir, tmp_path / "data", **env).start()
    try:
        headers = {"Authorization": "Bearer fuzz-key"} if keyed else None
        seed = {"questions": [{"id": "seed-1", "text": "How old are you?"}]}
        assert server.request("POST", "/questions", seed, headers=headers)[0] == 201
        st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
        # Every check, but for two requests that the schema cannot tell apart from good ones: a
        # made-up cursor is any string, but a 422 (an unknown cursor) by the contract; and
        # /questions/delete is also the path of the question whose id is "delete", so its Allow
        # header rightly names GET and DELETE too.
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            "[[operations]]\n"
            'include-name = "GET /questions"\n'
            "checks.positive_data_acceptance.enabled = false\n"
            "[[operations]]\n"
            'include-name = "POST /questions/delete"\n'
            "checks.allow_header_conformance.enabled = false\n"
        )
        result = subprocess.run(
            [
                st,
                "--config-file",
                str(config),
                "run",
                f"{server.url}/openapi.json",
                "--mode",
                "all",
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--request-timeout",
                "10",
                "--no-color",
                *auth,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    finally:
        server.stop()
