"""A data directory of ``bench/ann.py``'s collection, for ``dupq serve`` at sizes that would take
``dupq index`` hours on this machine (ten million: about 1.5 hours, encoding and indexing).

    python bench/ann.py --size 10000000 --snapshot build/ann-10m.faiss
    python bench/synthetic_store.py build/ann-10m.faiss --data-dir build/bench-data/joined-10000000
    python bench/service.py --prepared build/bench-data/joined-10000000 --routes /duplicates

The store holds the collection's vectors, read or made again block by block as ``bench/ann.py``
made them (same ``--collection``, model, seed and noise), under keys 0 to N-1 as the index does.
In the ``joined`` collection every question is stored with its own text (real, or two real ones
joined), so the store is what ``dupq index`` would have made of those texts. In the ``noisy`` one
the real questions keep their text and a noisy copy of question i is stored as that question's
text with " (copy N)" after it, so a match reads as the question it is a copy of; its vectors are
not encodings of the stored texts, so it measures the service's search path, its memory and its
start-up, not its quality. The HNSW snapshot that ``bench/ann.py`` wrote becomes the data
directory's snapshot (hard-linked, not copied), with the metadata a service writes: the served
model's tag, the store's generation, one namespace (``default``). The service then starts from it
as from its own snapshot.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.store import QuestionStore  # noqa: E402
from bench.ann import Collection, distinct, make_collection  # noqa: E402
from bench.service import fill  # noqa: E402
from model.encoder import load_encoder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("snapshot", type=Path, help="the snapshot bench/ann.py --snapshot wrote")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default=str(ROOT / "models" / "dupq-qqp"))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "qqp")
    parser.add_argument("--collection", choices=["joined", "noisy"], default="joined", help="as bench/ann.py was given")
    parser.add_argument("--noise", type=float, default=0.04, help="as bench/ann.py was given")
    parser.add_argument("--seed", type=int, default=0, help="as bench/ann.py was given")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    ann_meta = json.loads(args.snapshot.with_suffix(args.snapshot.suffix + ".json").read_text())
    encoder = load_encoder(args.model, threads=args.threads)
    texts = distinct(args.data / "train.tsv.gz")
    base = encoder.encode(texts)
    size = ann_meta["max_key"] + 1
    collection = make_collection(args.collection, encoder, texts, base, size, args.noise, args.seed)
    if args.collection == "joined":
        texts = fill(texts, size, args.seed)  # the texts bench/ann.py encoded, in the same order
    args.data_dir.mkdir(parents=True, exist_ok=False)
    path = args.data_dir / "questions.sqlite3"
    QuestionStore(path, encoder.dim).close()  # the schema, as the service makes it
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")  # a benchmark's data, rebuilt if lost
    started, now = time.perf_counter(), time.time()
    for start in range(0, size, Collection.BLOCK):
        vectors, sources = collection.block(start)
        rows = (
            (
                start + i,
                f"bench-{start + i}",
                texts[src] if start + i < len(texts) else f"{texts[src]} (copy {start + i})",  # joined: all real
                vector.tobytes(),
                encoder.version,
                now,
                "default",
                "{}",
                start + i,
            )
            for i, (vector, src) in enumerate(zip(vectors, sources, strict=True))
        )
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO questions (key, id, text, embedding, model_version, updated, namespace, metadata, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.execute("UPDATE meta SET value = '1' WHERE name = 'generation'")
        db.execute("COMMIT")
        if (start + Collection.BLOCK) % 1_000_000 == 0:
            print(f"  {start + Collection.BLOCK:,} rows after {time.perf_counter() - started:.0f} s", flush=True)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(f"stored {size:,} questions in {time.perf_counter() - started:.0f} s", flush=True)
    os.link(args.snapshot, args.data_dir / "index.faiss")
    entry = {**ann_meta, "name": "default", "offset": 0, "length": args.snapshot.stat().st_size}
    meta = {
        "format": ann_meta["format"],
        "kind": "auto",
        "dim": encoder.dim,
        "max_key": ann_meta["max_key"],
        "namespaces": [entry],
        "tag": f"vectors of model {encoder.version}",
        "generation": 1,
        "sha256": ann_meta["sha256"],
    }
    (args.data_dir / "index.faiss.json").write_text(json.dumps(meta), encoding="utf-8")
    print(json.dumps({"data_dir": str(args.data_dir), "questions": size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
