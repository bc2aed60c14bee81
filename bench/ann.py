"""The service's approximate index (HNSW over float16, ``app/index.py``) at one or ten million
vectors: build time, memory, single-query search latency and recall@10 against exact search, the
whole /duplicates path (encode + search) in-process, and the snapshot's write.

There are not a million distinct questions in the shared data, so the collection is made up, in
one of two ways (``--collection``):

- ``joined`` (the default): every distinct training question, then made-up questions, each two
  real ones joined ("How do I learn Python? Why is the sky blue?"), as ``bench/service.py`` fills
  its index, all encoded by the shipped model. The vectors are encoded once, 100,000 at a time,
  into a float32 file in build/ (``ann-joined-<size>.f32``, 10 GB at ten million) that later runs
  read again.
- ``noisy``: the real questions' vectors, each joined by noisy copies (vector + Gaussian noise,
  renormalized) until there are --size vectors: tight clusters of about 62 look-alikes of nearly
  equal score around each real question at ten million, a stress test for a graph. The copies are
  made 100,000 at a time from a seed of their own, so that they need not all be held.

Either way the vectors are read a block at a time: once for the index, once for the exact search
that is the ground truth (a running top 10 over each block). Queries are held-out questions (the
BiMPM dev file), never in the collection.

    python bench/ann.py [--size 1000000] [--queries 1000] [--m 32] [--ef-construction 80]
    python bench/ann.py --size 10000000 --snapshot build/ann-10m.faiss
    python bench/ann.py --size 10000000 --load build/ann-10m.faiss --efs 128,256,512,1024
    python bench/ann.py --collection noisy --size 10000000 --snapshot build/ann-10m-noisy.faiss
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.engine import release_memory  # noqa: E402
from app.index import IndexParams, VectorIndex  # noqa: E402
from bench.service import fill, rss_bytes  # noqa: E402
from model.encoder import QuestionEncoder, load_encoder  # noqa: E402
from model.training.data import iter_pairs  # noqa: E402
from model.training.groups import question_key  # noqa: E402


def distinct(path: Path) -> list[str]:
    seen: dict[str, str] = {}
    for pair in iter_pairs(path):
        for q in (pair.question1, pair.question2):
            seen.setdefault(question_key(q), q)
    return list(seen.values())


class Collection:
    """The benchmark's collection of ``size`` vectors: ``base`` (the real questions' vectors)
    first, then noisy copies of them, made :data:`BLOCK` at a time from a seed of their own, so
    that any block can be made again alone (``bench/synthetic_store.py`` stores the same ones)."""

    BLOCK = 100_000

    def __init__(self, base: np.ndarray, size: int, noise: float, seed: int) -> None:
        self.base, self.size, self.noise, self.seed = base, size, noise, seed

    def block(self, start: int) -> tuple[np.ndarray, np.ndarray]:
        """Vectors ``start`` to ``start + BLOCK`` (or the end), and the row of ``base`` each one is
        (a real question) or is a copy of."""
        stop = min(self.size, start + self.BLOCK)
        if stop <= len(self.base):
            return self.base[start:stop], np.arange(start, stop)
        local = np.random.default_rng([self.seed, start])
        sources = local.integers(0, len(self.base), stop - start)
        copies = self.base[sources] + local.normal(0, self.noise, (stop - start, self.base.shape[1])).astype(np.float32)
        out = copies / np.linalg.norm(copies, axis=1, keepdims=True)
        real = max(0, len(self.base) - start)
        out[:real] = self.base[start : start + real]
        sources[:real] = np.arange(start, start + real)
        return out, sources


class Encoded:
    """The ``joined`` collection: real questions, then made-up ones (two real ones joined, as
    ``bench/service.py`` makes them), encoded by the model into a float32 file, read back a block
    at a time (read, not mapped: mapped pages would count as the index's resident memory). The
    made-up questions come in the same order at any size, so the first ``size`` rows of a larger
    collection's file are this one."""

    BLOCK = Collection.BLOCK

    def __init__(self, path: Path, size: int, dim: int) -> None:
        self.path, self.size, self.dim = path, size, dim
        if path.stat().st_size < size * dim * 4:
            raise SystemExit(f"{path} does not hold {size} vectors of {dim} float32")

    @classmethod
    def make(cls, path: Path, encoder: QuestionEncoder, real: list[str], size: int, seed: int) -> Encoded:
        if not path.exists():
            started = time.perf_counter()
            texts = fill(real, size, seed)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as out:
                for start in range(0, size, cls.BLOCK):
                    out.write(encoder.encode(texts[start : start + cls.BLOCK]).astype(np.float32).tobytes())
                    done = start + cls.BLOCK
                    if done % 1_000_000 == 0:
                        print(f"  encoded {done:,} after {time.perf_counter() - started:.0f} s", flush=True)
            tmp.rename(path)
            print(f"encoded {size:,} questions into {path} in {time.perf_counter() - started:.0f} s", flush=True)
        return cls(path, size, encoder.dim)

    def block(self, start: int) -> tuple[np.ndarray, np.ndarray]:
        stop = min(self.size, start + self.BLOCK)
        rows = np.fromfile(self.path, np.float32, (stop - start) * self.dim, offset=start * self.dim * 4)
        return rows.reshape(stop - start, self.dim), np.arange(start, stop)


def make_collection(
    kind: str, encoder: QuestionEncoder, real: list[str], base: np.ndarray, size: int, noise: float, seed: int
) -> Collection | Encoded:
    """The collection of ``size`` vectors, ``joined`` or ``noisy``, of the ``real`` questions
    (``base``: their vectors)."""
    if kind == "noisy":
        return Collection(base, size, noise, seed)
    cache = ROOT / "build" / (f"ann-joined-{size}.f32" if seed == 0 else f"ann-joined-{size}-seed{seed}.f32")
    cache.parent.mkdir(exist_ok=True)
    if seed == 0 and size >= len(real):  # a larger collection's file holds this one
        names = (f.stem.removeprefix("ann-joined-") for f in cache.parent.glob("ann-joined-*.f32"))
        sizes = sorted(int(name) for name in names if name.isdigit())
        for larger in sizes:
            if larger >= size:
                return Encoded(cache.parent / f"ann-joined-{larger}.f32", size, encoder.dim)
    return Encoded.make(cache, encoder, real, size, seed)


def percentile_ms(samples: list[float], pct: float) -> float:
    return round(float(np.percentile(samples, pct)) * 1000, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "dupq-qqp"))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "qqp")
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--collection", choices=["joined", "noisy"], default="joined", help="how it is made up")
    parser.add_argument("--noise", type=float, default=0.04, help="noisy: per-dimension noise of the copies")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snapshot", type=Path, help="write the index here, timed (bench/snapshot.py loads it)")
    parser.add_argument("--load", type=Path, help="search an index --snapshot wrote instead of building one")
    parser.add_argument("--efs", default="32,64,128,256", help="efSearch values to measure")
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    encoder = load_encoder(args.model, threads=args.threads)

    started = time.perf_counter()
    train_texts = distinct(args.data / "train.tsv.gz")
    base = encoder.encode(train_texts)
    train_keys = {question_key(t) for t in train_texts}
    query_texts = [t for t in distinct(args.data / "dev.tsv.gz") if question_key(t) not in train_keys][: args.queries]
    print(f"encoded {len(base)} real questions in {time.perf_counter() - started:.1f} s", flush=True)
    queries = encoder.encode(query_texts)
    collection = make_collection(args.collection, encoder, train_texts, base, args.size, args.noise, args.seed)
    block = Collection.BLOCK

    def vectors_of(start: int) -> np.ndarray:
        return collection.block(start)[0]

    started = time.perf_counter()
    best_scores = np.full((len(queries), 10), -np.inf, np.float32)
    truth = np.full((len(queries), 10), -1, np.int64)
    for start in range(0, args.size, block):
        scores = queries @ vectors_of(start).T
        top = np.argpartition(-scores, 9, axis=1)[:, :10]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        merged_keys = np.concatenate([truth, top + start], axis=1)
        order = np.argsort(-merged_scores, axis=1)[:, :10]
        best_scores = np.take_along_axis(merged_scores, order, axis=1)
        truth = np.take_along_axis(merged_keys, order, axis=1)
    exact_ms = (time.perf_counter() - started) / len(queries) * 1000
    print(f"exact search: {exact_ms:.2f} ms per query (NumPy, {args.threads} threads, batched)", flush=True)

    release_memory()  # the exact search's freed buffers, which the index would otherwise reuse unseen
    rss_before = rss_bytes()
    started = time.perf_counter()
    if args.load:  # an index this script built and saved before, with the same --collection, --size, --noise, --seed
        hnsw = VectorIndex.load(args.load, "bench", IndexParams(kind="hnsw"), encoder.dim)
        build_s = time.perf_counter() - started
        print(f"HNSW loaded from {args.load} in {build_s:.0f} s", flush=True)
    else:
        hnsw = VectorIndex(encoder.dim, "hnsw", hnsw_m=args.m, ef_construction=args.ef_construction)
        for start in range(0, args.size, block):
            hnsw.add(np.arange(start, min(args.size, start + block), dtype=np.int64), vectors_of(start))
            if (start + block) % 1_000_000 == 0:
                print(f"  hnsw: {start + block:,} vectors after {time.perf_counter() - started:.0f} s", flush=True)
        build_s = time.perf_counter() - started
        print(f"HNSW (M={args.m}, efConstruction={args.ef_construction}) built in {build_s:.0f} s", flush=True)
    index_bytes = rss_bytes() - rss_before
    print(f"resident memory of the index: {index_bytes / 2**20:.0f} MiB, {index_bytes / args.size:.0f} B per vector")
    faiss.omp_set_num_threads(1)  # as the service runs it: one thread per search, searches in parallel
    report = {
        "size": args.size,
        "collection": args.collection,
        "dim": encoder.dim,
        "build_s" if not args.load else "load_s": round(build_s, 1),
        "index_bytes_per_vector": round(index_bytes / args.size),
        "exact_ms_per_query": round(exact_ms, 3),
        "ef": {},
    }
    for ef in (int(e) for e in args.efs.split(",")):
        hnsw.ef_search = ef
        latencies, found = [], []
        for q in queries:
            t = time.perf_counter()
            _, got = hnsw.search(q[None, :], 10)
            latencies.append(time.perf_counter() - t)
            found.append(got[0])
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
        # Near-ties: of the results, those that score within 0.005 of the exact 10th best (scored
        # from the index's float16 copies): a miss among many look-alikes of equal score, or not.
        scores = np.array([hnsw._index.reconstruct_batch(f) @ q for f, q in zip(found, queries, strict=True)])
        near = float(np.mean(scores >= best_scores[:, 9:10] - 0.005))
        p50, p99 = percentile_ms(latencies, 50), percentile_ms(latencies, 99)
        report["ef"][ef] = {"recall@10": round(recall, 4), "within_0.005": round(near, 4), "p50_ms": p50, "p99_ms": p99}
        print(
            f"efSearch {ef:3d}: recall@10 {recall:.4f} ({near:.4f} within 0.005 of the 10th best score), "
            f"search p50 {p50} ms, p99 {p99} ms"
        )

    hnsw.params = replace(hnsw.params, ef_search=IndexParams().ef_search, ef_grows=True)  # the service's
    service_ef = hnsw.params.ef_for(len(hnsw))
    latencies = []
    for text in query_texts:
        t = time.perf_counter()
        hnsw.search(encoder.encode([text]), 10)
        latencies.append(time.perf_counter() - t)
    p50, p99 = percentile_ms(latencies, 50), percentile_ms(latencies, 99)
    report["encode_and_search"] = {"ef_search": service_ef, "p50_ms": p50, "p99_ms": p99}
    print(f"encode + search (the service's efSearch at this size, {service_ef}): p50 {p50} ms, p99 {p99} ms")
    snapshot = {}
    if args.snapshot:  # streamed as the service writes one; bench/snapshot.py loads it in a fresh process
        started = time.perf_counter()
        hnsw.save(args.snapshot, tag="bench")
        snapshot["write_s"] = round(time.perf_counter() - started, 1)
        snapshot["bytes"] = args.snapshot.stat().st_size
        snapshot["peak_rss_bytes"] = rss_bytes(field="VmHWM")
        print(
            f"snapshot: {snapshot['bytes'] / 2**20:.0f} MiB, written in {snapshot['write_s']} s; peak resident "
            f"memory of the run {snapshot['peak_rss_bytes'] / 2**30:.2f} GiB",
            flush=True,
        )
    report["snapshot"] = snapshot
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
