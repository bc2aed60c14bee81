"""A service's index snapshot at scale, in a fresh process: the time to load it (checksum, then
FAISS reading the file), the resident memory it then takes, and the time and peak memory of
writing it again as the service does (streamed by FAISS into the file, no second copy).

    python bench/ann.py --size 10000000 --snapshot build/ann-10m.faiss   # writes one
    python bench/snapshot.py build/ann-10m.faiss
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.index import IndexParams, SnapshotFile, VectorIndex  # noqa: E402
from bench.service import rss_bytes  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("snapshot", type=Path, help="a snapshot written by VectorIndex.save (bench/ann.py)")
    parser.add_argument("--tag", default="bench")
    args = parser.parse_args(argv)
    meta = json.loads(args.snapshot.with_suffix(args.snapshot.suffix + ".json").read_text())
    before = rss_bytes()
    started = time.perf_counter()
    index = VectorIndex.load(args.snapshot, args.tag, IndexParams(kind=meta["kind"]), meta["dim"])
    load_s = time.perf_counter() - started
    resident = rss_bytes() - before
    copy = args.snapshot.with_name(args.snapshot.name + ".copy")
    started = time.perf_counter()
    with SnapshotFile(copy) as file:
        written = index.write_to(file)
        held_s = time.perf_counter() - started
        file.commit({**written, "tag": args.tag})
    write_s = time.perf_counter() - started
    size = copy.stat().st_size
    copy.unlink()
    copy.with_suffix(copy.suffix + ".json").unlink()
    result = {
        "questions": len(index),
        "snapshot_bytes": size,
        "load_s": round(load_s, 1),
        "index_resident_bytes": resident,
        "index_resident_bytes_per_question": round(resident / len(index)),
        "write_s": round(write_s, 1),
        "write_s_with_writes_held": round(held_s, 1),
        "peak_resident_bytes": rss_bytes(field="VmHWM"),
    }
    print(
        f"{len(index):,} questions: loaded in {load_s:.1f} s, {resident / 2**30:.2f} GiB resident "
        f"({resident / len(index):.0f} B a question); written again in {write_s:.1f} s "
        f"({held_s:.1f} s of it streaming, the service's writes held); peak "
        f"{result['peak_resident_bytes'] / 2**30:.2f} GiB",
        flush=True,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
