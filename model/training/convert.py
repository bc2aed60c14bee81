"""``dupq convert``: a sentence-transformers model directory made into a dupq model directory.

The source is a transformer (BERT-style, or a decoder pooled at its last token) and its Pooling
module (any of its modes: the mean, as all-MiniLM-L6-v2's, the [CLS] token, ...), or a
StaticEmbedding (a vector a token, averaged: model2vec's models), and after it any Dense layers
(distiluse-base-multilingual's 768 to 512 with tanh, say) and Normalize modules. A prompt that
sentence-transformers puts before each text (the model's default prompt, or the one ``--prompt``
names, as ``encode(prompt_name=...)`` would) is written into the tokenizer, ahead of its normalizer,
so that serving reads ``"query: " + question`` as the source does. A Matryoshka model's vectors can
be cut to their first ``--dim`` columns, as sentence-transformers' ``truncate_dim`` cuts them (a
``truncate_dim`` saved with the model is its default). The written directory is what serving loads
for any model (:mod:`model.model_dir`): ``model.onnx`` with dupq's inputs (``ids`` (B, T) int64,
``lengths`` (B,) int32) and output (``embeddings`` (B, D), unit rows), its weights in
``model.onnx.data`` beside it (format 5), the source's ``tokenizer.json`` (padding off, truncation
at ``max_tokens``), tau and the calibration fitted on the validation pairs, and a ``config.json``
whose ``encoder`` says what it is (``"kind": "transformer"`` or ``"static"``, ``"special_tokens":
true``: the tokenizer adds the model's own, BERT's [CLS] and [SEP], a static model's none). Serving
then runs it with ONNX Runtime, no PyTorch; there are no PyTorch weights to fine-tune from. The
written graph is checked against its source on the validation questions (:data:`MAX_COSINE_GAP`); a
graph that fails writes nothing, and the output directory keeps what it held. Weights kept in
float16 or bfloat16 are widened to float32 first, and a model that brings its own modeling code
(``auto_map``) converts only when ``trust_remote_code`` says to run that code.

The graph is exported with PyTorch's TorchScript exporter (``dynamo=False``; the dynamo exporter
needs ``onnxscript``, which the train extra does not install): a transformer runs on a padded
batch with an attention mask, which that exporter handles, unlike the packed LSTM of
:mod:`model.training.onnx_graph`.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, normalizers
from torch import nn

from model.encoder import load_encoder
from model.files import check_writable
from model.model_dir import FORMAT_VERSION, ONNX, ONNX_DATA, TOKENIZER, sha256_file
from model.training.data import load_validation_pairs
from model.training.evaluation import PairEvaluator
from model.training.export import model_version, write_config, writing
from model.training.metrics import fit_logistic
from model.training.onnx_graph import OPSET

logger = logging.getLogger(__name__)

# The converted graph must give its source's cosines: checked on this many validation questions,
# each pair's cosine within this of sentence-transformers' own (all-MiniLM-L6-v2: 1.2e-6).
CHECKED_QUESTIONS = 1000
MAX_COSINE_GAP = 1e-3
# ONNX Runtime takes the weights that dupq reads for it (model/encoder.py) into the graph, where
# one weight may hold at most this many bytes: 7B embedders' token vectors are past it.
LARGEST_WEIGHT = 2**31
# Encoding the validation questions, the log says how far it got every so many seconds.
PROGRESS_EVERY_S, PROGRESS_SLICE = 30.0, 1024
# A StaticEmbedding reads every token; dupq reads this many (a question of DUPQ_MAX_QUESTION_CHARS'
# 1,000 characters has fewer).
STATIC_MAX_TOKENS = 2048


class Pooled(nn.Module):
    """The transformer with dupq's inputs (the attention mask from ``lengths``, token types 0),
    then the source's own Pooling module, or a StaticEmbedding's mean of its tokens' rows (no
    ``pooling``); then the modules after it (``head``: Dense and Normalize), run as
    sentence-transformers runs them on its features, cut to the first ``dim`` columns (all of them
    but for a Matryoshka cut) and L2-normalized: a width the graph states (the gather of [CLS]
    pooling would leave it symbolic)."""

    def __init__(
        self, transformer: nn.Module, pooling: nn.Module | None, head: Sequence[nn.Module], dim: int, cut: bool = False
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.pooling = pooling
        self.head = nn.ModuleList(head)
        self.dim = dim
        self.cut = cut

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).to(torch.int64)  # (B, T)
        if self.pooling is None:  # a StaticEmbedding: the mean of its tokens' rows, as its EmbeddingBag takes it
            table = cast(nn.EmbeddingBag, self.transformer.embedding).weight
            mean = (table[ids] * mask[..., None].to(table.dtype)).sum(1) / lengths.clamp(min=1)[:, None].to(table.dtype)
            # A text with no token (control characters only): the mean of every row, where sentence-transformers
            # gives a zero vector, which has no direction (the contract wants s(a, a) == 1).
            features = {"sentence_embedding": torch.where(lengths[:, None] > 0, mean, table.mean(0, keepdim=True))}
        else:
            states = self.transformer(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))[0]
            features = self.pooling({"token_embeddings": states, "attention_mask": mask})
        for module in self.head:
            features = module(features)
        vectors = features["sentence_embedding"]
        if self.cut:  # a Matryoshka cut: the first columns, normalized again if they were
            vectors = vectors[:, : self.dim]
        return F.normalize(vectors, dim=-1).reshape(-1, self.dim)  # (B, D)


def _source(st_dir: Path, trust_remote_code: bool = False) -> tuple[Any, nn.Module, Any, list[nn.Module], int, int]:
    """The sentence-transformers model of ``st_dir``: the model, its transformer (or its
    StaticEmbedding), its pooling (None for a StaticEmbedding, which averages its rows itself), the
    modules after that, its width and its longest input; refused with the reason unless it is a
    transformer and a Pooling module (any of its modes), or a StaticEmbedding, and then only Dense
    and Normalize modules."""
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers 6 moved the modules; 3 to 5 have them here only
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer  # type: ignore[no-redef]

    if not (st_dir / "modules.json").is_file():
        raise ValueError(f"{st_dir} is not a sentence-transformers model directory (no modules.json)")
    try:
        model = SentenceTransformer(str(st_dir), device="cpu", trust_remote_code=trust_remote_code)
    except ValueError as err:  # transformers' own, several lines naming an argument of its own
        if trust_remote_code or "trust_remote_code" not in str(err):
            raise
        raise ValueError(
            f"{st_dir}: its model runs Python code that it brings in its directory (auto_map in its config.json); "
            "--trust-remote-code runs that code, for a model whose code you have read or trust"
        ) from None
    modules = list(model)
    first = modules[0] if modules else None
    static = _is_static(first)  # no Pooling: it averages its rows itself
    pooling = None if static or len(modules) < 2 else modules[1]
    head = modules[1:] if static else modules[2:]
    if not (static or (isinstance(first, Transformer) and isinstance(pooling, Pooling))) or not all(
        isinstance(m, Normalize) or (isinstance(m, Dense) and _on_the_sentence(m)) for m in head
    ):
        names = ", ".join(type(m).__name__ for m in modules) or "no module"
        raise ValueError(
            f"{st_dir}: dupq converts a Transformer and its Pooling, or a StaticEmbedding, then Dense or Normalize "
            f"modules; this model is {names}"
        )
    dim = [_width(m) for m in (pooling or first, *head) if not isinstance(m, Normalize)][-1]
    if not dim:
        raise ValueError(f"{st_dir}: the model does not say the width of its vectors")
    longest = STATIC_MAX_TOKENS if static else model.max_seq_length
    if not longest:
        raise ValueError(f"{st_dir}: the model does not say its longest input (max_seq_length)")
    while head and isinstance(head[-1], Normalize):  # the graph's own normalization ends it
        head = head[:-1]
    network = cast(nn.Module, first if static else first.auto_model)  # type: ignore[union-attr]  # a Transformer
    return model, network, pooling, head, int(dim), int(longest)


def _is_static(module: Any) -> bool:
    """Whether ``module`` is sentence-transformers' StaticEmbedding (3.2 and later; model2vec's
    models load as one): a vector for each token, averaged."""
    return type(module).__name__ == "StaticEmbedding" and hasattr(module, "embedding")


def _widened(model: Any, st_dir: Path) -> str:
    """The type the source keeps its weights in, which are made float32 if they are not (float16
    and bfloat16, as the hub ships many models: ONNX Runtime's kernels for them on a CPU are few
    and slow, a graph mixing them with float32 did not load, and PyTorch's exporter failed on
    bfloat16). The same values, widened; the check compares the graph with the source widened so,
    as sentence-transformers runs it with ``model_kwargs={"dtype": torch.float32}``."""
    stored = ", ".join(sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()}))
    if stored != "float32":
        logger.info("%s keeps its weights as %s: converted as float32, the same values widened", st_dir, stored)
        model.float()
    return stored


def _on_the_sentence(dense: Any) -> bool:
    """Whether a Dense module reads and writes the sentence's vector (sentence-transformers 6 lets
    it read or write another feature, which dupq's graph does not carry)."""
    names = (getattr(dense, "module_input_name", None), getattr(dense, "module_output_name", None))
    return all(name in (None, "sentence_embedding") for name in names)


