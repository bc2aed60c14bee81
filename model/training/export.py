"""Writing a model directory (:mod:`model.model_dir` describes its files) and reading its weights back.

Training calls :func:`save_model_dir` once, at the end: the weights, the ONNX graph built from
them, the tokenizer and ``config.json``. Every write goes through :func:`writing`, so a directory
holds its old model or the new one whatever stops the write. :func:`load_network` rebuilds the
PyTorch network from a directory's ``config.json`` and weights alone (for the parity test,
fine-tuning and upgrades), and :func:`upgrade_model_dir` brings a directory written by an older
dupq to this format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from model.config import EncoderConfig
from model.files import replacing_files
from model.model_dir import (
    CONFIG,
    ONE_FILE_FORMAT,
    ONNX,
    ONNX_DATA,
    TOKENIZER,
    WEIGHTS,
    ModelDirError,
    read_json,
    sha256_file,
)
from model.training.network import Network, SiameseEncoder, SideBySide
from model.training.onnx_graph import build_onnx

logger = logging.getLogger(__name__)

VERSION_PREFIX = "2026.11"


def save_model_dir(
    out: str | Path,
    network: Network,
    tokenizer: Any,
    *,
    name: str,
    threshold: float,
    calibration: tuple[float, float],
    extra: dict[str, Any] | None = None,
    version_prefix: str = VERSION_PREFIX,
) -> dict[str, Any]:
    """Write a complete model directory; returns the written config. The version ends with a
    digest of the weights and the tokenizer, so two models that could give a question different
    vectors never share a version."""
    with writing(out) as stage:
        weights = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
        save_file(weights, str(stage / WEIGHTS), metadata={"format": "pt"})
        (stage / WEIGHTS).chmod(0o644)  # safetensors creates it 0600: a service user must be able to read it
        tokenizer.save(str(stage / TOKENIZER))
        _write_onnx(stage, network)
        digest = sha256_file(stage / WEIGHTS)
        tokenizer_digest = sha256_file(stage / TOKENIZER)
        members = len(network.members) if isinstance(network, SideBySide) else 1
        config = {
            "format_version": ONE_FILE_FORMAT,
            "name": name,
            "version": model_version(digest, tokenizer_digest, prefix=version_prefix),
            "encoder": dataclasses.asdict(network.config),
            **({"members": members} if members > 1 else {}),
            "dim": network.dim,
            "threshold": float(threshold),
            "calibration": {"slope": float(calibration[0]), "intercept": float(calibration[1])},
            "weights_sha256": digest,
            "tokenizer_sha256": tokenizer_digest,
            "onnx_sha256": sha256_file(stage / ONNX),
            **(extra or {}),
        }
        write_config(stage, config)
    return config


@contextlib.contextmanager
def writing(out: str | Path, *, whole: bool = True) -> Iterator[Path]:
    """A directory to write model directory ``out``'s files into, which replace those in ``out``
    once the block ends without an error, ``config.json`` last (:func:`model.files.replacing_files`):
    on an error or a kill, ``out`` keeps the model it had, or stays absent. ``whole``: what is
    written is the whole model, so a model file it lacks (the weights when a converted model
    replaces a trained one, ``model.onnx.data`` the other way round) is removed; without it (an
    upgrade) the others stay. Files that are not a model's (a ``report/`` folder) stay either way."""
    with replacing_files(out, last=CONFIG, drop=(WEIGHTS, ONNX, ONNX_DATA, TOKENIZER) if whole else ()) as stage:
        yield stage


def model_version(*sha256: str, prefix: str = VERSION_PREFIX) -> str:
    """``<prefix>+<digest>``: the digest of the files that fix a question's vector (the weights,
    or the graph and the weights it keeps beside it, and the tokenizer, last), so two models that
    could embed a question differently never share a version."""
    together = hashlib.sha256(" ".join(sha256).encode()).hexdigest()
    return f"{prefix}+{together[:10]}"


