"""The model directory: the unit that training writes and serving loads.

    config.json        architecture, threshold, calibration, version, checksums, training data and figures
    model.onnx         the network as an ONNX graph: what serving runs (ONNX Runtime, no PyTorch)
    model.onnx.data    the graph's weights, where it keeps them beside it (``dupq convert``)
    tokenizer.json     the word-piece tokenizer
    model.safetensors  the PyTorch weights (no pickles): what training, fine-tuning and
                       ``dupq upgrade`` start from; serving does not read them

This module reads a directory for serving and refuses one that is incomplete, damaged or of
another format with a one-line reason; :mod:`model.training.export` writes one.

Formats: 1, one network; 2, ``members`` networks side by side; 3, ``model.onnx`` written by
training; 4, ``encoder.unknown_buckets``: rows of the embedding after the vocabulary that unknown
words are hashed to (:func:`model.tokenizer.unknown_id`), a dupq that reads only format 3 would
give those words ``[UNK]``'s row instead; 5 (this one), the graph's weights in ``model.onnx.data``
beside it (``onnx_data_sha256``), which a dupq that reads only format 4 would not find. A writer
states the lowest format that reads what it wrote: ``dupq convert`` writes 5, training and ``dupq
upgrade`` write 4 (:data:`ONE_FILE_FORMAT`: the graph holds its weights). A directory of format 1
or 2 has no ``model.onnx``; ``dupq upgrade DIR`` adds it from the weights (and brings any older
directory to format 4 with no such rows), which changes no vector and keeps the version. Serving
loads format 3 as it is, as a model with no such rows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CONFIG, ONNX, TOKENIZER, WEIGHTS = "config.json", "model.onnx", "tokenizer.json", "model.safetensors"
ONNX_DATA = "model.onnx.data"  # where the graph keeps its weights, if not in itself
FORMAT_VERSION = 5  # the newest format, which this dupq reads
ONE_FILE_FORMAT = 4  # what a directory whose graph holds its weights states (training, dupq upgrade)
ONNX_SINCE = 3  # the first format with model.onnx
REQUIRED = ("name", "version", "encoder", "dim", "threshold", "calibration", "onnx_sha256", "tokenizer_sha256")


class ModelDirError(ValueError):
    """A model directory that cannot be loaded; the message says why, in one line."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def upgrade_hint(model_dir: str | Path) -> str:
    """The command that brings an older model directory to this format."""
    return f"run `dupq upgrade {model_dir}` to add it (needs the train extra: pip install 'dupq[train]')"


def read_json(model_dir: str | Path) -> dict[str, Any]:
    """``config.json`` as written, whatever its format; raises :class:`ModelDirError` if unreadable."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model directory {model_dir} does not exist")
    if not (model_dir / CONFIG).is_file():
        raise ModelDirError(f"model directory {model_dir} is incomplete: missing {CONFIG}")
    try:
        config: dict[str, Any] = json.loads((model_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelDirError(f"{model_dir / CONFIG} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ModelDirError(f"{model_dir / CONFIG} holds no JSON object")
    if (model_dir / "modules.json").is_file():
        raise ModelDirError(
            f"{model_dir} is a sentence-transformers model directory, not a dupq one: `dupq convert {model_dir} "
            "--valid FILE --out DIR` turns it into one (needs the train extra: pip install 'dupq[train]')"
        )
    if "version" not in config and "encoder" not in config:
        raise ModelDirError(
            f"{model_dir} is not a dupq model directory: its {CONFIG} has neither 'version' nor 'encoder'"
        )
    version = config.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelDirError(f"{model_dir} has format {version!r}; this dupq reads up to {FORMAT_VERSION}")
    return config


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """The config of a directory that serving can load: this format, every file serving needs
    present and matching the checksums in ``config.json``."""
    model_dir = Path(model_dir)
    config = read_json(model_dir)
    if config.get("format_version", 1) < ONNX_SINCE or not (model_dir / ONNX).is_file():
        raise ModelDirError(
            f"model directory {model_dir} has no {ONNX} (format {config.get('format_version', 1)}, written by "
            f"an older dupq): {upgrade_hint(model_dir)}"
        )
    missing = [key for key in REQUIRED if key not in config]
    if missing:
        raise ModelDirError(f"{model_dir / CONFIG} lacks the field(s) {', '.join(map(repr, missing))}")
    if not isinstance(config["encoder"], dict) or not isinstance(config["encoder"].get("max_tokens"), int):
        raise ModelDirError(f"{model_dir / CONFIG}: 'encoder' must hold the architecture, 'max_tokens' included")
    if not (model_dir / TOKENIZER).is_file():
        raise ModelDirError(f"model directory {model_dir} is incomplete: missing {TOKENIZER}")
    if "onnx_data_sha256" in config and not (model_dir / ONNX_DATA).is_file():
        raise ModelDirError(f"model directory {model_dir} is incomplete: missing {ONNX_DATA}")
    for name, key in ((ONNX, "onnx_sha256"), (ONNX_DATA, "onnx_data_sha256"), (TOKENIZER, "tokenizer_sha256")):
        if key in config and sha256_file(model_dir / name) != config[key]:
            raise ModelDirError(f"{model_dir / name} does not match {CONFIG} ({key}): the file was changed or damaged")
    return config
