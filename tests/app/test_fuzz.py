"""Schemathesis against the app's own OpenAPI over real HTTP: every check it has, positive and negative."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .server import Server


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = Server(tiny_model_dir, tmp_path / "data", DUPQ_MAX_BATCH="16").start()
    try:
        server.request("POST", "/questions", {"questions": [{"id": "seed-1", "text": "How old are you?"}]})
        st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
        result = subprocess.run(
            [
                st,
                "run",
                f"{server.url}/openapi.json",
                # Every check: no 5xx, answers that keep to the schema, schema-valid requests
                # accepted and invalid ones refused, Allow headers, deletes that stick.
                "--checks",
                "all",
                "--mode",
                "all",
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--request-timeout",
                "10",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    finally:
        server.stop()