def _width(module: Any) -> int | None:
    """The width of the vector a Pooling or Dense module gives (sentence-transformers 6 renamed the
    method; the old name warns that it will go)."""
    width = getattr(module, "get_embedding_dimension", None) or module.get_sentence_embedding_dimension
    return width()


def _prompt(model: Any, pooling: Any, st_dir: Path, name: str | None) -> tuple[str | None, str]:
    """The name and text of the prompt that sentence-transformers' ``encode`` puts before each
    text: the one named (``""``: none), else the model's default one, else none. Refused where
    the pooling leaves the prompt's tokens out, which dupq's graph does not do."""
    prompts: dict[str, str] = dict(getattr(model, "prompts", None) or {})
    if name is None:
        name = getattr(model, "default_prompt_name", None)
    if not name:
        return None, ""
    if name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise ValueError(
            f"{st_dir}: the model has no prompt named {name!r} (its prompts: {known}; --prompt '' for none)"
        )
    text = prompts[name] or ""
    if text and not getattr(pooling, "include_prompt", True):
        raise ValueError(
            f"{st_dir}: its pooling leaves the tokens of the prompt {name!r} out (include_prompt false), which "
            "dupq's graph does not do; --prompt '' converts it without the prompt"
        )
    return name, text


def _serving_tokenizer(model: Any, max_tokens: int, prompt: str) -> Tokenizer:
    """A copy of the `tokenizers` Tokenizer behind the model's fast tokenizer as serving runs it:
    no padding, truncation at ``max_tokens``, and ``prompt`` put before each text ahead of the
    normalizer (the source lowercases its prompt with the text, as this does). A StaticEmbedding's
    is a `tokenizers` Tokenizer already, and adds no special tokens (it encodes without them)."""
    source = model.tokenizer
    tokenizer = Tokenizer.from_str(getattr(source, "backend_tokenizer", source).to_str())  # the source's stays
    if _is_static(model[0]):
        tokenizer.post_processor = None
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    if prompt:
        steps = [normalizers.Prepend(prompt)] + ([tokenizer.normalizer] if tokenizer.normalizer else [])
        tokenizer.normalizer = normalizers.Sequence(steps)
    return tokenizer


