"""The model directory: the unit that training writes and serving loads.

    config.json        architecture, threshold, calibration, version, training data and metrics
    model.safetensors  the weights (no pickles: loading never executes code); with ``members``
                       in config.json (format 2), the weights of that many networks side by side
    tokenizer.json     the word-piece tokenizer

:func:`load_encoder` rebuilds the network from ``config.json`` alone and refuses a directory that
is incomplete or whose weights do not match the config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from model.encoder import EncoderConfig, Network, SiameseEncoder, SideBySide, embedding_matrix, pad_ids
from model.metrics import probability
from model.tokenizer import TokenIds, load_tokenizer

logger = logging.getLogger(__name__)

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
FORMAT_VERSION = 2  # 2: ``members``, networks side by side; a single network is still written as format 1
Backend = Literal["onnx", "torch"]


class ModelDirError(ValueError):
    """A model directory that cannot be loaded; the message says why."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model_dir(
    out: str | Path,
    network: Network,
    tokenizer: Any,
    *,
    name: str,
    threshold: float,
    calibration: tuple[float, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a complete model directory; the version ends with a digest of the weights and the
    tokenizer, so two models that could give a question different vectors never share a version.
    Returns the written config."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(weights, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / WEIGHTS).chmod(0o644)  # safetensors creates it 0600: a service user must be able to read it
    tokenizer.save(str(out / TOKENIZER))
    digest = sha256_file(out / WEIGHTS)
    tokenizer_digest = sha256_file(out / TOKENIZER)
    both = hashlib.sha256(f"{digest} {tokenizer_digest}".encode()).hexdigest()
    members = len(network.members) if isinstance(network, SideBySide) else 1
    config = {
        "format_version": FORMAT_VERSION if members > 1 else 1,
        "name": name,
        "version": f"{extra.get('version_prefix', '2026.11') if extra else '2026.11'}+{both[:10]}",
        "encoder": dataclasses.asdict(network.config),
        **({"members": members} if members > 1 else {}),
        "dim": network.dim,
        "threshold": float(threshold),
        "calibration": {"slope": float(calibration[0]), "intercept": float(calibration[1])},
        "weights_sha256": digest,
        "tokenizer_sha256": tokenizer_digest,
        **{k: v for k, v in (extra or {}).items() if k != "version_prefix"},
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return config


def read_config(model_dir: str | Path) -> dict[str, Any]:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model directory {model_dir} does not exist")
    missing = [f for f in (CONFIG, WEIGHTS, TOKENIZER) if not (model_dir / f).is_file()]
    if missing:
        raise ModelDirError(f"model directory {model_dir} is incomplete: missing {', '.join(missing)}")
    try:
        config: dict[str, Any] = json.loads((model_dir / CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelDirError(f"{model_dir / CONFIG} is not valid JSON: {err}") from err
    for key in ("name", "version", "encoder", "threshold", "calibration"):
        if key not in config:
            raise ModelDirError(f"{model_dir / CONFIG} lacks the field {key!r}")
    if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ModelDirError(
            f"{model_dir} has format {config['format_version']}; this dupq reads up to {FORMAT_VERSION}"
        )
    return config


def build_network(model_dir: str | Path, config: dict[str, Any]) -> Network:
    fields = {f.name for f in dataclasses.fields(EncoderConfig)}
    unknown = set(config["encoder"]) - fields
    if unknown:
        raise ModelDirError(f"unknown encoder settings in config.json: {', '.join(sorted(unknown))}")
    members = config.get("members", 1)
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        raise ModelDirError(
            f"{Path(model_dir) / CONFIG}: members must be a whole number of at least 1, not {members!r}"
        )
    encoder_config = EncoderConfig(**config["encoder"])
    network: Network = SideBySide(encoder_config, members) if members > 1 else SiameseEncoder(encoder_config)
    try:
        weights = load_file(str(Path(model_dir) / WEIGHTS))
    except Exception as err:  # OSError, or safetensors' own error for a damaged file
        raise ModelDirError(f"cannot read {Path(model_dir) / WEIGHTS}: {err}") from err
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != found:
        diff = sorted(
            f"{k}: config wants {expected.get(k, 'nothing')}, weights have {found.get(k, 'nothing')}"
            for k in expected.keys() | found.keys()
            if expected.get(k) != found.get(k)
        )
        raise ModelDirError(f"weights in {model_dir} do not match config.json: " + "; ".join(diff[:5]))
    network.load_state_dict(weights)
    return network.eval()


class QuestionEncoder:
    """A loaded model: questions in, unit vectors out, plus the threshold and calibration.

    ``backend="onnx"`` runs the network in ONNX Runtime (the fast path for serving);
    ``backend="torch"`` runs the PyTorch module itself. Both give the same vectors.
    """

    def __init__(
        self,
        network: Network,
        tokenizer: Any,
        config: dict[str, Any],
        backend: Backend = "onnx",
        threads: int = 0,
    ) -> None:
        self.network = network.eval()
        self.tokenizer = tokenizer
        self.token_ids = TokenIds(tokenizer, network.config.max_tokens)
        self.config = config
        self.backend = backend
        self.threads = threads or torch.get_num_threads()
        self._sessions: list[Any] = []
        self._pool: ThreadPoolExecutor | None = None
        if backend == "onnx":
            from model.onnx_graph import build_onnx

            # One single-threaded session per thread, each running its own share of a batch: the
            # LSTM's time steps are too small to split well between threads (two threads on one
            # session ran about 1.4 times as fast as one), whole sub-batches are not.
            graph = build_onnx(network).SerializeToString()
            self._sessions = [single_thread_session(graph) for _ in range(self.threads)]
            if self.threads > 1:
                self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="dupq-encoder")

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
        return self.network.dim

    @property
    def max_tokens(self) -> int:
        return self.network.config.max_tokens

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

    def probability(self, similarity: np.ndarray | float) -> np.ndarray:
        cal = self.config["calibration"]
        return probability(similarity, cal["slope"], cal["intercept"])

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Unit vectors (N, D), float32, in the order of ``texts``. Inputs are sorted by length.
        With ONNX Runtime they are cut into runs of similar length, at most ``batch_size`` each,
        wherever the padding saved outweighs the cost of one more call (the LSTM pays for every
        padded step of a run's longest question); with PyTorch, which packs, into runs of at most
        64. With ONNX Runtime and several threads, the sorted rows are dealt out in turn to one
        share per thread, so the shares cost the same, and the shares run at once."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        sequences = self.token_ids(texts)
        lengths = [len(s) for s in sequences]
        order = sorted(range(len(sequences)), key=lengths.__getitem__)
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        shares = len(self._sessions)
        if shares <= 1 or len(texts) < _MIN_SHARE * shares:
            self._run_share(0, order, sequences, lengths, batch_size, out)
            return out
        assert self._pool is not None
        futures = [
            self._pool.submit(self._run_share, k, order[k::shares], sequences, lengths, batch_size, out)
            for k in range(1, shares)
        ]
        self._run_share(0, order[0::shares], sequences, lengths, batch_size, out)
        for future in futures:
            future.result()
        return out

    def _run_share(
        self, k: int, rows: list[int], sequences: list[list[int]], lengths: list[int], most: int, out: np.ndarray
    ) -> None:
        if not self._sessions:  # PyTorch packs a batch: padding costs little, big batches do
            step = min(most, _TORCH_ROWS)
            buckets = [rows[k : k + step] for k in range(0, len(rows), step)]
        else:
            buckets = _length_buckets(rows, lengths, most)
        for bucket in buckets:
            ids, bucket_lengths = pad_ids([sequences[i] for i in bucket])
            out[bucket] = self._forward(ids, bucket_lengths, k)

    def _forward(self, ids: np.ndarray, lengths: np.ndarray, share: int = 0) -> np.ndarray:
        if self._sessions:
            feed = {"ids": ids, "lengths": lengths.astype(np.int32)}
            return embedding_matrix(self._sessions[share].run(None, feed)[0])
        with torch.inference_mode():
            ids_there = torch.from_numpy(ids).to(self.network.device)
            return embedding_matrix(self.network(ids_there, torch.from_numpy(lengths)))


def single_thread_session(graph: bytes) -> Any:
    """An ONNX Runtime session (CPU) that runs on the calling thread alone. With one thread it has
    no pool, so nothing spins between calls and takes the CPU from a server's event loop."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


_MIN_SHARE = 8  # rows per thread below which a batch is not worth splitting
_TORCH_ROWS = 64  # most rows per PyTorch call: its packed LSTM slows past that

# What one network call on ``rows`` questions padded to ``steps`` tokens costs, in units of one
# question-step: every row pays for every step of the call, padded or not (ONNX Runtime's LSTM
# runs the whole batch to its longest row), plus a fixed cost per call and a cost per step. For
# the shipped network in ONNX Runtime on one thread, a question-step is about 9 us, and three fits
# (``python bench/encoder.py --cost-model``) put a call at 5 to 13 of them and a step at 0.3 to
# 0.8; the cuts below change little within that range.
_CALL_COST = 8.0
_STEP_COST = 0.75


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


def load_encoder(model_dir: str | Path, backend: Backend = "onnx", threads: int = 0) -> QuestionEncoder:
    """Load a model directory; raises :class:`ModelDirError` with the reason if it is unusable.
    ``threads``: how many threads one ``encode`` call may use (0: PyTorch's setting)."""
    config = read_config(model_dir)
    network = build_network(model_dir, config)
    try:
        tokenizer = load_tokenizer(Path(model_dir) / TOKENIZER)
    except Exception as err:  # tokenizers raises its own Exception type
        raise ModelDirError(f"{Path(model_dir) / TOKENIZER} cannot be read: {err}") from err
    if tokenizer.get_vocab_size() > network.config.vocab_size:
        raise ModelDirError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens but the network only {network.config.vocab_size}"
        )
    encoder = QuestionEncoder(network, tokenizer, config, backend=backend, threads=threads)
    logger.info("loaded model %s (dim %d, backend %s) from %s", encoder.full_name, encoder.dim, backend, model_dir)
    return encoder
