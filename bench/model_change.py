"""A model change, with and without ``dupq reembed`` first: how long the service is out of service.

    python bench/model_change.py --model build/minilm [--questions 20000] [--edits 200]

A data directory of QUESTIONS questions (Quora's training questions, then made-up ones, as in
bench/service.py) is filled by ``dupq index`` with the bundled model and copied twice. On each copy
``dupq serve`` runs the bundled model and takes EDITS new questions over HTTP, as a site does while
the change is prepared; on the second copy ``dupq reembed --model-dir MODEL`` runs beside it first.
Then the service is stopped and ``dupq serve`` started on MODEL: the seconds from its start to a 200
of ``/ready`` are the time the change keeps the service out (503), of which its log says how long
the re-embedding and the index (rebuilt, or the one ``dupq reembed`` staged loaded and brought level
with the store) took. Both copies run the same steps in the same session, so their times compare.
While ``dupq reembed`` runs (``--threads``), and then for as long again without it, one client sends
the old service ``/duplicates`` requests one after another (200 Quora questions kept out of the
store): their rate and latency say what staging costs the service it runs beside.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service import distinct_questions, fill, post, wait_ready  # noqa: E402


def serve(data_dir: Path, model: Path | None, port: int, log: Path | None = None) -> subprocess.Popen[bytes]:
    """``dupq serve`` on ``data_dir``; with ``log``, its log lines (JSON, INFO) go there."""
    level = "INFO" if log else "WARNING"
    env = {**os.environ, "DUPQ_DATA_DIR": str(data_dir), "DUPQ_LOG_LEVEL": level, "DUPQ_LOG_JSON": "true"}
    env["DUPQ_SEED_FILE"] = ""
    env.pop("DUPQ_MODEL_DIR", None)
    if model is not None:
        env["DUPQ_MODEL_DIR"] = str(model)
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    stderr = open(log, "wb") if log else None  # noqa: SIM115 (the child holds it; closed on exit)
    try:
        return subprocess.Popen(command, env=env, cwd=ROOT, stderr=stderr)
    finally:
        if stderr:
            stderr.close()


def seconds_in_log(log: Path) -> dict[str, float]:
    """How long the start-up's re-embedding and its index (rebuilt, or the staged one brought level
    with the store) took, from the service's log."""
    found: dict[str, float] = {}
    for line in log.read_text().splitlines():
        message = json.loads(line).get("msg", "") if line.startswith("{") else ""
        for name, pattern in (
            ("reembedding_s", r"^re-embedded \d+ questions in ([\d.]+) s"),
            ("index_rebuild_s", r"^index rebuilt: \d+ questions in ([\d.]+) s"),
            ("staged_index_s", r"^index loaded from \S+: .* in ([\d.]+) s"),
        ):
            if match := re.match(pattern, message):
                found[name] = float(match.group(1))
    return found


class Searches:
    """One client sending ``/duplicates`` requests one after another, from a thread, until
    stopped: the latencies and the rate the service answered at meanwhile."""

    def __init__(self, url: str, queries: list[str]) -> None:
        self.url, self.queries = url, queries
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            started = time.perf_counter()
            post(self.url + "/duplicates", {"question": self.queries[i % len(self.queries)], "k": 10})
            self.latencies.append(time.perf_counter() - started)
            i += 1

    def __enter__(self) -> Searches:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.monotonic() - self._started

    def figures(self) -> dict[str, float]:
        ms = sorted(1000 * x for x in self.latencies)
        return {
            "requests_per_s": round(len(ms) / self.seconds, 1),
            "p50_ms": round(ms[len(ms) // 2], 2),
            "p99_ms": round(ms[int(len(ms) * 0.99)], 2),
        }


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(120)


def dupq(*args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, check=True, stdout=subprocess.PIPE)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def change(
    data_dir: Path, model: Path, edits: list[str], port: int, stage: bool, threads: int, queries: list[str]
) -> dict[str, object]:
    """The old model serves and takes the edits (staging the new model's vectors and index first,
    if ``stage``, while one client searches, and as long again with nothing beside it); then the
    new model starts: the seconds until it is ready."""
    url = f"http://127.0.0.1:{port}"
    result: dict[str, object] = {}
    old = serve(data_dir, None, port)
    try:
        wait_ready(url)
        if stage:
            started = time.monotonic()
            flags = ["--data-dir", str(data_dir), "--model-dir", str(model), "--threads", str(threads)]
            with Searches(url, queries) as during:
                summary = dupq("reembed", *flags)
            result["reembed_s"] = round(time.monotonic() - started, 1)
            with Searches(url, queries) as alone:  # the same service, as long again, with nothing beside it
                time.sleep(during.seconds)
            result["searches_alone"], result["searches_during_reembed"] = alone.figures(), during.figures()
            result["staged_file_mib"] = round(Path(str(summary["staged_in"])).stat().st_size / 2**20, 1)
            result["staged_index_mib"] = round(Path(str(summary["index"])).stat().st_size / 2**20, 1)
        for start in range(0, len(edits), 256):
            questions = [{"id": f"edit-{start + i}", "text": t} for i, t in enumerate(edits[start : start + 256])]
            post(url + "/questions", {"questions": questions})
    finally:
        stop(old)
    started = time.monotonic()
    log = data_dir / "start.log"
    new = serve(data_dir, model, port, log)
    try:
        ready = wait_ready(url)
        result["ready_s"] = round(time.monotonic() - started, 1)
        result["index_size"] = int(ready["index_size"])
        result.update(seconds_in_log(log))
        with urllib.request.urlopen(url + "/info", timeout=5) as response:
            assert json.loads(response.read())["version"] == json.loads((model / "config.json").read_text())["version"]
    finally:
        stop(new)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the model directory to change to")
    parser.add_argument("--questions", type=int, default=20_000)
    parser.add_argument("--edits", type=int, default=200, help="questions added after dupq reembed ran")
    parser.add_argument("--threads", type=int, default=0, help="dupq reembed's threads (default: every CPU)")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--pairs", type=Path, default=ROOT.parent / "shared/data/qqp/train.tsv.gz")
    args = parser.parse_args(argv)

    real = distinct_questions(args.pairs, args.questions + args.edits + 200)
    queries, texts = real[:200], fill(real[200:], args.questions + args.edits)
    stored, edits = texts[: args.questions], texts[args.questions :]
    work = Path(tempfile.mkdtemp(prefix="dupq-model-change-"))
    try:
        source = work / "questions.jsonl"
        source.write_text("".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(stored)))
        started = time.monotonic()
        env = {**os.environ, "DUPQ_LOG_LEVEL": "WARNING"}
        env.pop("DUPQ_MODEL_DIR", None)
        subprocess.run(
            [sys.executable, "-m", "app.cli", "index", str(source), "--data-dir", str(work / "base")],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"indexed {len(stored):,} questions in {time.monotonic() - started:.0f} s", file=sys.stderr)
        results: dict[str, object] = {"questions": len(stored), "edits": len(edits), "model": str(args.model)}
        for name, stage in (("without", False), ("with_reembed", True)):
            shutil.copytree(work / "base", work / name)
            results[name] = change(work / name, args.model, edits, args.port, stage, args.threads, queries)
            print(f"{name}: {results[name]}", file=sys.stderr)
        print(json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
