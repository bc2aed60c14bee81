"""The encoder at run time: questions in, unit vectors out, with ONNX Runtime (no PyTorch).

:func:`load_encoder` opens a model directory (:mod:`model.model_dir`) and runs its ``model.onnx``,
the graph that training wrote from the PyTorch network (:mod:`model.training.onnx_graph`). The
embedding contract lives in :func:`embedding_matrix`; everything downstream trusts it.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from model.calibration import probability
from model.model_dir import ONNX, ONNX_DATA, TOKENIZER, ModelDirError, read_config
from model.tokenizer import PAD_ID, TokenIds, load_tokenizer

logger = logging.getLogger(__name__)


def embedding_matrix(vectors: np.ndarray) -> np.ndarray:
    """The embedding contract, in one place for every producer: float32, C-contiguous, shape
    (N, D). The rows are unit vectors already: the network normalizes as its last step."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"embeddings must be a (N, D) matrix, got shape {array.shape}")
    return array


def pad_ids(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token id lists -> (ids (B, T) int64 padded with PAD_ID, lengths (B,) int64), the padded rows
    read by NumPy in one pass: a row-by-row copy costs as much as the network on short questions,
    and each NumPy call costs some 10 us when the network has just run (a boolean-mask fill took
    49 against 26 us for one question, and about as long for 256)."""
    lengths = [len(s) for s in sequences]
    longest = max(lengths)
    padding = [PAD_ID] * longest
    rows = itertools.chain.from_iterable([*s, *padding[: longest - n]] for s, n in zip(sequences, lengths, strict=True))
    ids = np.fromiter(rows, dtype=np.int64, count=len(sequences) * longest).reshape(len(sequences), longest)
    return ids, np.array(lengths, dtype=np.int64)


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: the affinity mask, capped by the CPU quota of a container (whole
    CPUs, at least one), as ``cgroup`` holds it: cgroup v2's ``cpu.max``, or v1's
    ``cpu/cpu.cfs_quota_us`` over ``cpu/cpu.cfs_period_us`` (Docker on a v1 host)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cpu_quota(cgroup)
    if quota is not None:
        count = min(count, max(1, int(quota)))
    return max(1, count)


def _cpu_quota(cgroup: Path) -> float | None:
    """The CPU quota in CPUs (1.5: a period and a half of CPU time per period), None if none."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None  # v1 says -1 for none


class QuestionEncoder:
    """A loaded model: questions in, unit vectors out, plus the threshold and the calibration.

    One single-threaded ONNX Runtime session, on which each thread runs its own share of a batch
    at once (ONNX Runtime runs concurrent calls of one session in parallel): the LSTM's time steps
    are too small to split well between threads (two threads inside one session ran about 1.4
    times as fast as one), whole sub-batches are not. The threads share the session's one copy of
    the weights; a session each ran as fast with a copy each (all-MiniLM-L6-v2 converted: some
    100 MiB a thread).
    """

    def __init__(
        self, config: dict[str, Any], tokenizer: Any, graph: bytes, threads: int = 1, weights: Path | None = None
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        encoder = config["encoder"]
        self.token_ids = TokenIds(
            tokenizer,
            int(encoder["max_tokens"]),
            special=bool(encoder.get("special_tokens")),
            unknown_buckets=int(encoder.get("unknown_buckets", 0)),
        )
        self.threads = max(1, threads)
        self._session = single_thread_session(graph, weights)
        width = self._session.get_outputs()[0].shape[-1]
        if width != config["dim"]:
            raise ModelDirError(f"model.onnx gives {width}-d vectors where config.json says {config['dim']}")
        self._pool = (
            ThreadPoolExecutor(self.threads - 1, thread_name_prefix="dupq-encoder") if self.threads > 1 else None
        )

    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def version(self) -> str:
        return str(self.config["version"])

    @property
    def full_name(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @property
    def max_tokens(self) -> int:
        return self.token_ids.max_tokens

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

    def probability(self, similarities: np.ndarray | float) -> np.ndarray:
        calibration = self.config["calibration"]
        return probability(similarities, calibration["slope"], calibration["intercept"])

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Unit vectors (N, D), float32, in the order of ``texts``. Inputs are sorted by length
        and cut into runs of similar length, at most ``batch_size`` each, wherever the padding
        saved outweighs the cost of one more call (the LSTM pays for every padded step of a run's
        longest question). With several threads, the sorted rows are dealt out in turn to one
        share per thread, so the shares cost the same, and the shares run at once."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        sequences = self.token_ids(texts)
        if len(sequences) == 1:  # one call, nothing to sort or cut (0.02 ms of 0.43 for one question)
            return self.forward(*pad_ids(sequences))
        lengths = [len(s) for s in sequences]
        order = sorted(range(len(sequences)), key=lengths.__getitem__)
        pool = self._pool if len(texts) >= _MIN_SHARE * self.threads else None
        shares = self.threads if pool else 1
        runs = [_length_buckets(order[k::shares], lengths, batch_size) for k in range(shares)]
        if pool is None and len(runs[0]) == 1:  # one call (most pairs): in the order given, nothing to copy back
            return self.forward(*pad_ids(sequences))
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        futures = [pool.submit(self._run_share, runs[k], sequences, out) for k in range(1, shares)] if pool else []
        self._run_share(runs[0], sequences, out)
        for future in futures:
            future.result()
        return out

    def _run_share(self, runs: list[list[int]], sequences: list[list[int]], out: np.ndarray) -> None:
        for run in runs:
            ids, run_lengths = pad_ids([sequences[i] for i in run])
            out[run] = self.forward(ids, run_lengths)

    def forward(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The network on padded token ids (B, T) and their lengths (B,): unit vectors (B, D)."""
        feed = {"ids": ids, "lengths": lengths.astype(np.int32)}
        return embedding_matrix(self._session.run(None, feed)[0])


def single_thread_session(graph: bytes, weights: Path | None = None) -> Any:
    """An ONNX Runtime session (CPU) that runs each call on the calling thread alone; calls from
    several threads run at once. With one thread it has no pool, so nothing spins between calls
    and takes the CPU from a server's event loop.

    ``weights``: the file that holds the graph's weights (``model.onnx.data``), if it does not
    hold them itself. ONNX Runtime copies them out of it while the session is made: a graph loaded
    from its path would keep them mapped from the file, so that a model file written over in place
    (not replaced, as dupq replaces them) would change a running service's vectors."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if weights is not None and weights.stat().st_size:  # empty: no weight kept apart (mmap refuses it)
        with open(weights, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            options.add_external_initializers_from_files_in_memory([weights.name], [data], [len(data)])
            return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


_MIN_SHARE = 8  # rows per thread below which a batch is not worth splitting

# What one network call on ``rows`` questions padded to ``steps`` tokens costs, in units of one
# question-step: every row pays for every step of the call, padded or not (ONNX Runtime's LSTM
# runs the whole batch to its longest row), plus a fixed cost per call and a cost per step. For
# the shipped network (LSTM 192 wide) in ONNX Runtime on one thread, a question-step is about
# 7.6 us, and three fits (``python bench/encoder.py --cost-model``, 2026-12-06, an AVX-512 VM) put
# a call at 14.5 to 16.5 of them and a step at 0.1 to 0.4. Against the 128-wide network's fit (8
# and 0.75) these cuts encode batches of 32 about 3 % faster, and batches of 256 within noise
# (docs/experiments.md). Every model is cut by these: a converted all-MiniLM-L6-v2 fits at a call
# of 12.7 and a step of -0.7 (2026-12-07), and cut by a call of 12.7 and no step cost it encoded
# within noise of these (docs/experiments.md).
_CALL_COST = 15.0
_STEP_COST = 0.3


def _length_buckets(order: list[int], lengths: list[int], most: int) -> list[list[int]]:
    """Cut rows sorted by length into runs at the cuts that make the modelled cost of running them
    (above) least: a cut saves padding and costs a call. Dynamic programming over the places where
    the length changes (a cut between equal lengths saves nothing); a run of more than ``most``
    rows is counted, and run, as that many calls."""
    n = len(order)
    if n == 0:
        return []
    starts = [0] + [k for k in range(1, n) if lengths[order[k]] != lengths[order[k - 1]]]
    ends = [*starts[1:], n]
    # best[j]: least cost of the rows of the j shortest distinct lengths; cut[j]: where its last run starts
    best = [0.0] + [float("inf")] * len(starts)
    cut = [0] * (len(starts) + 1)
    for j in range(1, len(starts) + 1):
        end = ends[j - 1]
        steps = lengths[order[end - 1]]
        call = _CALL_COST + _STEP_COST * steps
        for i in range(j):
            rows = end - starts[i]
            cost = best[i] + -(-rows // most) * call + rows * steps
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs: list[list[int]] = []
    j = len(starts)
    while j > 0:
        first, end = starts[cut[j]], ends[j - 1]
        runs[:0] = [order[k : min(k + most, end)] for k in range(first, end, most)]
        j = cut[j]
    return runs


def load_encoder(model_dir: str | Path, threads: int = 1) -> QuestionEncoder:
    """Load a model directory for serving; raises :class:`ModelDirError` with the reason if it
    is unusable. ``threads``: how many threads one ``encode`` call may use (0: every CPU this
    process may use)."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    try:
        tokenizer = load_tokenizer(model_dir / TOKENIZER)
    except Exception as err:  # tokenizers raises its own Exception type
        raise ModelDirError(f"{model_dir / TOKENIZER} cannot be read: {err}") from err
    try:
        weights = model_dir / ONNX_DATA if "onnx_data_sha256" in config else None
        encoder = QuestionEncoder(
            config, tokenizer, (model_dir / ONNX).read_bytes(), threads or available_cpus(), weights
        )
    except ModelDirError:
        raise
    except Exception as err:  # onnxruntime's own errors for a graph it cannot run
        raise ModelDirError(f"{model_dir / ONNX} cannot be run: {err}") from err
    logger.info(
        "loaded model %s (dim %d, %d thread(s)) from %s", encoder.full_name, encoder.dim, encoder.threads, model_dir
    )
    return encoder