def _write_onnx(out: Path, network: Network) -> None:
    (out / ONNX).write_bytes(build_onnx(network.eval()).SerializeToString())


def write_config(out: Path, config: dict[str, Any]) -> None:
    """``config.json`` of the model directory ``out``."""
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load_network(model_dir: str | Path) -> Network:
    """The PyTorch network of a model directory (any format), in eval mode, from ``config.json``
    and the weights; raises :class:`ModelDirError` if they do not match."""
    model_dir = Path(model_dir)
    config = read_json(model_dir)
    if "encoder" not in config:
        raise ModelDirError(f"{model_dir / CONFIG} lacks the field 'encoder'")
    if config["encoder"].get("kind") in ("transformer", "static"):
        raise ModelDirError(
            f"{model_dir} holds a converted {config['encoder']['kind']} model (dupq convert), not dupq's own "
            "network: it has no weights to train or upgrade"
        )
    fields = {f.name for f in dataclasses.fields(EncoderConfig)}
    unknown = set(config["encoder"]) - fields
    if unknown:
        raise ModelDirError(f"unknown encoder settings in {model_dir / CONFIG}: {', '.join(sorted(unknown))}")
    members = config.get("members", 1)
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        raise ModelDirError(f"{model_dir / CONFIG}: members must be a whole number of at least 1, not {members!r}")
    encoder_config = EncoderConfig(**{"unknown_buckets": 0, **config["encoder"]})  # none before they existed
    network: Network = SideBySide(encoder_config, members) if members > 1 else SiameseEncoder(encoder_config)
    if not (model_dir / WEIGHTS).is_file():
        raise ModelDirError(f"model directory {model_dir} is incomplete: missing {WEIGHTS}")
    try:
        weights = load_file(str(model_dir / WEIGHTS))
    except Exception as err:  # OSError, or safetensors' own error for a damaged file
        raise ModelDirError(f"cannot read {model_dir / WEIGHTS}: {err}") from err
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != found:
        diff = sorted(
            f"{k}: config wants {expected.get(k, 'nothing')}, weights have {found.get(k, 'nothing')}"
            for k in expected.keys() | found.keys()
            if expected.get(k) != found.get(k)
        )
        raise ModelDirError(f"weights in {model_dir} do not match {CONFIG}: " + "; ".join(diff[:5]))
    network.load_state_dict(weights)
    return network.eval()


def upgrade_model_dir(model_dir: str | Path) -> dict[str, Any]:
    """Bring a model directory of an older format to format 4, the newest for dupq's own network
    (:data:`ONE_FILE_FORMAT`): write ``model.onnx`` from the weights and record it in
    ``config.json``, with the rows for unknown words it has (none, for one written before they
    existed). No weight, vector or version changes; running it again rewrites the same files.
    Returns the written config."""
    model_dir = Path(model_dir)
    config = read_json(model_dir)
    if not (model_dir / TOKENIZER).is_file():
        raise ModelDirError(f"model directory {model_dir} is incomplete: missing {TOKENIZER}")
    network = load_network(model_dir)
    if config.get("weights_sha256") not in (None, sha256_file(model_dir / WEIGHTS)):
        raise ModelDirError(f"{model_dir / WEIGHTS} does not match {CONFIG}: the file was changed or damaged")
    before = config.get("format_version", 1)
    config["encoder"] = {**config["encoder"], "unknown_buckets": network.config.unknown_buckets}
    with writing(model_dir, whole=False) as stage:
        _write_onnx(stage, network)
        config.update(
            format_version=ONE_FILE_FORMAT,
            onnx_sha256=sha256_file(stage / ONNX),
            tokenizer_sha256=config.get("tokenizer_sha256") or sha256_file(model_dir / TOKENIZER),
            dim=network.dim,
        )
        write_config(stage, config)
    logger.info("upgraded %s from format %s to %d: wrote %s", model_dir, before, ONE_FILE_FORMAT, ONNX)
    return config