def _pooling_modes(pooling: Any) -> list[str]:
    """The pooling's modes, as sentence-transformers 6 (``pooling_mode``) or 3 to 5
    (``pooling_mode_<mode>_tokens`` flags) writes them."""
    config = pooling.get_config_dict()
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return [mode] if isinstance(mode, str) else list(mode)
    names = {  # sentence-transformers 6's names of the old flags
        "pooling_mode_cls_token": "cls",
        "pooling_mode_max_tokens": "max",
        "pooling_mode_mean_tokens": "mean",
        "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens": "weightedmean",
        "pooling_mode_lasttoken": "lasttoken",
    }
    return [names.get(key, key) for key, on in config.items() if key.startswith("pooling_mode") and on]


def export_graph(
    transformer: nn.Module,
    pooling: nn.Module | None,
    head: Sequence[nn.Module],
    dim: int,
    out: Path,
    cut: bool = False,
) -> None:
    """Write the ONNX graph of :class:`Pooled` over ``transformer``, ``pooling`` and ``head``
    (``dim`` columns out, the first ``dim`` of them where ``cut``), batch and length dynamic, to
    ``out/model.onnx``, its weights to ``out/model.onnx.data`` beside it: ONNX's protobuf holds at
    most 2 GiB (bge-m3 and multilingual-e5-large are past it), and serving loads the weights apart
    from the graph with less memory (a converted all-MiniLM-L6-v2: 147 to 177 against 235 to 273
    MiB). PyTorch's exporter writes a graph past 2 GiB as one file a weight, so the graph it
    writes is read back and saved with every weight in one file.

    The tracer warns wherever the code branches on a tensor's shape ("might cause the trace to
    be incorrect"), four times for all-MiniLM-L6-v2, and the exporter of indexing that negative
    indices would break (the pooling's are never negative): whether the trace holds for other
    batches and lengths is what :func:`convert`'s check of the written graph settles, on
    questions of every length, so those warnings are not shown."""
    import onnx

    wrapped = Pooled(transformer, pooling, head, dim, cut).eval()
    example = (
        torch.tensor([[1, 2, 3], [1, 3, 0]]),
        torch.tensor([3, 2], dtype=torch.int32),
    )  # any ids in the vocabulary
    with tempfile.TemporaryDirectory(dir=out) as exported, torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
        torch.onnx.export(
            wrapped,
            example,
            str(Path(exported) / ONNX),
            input_names=["ids", "lengths"],
            output_names=["embeddings"],
            dynamic_axes={"ids": {0: "batch", 1: "tokens"}, "lengths": {0: "batch"}, "embeddings": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
        graph = onnx.load(str(Path(exported) / ONNX))  # with its weights, wherever the exporter put them
    largest = max(graph.graph.initializer, key=lambda weight: len(weight.raw_data), default=None)
    if largest is not None and len(largest.raw_data) > LARGEST_WEIGHT:
        raise ValueError(
            f"its weight {largest.name} takes {len(largest.raw_data) / 2**30:.2f} GiB, and ONNX Runtime takes "
            f"a weight of at most {LARGEST_WEIGHT / 2**30:g} GiB from the memory that dupq reads them into"
        )
    onnx.save_model(
        graph,
        str(out / ONNX),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=ONNX_DATA,
        size_threshold=1024,  # smaller ones stay in the graph: ONNX Runtime reads shapes out of some at load
    )
    (out / ONNX_DATA).touch()  # there even for a graph with no weight that large
    (out / ONNX_DATA).chmod(0o644)  # onnx creates it 0600: a service user must be able to read it


def convert(
    st_dir: str | Path,
    valid_file: str | Path,
    out: str | Path,
    name: str | None = None,
    prompt_name: str | None = None,
    dim: int | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Write the dupq model directory ``out`` from the sentence-transformers model ``st_dir``,
    with tau and the calibration fitted on ``valid_file``; returns its config. ``prompt_name``
    chooses the source's prompt put before each question (default: the model's default prompt;
    ``""``: none). ``dim``: the vectors cut to their first ``dim`` columns, as
    sentence-transformers' ``truncate_dim`` cuts them (default: the model's saved
    ``truncate_dim``, if any, else every column). ``trust_remote_code``: run the Python code
    that a model brings in its directory (``auto_map`` in its ``config.json``), as
    sentence-transformers does when asked so; refused, named, without it."""
    started = time.time()
    st_dir, out = Path(st_dir), Path(out)
    if out.resolve() == st_dir.resolve():
        raise ValueError(f"--out {out} is the sentence-transformers model itself: its config.json would be overwritten")
    check_writable(out)
    valid, valid_report = load_validation_pairs(valid_file)
    model, transformer, pooling, head, width, max_tokens = _source(st_dir, trust_remote_code)
    stored = _widened(model, st_dir)
    prompt_name, prompt = _prompt(model, pooling, st_dir, prompt_name)
    dim = _truncated(model, st_dir, width, dim)
    cut = dim < width
    model.truncate_dim = dim if cut else None  # the reference below cuts its vectors as the graph does
    similarity = _similarity(model, st_dir, cut)
    with writing(out) as stage:  # on any error below, `out` keeps what it held
        try:
            export_graph(transformer, pooling, head, dim, stage, cut)
        except ValueError as err:
            raise ValueError(f"{st_dir}: {err}; nothing was written to {out}") from None
        _serving_tokenizer(model, max_tokens, prompt).save(str(stage / TOKENIZER))
        digests = [sha256_file(stage / name) for name in (ONNX, ONNX_DATA, TOKENIZER)]
        config: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": name or st_dir.resolve().name,
            "version": model_version(*digests),
            "encoder": {
                "kind": "transformer" if pooling else "static",
                "pooling": "+".join(_pooling_modes(pooling)) if pooling else "mean",
                "max_tokens": max_tokens,
                "special_tokens": True,
            },
            "dim": dim,
            "threshold": 0.5,  # fitted below, once the written graph can be run
            "calibration": {"slope": 1.0, "intercept": 0.0},
            "onnx_sha256": digests[0],
            "onnx_data_sha256": digests[1],
            "tokenizer_sha256": digests[2],
        }
        write_config(stage, config)
        encoder = load_encoder(stage, threads=0)  # every CPU: the threads share one copy of the weights
        scored = PairEvaluator(valid).score(_with_progress(encoder.encode))
        checked = spread_by_length(scored.texts, CHECKED_QUESTIONS)
        reference = model.encode(
            [scored.texts[i] for i in checked], prompt=prompt, normalize_embeddings=True, show_progress_bar=False
        )
        gap = cosine_gap(reference, scored.vectors[checked])
        if gap > MAX_COSINE_GAP:
            raise ValueError(
                f"{st_dir}: the converted graph's cosines differ from sentence-transformers' own by up to {gap:.2g} "
                f"over {len(checked)} validation questions (at most {MAX_COSINE_GAP:g} allowed); nothing was "
                f"written to {out}"
            )
        metrics = scored.metrics()
        slope, intercept = fit_logistic(scored.similarities, scored.labels)
        config["threshold"] = float(metrics["threshold"])
        config["calibration"] = {"slope": float(slope), "intercept": float(intercept)}
        config["converted"] = {
            "from": str(st_dir),
            "sentence_transformers_modules": [type(m).__name__ for m in model],
            "prompt": {"name": prompt_name, "text": prompt} if prompt_name else None,
            "truncate_dim": dim if cut else None,
            "similarity_fn_name": similarity,
            "weights_stored_as": stored,
            "trust_remote_code": trust_remote_code,
            "valid_file": {"path": str(valid_file), "sha256": valid_report.sha256(), "pairs": valid_report.kept},
            "cosine_check": {"questions": len(checked), "max_gap": gap},
            "duration_s": round(time.time() - started, 1),
            "torch": torch.__version__,
        }
        config["validation"] = {k: round(float(v), 5) for k, v in metrics.items()}
        write_config(stage, config)
    logger.info("converted %s to %s: %d-d, tau %.3f, cosines within %.2g", st_dir, out, dim, config["threshold"], gap)
    return config


def _with_progress(encode: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
    """``encode`` a slice of questions at a time, saying in the log how far it got every
    :data:`PROGRESS_EVERY_S` seconds: a model of half a billion parameters takes minutes over the
    validation questions (the vectors are the same in slices: a question's does not depend on its
    batch)."""

    def encode_saying_how_far(texts: list[str]) -> np.ndarray:
        started = said = time.monotonic()
        parts: list[np.ndarray] = []
        for done in range(PROGRESS_SLICE, len(texts) + PROGRESS_SLICE, PROGRESS_SLICE):
            parts.append(encode(texts[done - PROGRESS_SLICE : done]))
            now = time.monotonic()
            if now - said >= PROGRESS_EVERY_S and done < len(texts):
                rate = done / (now - started)
                logger.info("encoded %d of %d validation questions (%.0f a second)", done, len(texts), rate)
                said = now
        return np.concatenate(parts) if parts else encode(texts)

    return encode_saying_how_far


def _truncated(model: Any, st_dir: Path, width: int, dim: int | None) -> int:
    """The width of the converted vectors: ``dim`` (``--dim``; refused, naming both, unless it is 1
    to ``width``), else the ``truncate_dim`` saved with the model (sentence-transformers 6 saves
    it and cuts every vector to it; one past ``width`` cuts nothing, there as here), else
    ``width``."""
    if dim is None:
        return min(int(getattr(model, "truncate_dim", None) or width), width)
    if not 1 <= dim <= width:
        raise ValueError(f"{st_dir}: --dim is {dim}, but the model's vectors have {width} columns")
    return dim


def _similarity(model: Any, st_dir: Path, cut: bool) -> str:
    """The similarity the source scores by (``similarity_fn_name``), with a warning where it is not
    the cosine that dupq scores by: a dot product of vectors that are not unit vectors (no
    Normalize module last, or cut by ``truncate_dim``), a distance."""
    similarity = str(getattr(model, "similarity_fn_name", None) or "cosine")
    unit = type(model[-1]).__name__ == "Normalize" and not cut
    if similarity != "cosine" and not (similarity == "dot" and unit):
        logger.warning(
            "%s scores by %s; dupq scores by the cosine of its vectors, on which tau and the calibration are fitted",
            st_dir,
            similarity,
        )
    return similarity


def spread_by_length(texts: list[str], k: int) -> np.ndarray:
    """Indices of at most ``k`` of ``texts`` spread evenly over their lengths, the longest
    included (those the truncation reaches), in length order."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    if len(order) <= k:
        return order
    return order[np.unique(np.linspace(0, len(order) - 1, k).round().astype(int))]


def cosine_gap(reference: np.ndarray, converted: np.ndarray) -> float:
    """The largest difference between two encoders' cosines of the same texts (unit rows, one
    per text, in the same order): how far the converted model is from its source."""
    return float(np.abs(reference @ reference.T - converted @ converted.T).max())
