"""Parallel adds, deletes and searches: no crash, no half-applied write seen, and the final state
equals the serial result."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi.testclient import TestClient

WORDS = [
    "how",
    "what",
    "why",
    "where",
    "learn",
    "python",
    "rust",
    "age",
    "sky",
    "blue",
    "weight",
    "lose",
    "sleep",
    "night",
    "best",
    "way",
    "fast",
    "city",
]


def _question(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "?"


def test_parallel_writes_and_searches_end_in_the_serial_state(client: TestClient) -> None:
    rng = random.Random(0)
    # Each worker owns its ids, so the serial result is well defined whatever the interleaving.
    plans = []
    for w in range(8):
        ops = []
        for i in range(15):
            qid = f"w{w}-{i % 6}"
            ops.append(("delete", qid, "") if rng.random() < 0.25 else ("add", qid, _question(rng)))
        plans.append(ops)
    expected: dict[str, str] = {}
    for ops in plans:
        for op, qid, text in ops:
            if op == "add":
                expected[qid] = text
            else:
                expected.pop(qid, None)

    errors: list[str] = []

    def writer(ops: list[tuple[str, str, str]]) -> None:
        for op, qid, text in ops:
            if op == "add":
                r = client.post("/questions", json={"questions": [{"id": qid, "text": text}]})
                ok = r.status_code == 201
            else:
                r = client.delete(f"/questions/{qid}")
                ok = r.status_code in (204, 404)
            if not ok:
                errors.append(f"{op} {qid}: {r.status_code} {r.text}")

    def searcher(seed: int) -> None:
        srng = random.Random(seed)
        for _ in range(20):
            r = client.post("/duplicates", json={"question": _question(srng), "k": 10})
            if r.status_code != 200:
                errors.append(f"search: {r.status_code} {r.text}")
                continue
            for match in r.json()["matches"]:
                if not match["id"].startswith("w"):
                    errors.append(f"unknown id {match['id']}")

    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = [pool.submit(writer, ops) for ops in plans] + [pool.submit(searcher, s) for s in range(4)]
        for f in futures:
            f.result()
    assert errors == []
    assert client.get("/ready").json()["index_size"] == len(expected)
    for qid, text in expected.items():
        assert client.get(f"/questions/{qid}").json()["text"] == text
    # Every live question is found as its own best match; no deleted one is ever found.
    body = client.post("/duplicates/batch", json={"questions": list(expected.values())[:8], "k": 100}).json()
    for text, result in zip(list(expected.values())[:8], body["results"], strict=True):
        found = {m["id"] for m in result["matches"]}
        assert found <= set(expected)
        assert result["matches"][0]["question"] == text or np.isclose(
            result["matches"][0]["similarity"], 1.0, atol=1e-5
        )
