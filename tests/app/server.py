"""A real ``dupq serve`` in a subprocess, for tests over real HTTP.

The process cannot import dupq's training code, PyTorch or any other package of the train extra
(``sys.modules`` holds None under their names, so importing one raises ImportError): every test
over real HTTP also checks that serving needs none of them. ``DUPQ_TEST_PYTHON`` names another interpreter to serve
with, such as that of a virtual environment made with a plain ``pip install .`` (``make
serving-check``).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TRAINING_ONLY = ("model.training", "torch", "onnx", "safetensors", "sentence_transformers", "sklearn", "matplotlib")
BLOCKED_SERVE = (
    f"import sys; sys.modules.update(dict.fromkeys({TRAINING_ONLY!r})); "
    "from app.cli import main; sys.exit(main(sys.argv[1:]))"
)


class Server:
    def __init__(self, model_dir: Path, data_dir: Path, port: int | None = None, **env: str) -> None:
        self.model_dir, self.data_dir = model_dir, data_dir
        self.port = port or free_port()
        self.env = {**os.environ, "DUPQ_THREADS": "1", "DUPQ_LOG_LEVEL": "WARNING", **env}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        argv = [
            os.environ.get("DUPQ_TEST_PYTHON") or sys.executable,
            "-c",
            BLOCKED_SERVE,
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--model-dir",
            str(self.model_dir),
        ]
        # Not run from the checkout, so that the interpreter serves the dupq installed in it.
        cwd = self.data_dir.parent
        self.process = subprocess.Popen(argv, env=self.env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited: {self.process.stderr.read().decode() if self.process.stderr else ''}"
                )
            try:
                if self.request("GET", "/ready")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("server not ready")

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 10.0, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """Status and JSON answer (None when empty) of one request; ``body`` is sent as JSON, or as
        it is when it is bytes. An answer the server's death cuts off raises ``ConnectionError``,
        as a refused or reset connection does (an ``OSError``). ``http.client`` raises
        ``IncompleteRead`` when the body stops short: the kill test's writer did not catch it, and
        so counted a delete the kill had answered in part (done, its answer cut) as not done."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"content-type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                raw = response.read()
                return response.status, json.loads(
                    raw
                ) if raw and response.headers.get_content_subtype() == "json" else raw or None
        except urllib.error.HTTPError as err:
            try:
                raw = err.read()
            except http.client.HTTPException as cut:
                raise ConnectionError(f"the answer to {method} {path} was cut off: {cut!r}") from cut
            return err.code, json.loads(raw) if raw else None
        except http.client.HTTPException as cut:  # IncompleteRead, BadStatusLine: the server died mid-answer
            raise ConnectionError(f"the answer to {method} {path} was cut off: {cut!r}") from cut

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
