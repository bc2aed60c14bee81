"""``dupq import``: questions from a file into a running service, in batches, over HTTP.

The file is read by :mod:`app.question_file` (text, TSV or CSV with a header, JSONL; its
docstring has the rules), a line at a time. A row without an id gets one made from its namespace
and text (:func:`~app.question_file.stable_id`), so a re-run after an interruption replaces what
was already sent instead of adding it twice. Each row is checked as ``POST /questions`` checks it,
with the service's own limits (``/info``); a row that fails is skipped and reported with its line
number, and never stops the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from app.client import Client, DupqError
from app.question_file import Format, question_rows, stable_id
from app.schemas import Limits


@dataclass
class ImportReport:
    imported: int = 0
    batches: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def summary(self, shown: int = 10) -> str:
        lines = [f"imported {self.imported} questions in {self.batches} batches; skipped {len(self.skipped)} rows"]
        lines += [f"  line {n}: {why}" for n, why in self.skipped[:shown]]
        if len(self.skipped) > shown:
            lines.append(f"  and {len(self.skipped) - shown} more")
        return "\n".join(lines)


def import_file(
    client: Client,
    path: str | Path,
    namespace: str | None = None,
    fmt: Format | None = None,
    batch: int = 256,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Post the questions of a file in batches of at most ``batch`` items (and the service's
    ``max_batch`` and body limit). A batch the service refuses whole is sent again one item at a
    time, so that only its bad rows are skipped."""
    info = client.info()
    limits = Limits(info["max_question_chars"], info["max_batch"])
    size = min(batch, limits.max_batch)
    max_bytes = int(info.get("max_body_bytes", 1 << 20)) - 1024
    report = ImportReport()
    pending: list[tuple[int, dict[str, Any]]] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        if not pending:
            return
        try:
            client.add_questions([item for _, item in pending])
            report.imported += len(pending)
            report.batches += 1
        except DupqError as err:
            if err.status != 422:
                raise
            for line, item in pending:
                try:
                    client.add_questions([item])
                    report.imported += 1
                    report.batches += 1
                except DupqError as one:
                    if one.status != 422:
                        raise
                    report.skipped.append((line, f"refused by the service: {one.detail}"))
        if progress is not None:
            progress(len(pending))
        pending, pending_bytes = [], 0

    for line, question, why in question_rows(path, limits, fmt, namespace):
        if question is None:
            report.skipped.append((line, why))
            continue
        item: dict[str, Any] = {
            "id": question.id or stable_id(question.namespace, question.text),
            "text": question.text,
            "namespace": question.namespace,
        }
        if question.metadata:
            item["metadata"] = question.metadata
        item_bytes = len(orjson.dumps(item)) + 1
        if pending and (len(pending) >= size or pending_bytes + item_bytes > max_bytes):
            flush()
        pending.append((line, item))
        pending_bytes += item_bytes
    flush()
    return report
