"""`dupq convert`: a sentence-transformers model (a tiny BERT with random weights, built here; no
download) made into a dupq model directory that serves the same cosines."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from model.encoder import load_encoder
from model.model_dir import ModelDirError, read_config, sha256_file
from model.training.export import load_network

from ...conftest import CORPUS, QUESTIONS
from .test_trainer import _pair_file

OTHER_SCRIPTS = ["Сколько тебе лет?", "你今年多大了？", "Quel âge as-tu ?", "Wie alt bist du? 🙂"]


def _tiny_transformer(
    path: Path, pooling: str | tuple[str, ...] = "mean", kind: str = "bert", head: list | None = None
) -> Path:
    """A sentence-transformers model of a tiny randomly initialised ``kind`` (bert, distilbert,
    mpnet, roberta, modernbert, xlm-roberta with a unigram tokenizer, t5's encoder; qwen2, a decoder whose
    tokenizer ends each text with [SEP] as its end-of-text token), its word pieces trained on the
    test questions, its 32 columns pooled, then ``head`` (by default a Normalize module)."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram, WordPiece
    from tokenizers.trainers import UnigramTrainer, WordPieceTrainer

    # BERT's tokenizer gives token types, the others' do not; MPNet and RoBERTa pad with id 1 and count
    # positions from it, the BERTs pad with 0.
    bert = kind in ("bert", "distilbert")
    roles = ["cls_token", "pad_token", "sep_token", "unk_token", "mask_token"]  # in the order of RoBERTa's ids
    specials = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
    if bert:
        specials.insert(0, specials.pop(1))  # [PAD] is 0
    if kind == "xlm-roberta":  # SentencePiece's unigram model, as bge-m3 and multilingual-e5 tokenize
        tokenizer = Tokenizer(Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = UnigramTrainer(vocab_size=200, special_tokens=specials, unk_token="[UNK]")
        tokenizer.train_from_iterator(CORPUS + QUESTIONS + OTHER_SCRIPTS, trainer)
    else:
        tokenizer = Tokenizer(WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.train_from_iterator(CORPUS + QUESTIONS, WordPieceTrainer(vocab_size=150, special_tokens=specials))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = (
        processors.TemplateProcessing(single="$A [SEP]", special_tokens=[("[SEP]", sep)])
        if kind == "qwen2"
        else processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
    )
    torch.manual_seed(0)
    sizes = {"vocab_size": tokenizer.get_vocab_size(), "max_position_embeddings": 66}
    if kind == "distilbert":
        config = transformers.DistilBertConfig(**sizes, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    elif kind == "t5":  # the encoder alone, relative positions (sentence-t5, GTR)
        t5 = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2}
        config = transformers.T5Config(vocab_size=sizes["vocab_size"], **t5, pad_token_id=specials.index("[PAD]"))
    elif kind == "qwen2":  # causal attention, grouped keys and values, rotary positions
        layers = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
        ids = {"pad_token_id": specials.index("[PAD]"), "eos_token_id": sep}
        config = transformers.Qwen2Config(**sizes, **layers, **ids, num_key_value_heads=1)
    else:
        layers = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
        configs = {"bert": transformers.BertConfig, "mpnet": transformers.MPNetConfig}
        ids = {"pad_token_id": specials.index("[PAD]")}
        if kind == "modernbert":  # attention over a window of 16 tokens in every other layer
            configs["modernbert"] = transformers.ModernBertConfig
            specials_ids = {"bos_token_id": cls, "cls_token_id": cls, "eos_token_id": sep, "sep_token_id": sep}
            ids |= {**specials_ids, "global_attn_every_n_layers": 2, "local_attention": 16}
        configs["xlm-roberta"] = transformers.XLMRobertaConfig
        config = configs.get(kind, transformers.RobertaConfig)(**sizes, **layers, **ids)
    raw = path / "raw"
    network = transformers.T5EncoderModel(config) if kind == "t5" else transformers.AutoModel.from_config(config)
    network.save_pretrained(raw)
    inputs = {} if kind == "bert" else {"model_input_names": ["input_ids", "attention_mask"]}
    names = dict(zip(roles, ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"], strict=True))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, **names, **inputs).save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=32)
    modules = [transformer, Pooling(32, pooling_mode=pooling), *(head if head is not None else [Normalize()])]
    st_dir = path / "st"
    SentenceTransformer(modules=modules, device="cpu").save(str(st_dir))
    return st_dir


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("convert")
    st_dir = _tiny_transformer(tmp)
    out = tmp / "dupq"
    assert main(["convert", str(st_dir), "--valid", str(_pair_file(tmp / "pairs.tsv")), "--out", str(out)]) == 0
    return st_dir, out


def test_the_converted_model_serves_the_cosines_of_sentence_transformers(converted: tuple[Path, Path]) -> None:
    from sentence_transformers import SentenceTransformer

    st_dir, out = converted
    texts = [*QUESTIONS, "A question far longer than the model reads: " + "word " * 60]
    reference = SentenceTransformer(str(st_dir), device="cpu").encode(texts, normalize_embeddings=True)
    vectors = load_encoder(out, threads=2).encode(texts, batch_size=4)
    np.testing.assert_allclose(vectors @ vectors.T, reference @ reference.T, atol=1e-4)
    np.testing.assert_allclose(vectors, reference, atol=1e-4)


@pytest.mark.parametrize("kind", ["distilbert", "mpnet", "roberta", "xlm-roberta", "modernbert", "t5", "qwen2"])
def test_other_transformers_convert_to_the_same_cosines(tmp_path: Path, kind: str) -> None:
    # all-mpnet-base-v2, the DistilBERT and RoBERTa models: no token types, and for the last two
    # positions counted from their padding id (1), where dupq pads with 0. XLM-RoBERTa (bge-m3,
    # multilingual-e5) splits text into SentencePiece's pieces, other scripts included; T5's encoder
    # (sentence-t5, GTR) places tokens by relative position and takes no token types. A decoder
    # (Qwen2, as the Qwen3 embedders are) pools its last token's state, the only one that has read
    # the whole text.
    from sentence_transformers import SentenceTransformer

    pooling = "lasttoken" if kind == "qwen2" else "mean"
    st_dir, out = _tiny_transformer(tmp_path, pooling=pooling, kind=kind), tmp_path / "dupq"
    assert main(["convert", str(st_dir), "--valid", str(_pair_file(tmp_path / "pairs.tsv")), "--out", str(out)]) == 0
    texts = [*QUESTIONS, *OTHER_SCRIPTS, "A question far longer than the model reads: " + "word " * 60]
    reference = SentenceTransformer(str(st_dir), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(load_encoder(out).encode(texts, batch_size=4), reference, atol=1e-4)


def test_a_static_embedding_converts_to_the_mean_of_its_token_rows(tmp_path: Path) -> None:
    # model2vec's models and sentence-transformers' static ones: a vector a token, averaged, no
    # special tokens; refused before as "the first module is not a Transformer".
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
    from tokenizers import Tokenizer

    _tiny_transformer(tmp_path)  # for its word pieces, trained on the test questions
    static = StaticEmbedding(Tokenizer.from_file(str(tmp_path / "raw" / "tokenizer.json")), embedding_dim=24)
    st_dir, out = tmp_path / "static", tmp_path / "dupq"
    SentenceTransformer(modules=[static, Normalize()], device="cpu").save(str(st_dir))
    argv = ["convert", str(st_dir), "--valid", str(_pair_file(tmp_path / "pairs.tsv")), "--out", str(out)]
    assert main(argv) == 0
    config = read_config(out)
    assert config["encoder"] == {"kind": "static", "pooling": "mean", "max_tokens": 2048, "special_tokens": True}
    assert config["dim"] == 24
    texts = [*QUESTIONS, *OTHER_SCRIPTS, "A question far longer than a transformer reads: " + "word " * 300]
    source = SentenceTransformer(str(st_dir), device="cpu")
    assert 1000 < len(source[0].tokenizer.encode(texts[-1]).ids) < 2048  # every token read, as the source reads
    reference = source.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(load_encoder(out, threads=2).encode(texts, batch_size=4), reference, atol=1e-5)
    assert main([*argv[:-1], str(tmp_path / "cut"), "--dim", "8"]) == 0  # Matryoshka models of this kind
    cut = SentenceTransformer(str(st_dir), device="cpu", truncate_dim=8).encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(load_encoder(tmp_path / "cut").encode(texts), cut, atol=1e-5)
    with pytest.raises(ModelDirError, match="converted static model"):
        load_network(out)
    # A text it reads no token of: sentence-transformers' zero vector has no direction; dupq gives
    # the mean of every row, so that such a question is its own duplicate, as the contract wants.
    nothing = ["\x01", "\x02\x03"]
    assert not source.encode(nothing).any()
    vectors = load_encoder(out).encode([*nothing, *QUESTIONS[:2]])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    rows = source[0].embedding.weight.detach().numpy().mean(0)
    np.testing.assert_allclose(vectors[:2], np.stack([rows, rows]) / np.linalg.norm(rows), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_weights_kept_in_half_precision_convert_widened(tmp_path: Path, dtype: str) -> None:
    # Models the hub ships in float16 or bfloat16 (the Qwen3 embedders) ended in ONNX Runtime's
    # "Type parameter (T) of Optype (LayerNormalization) bound to different types", or in PyTorch's
    # exporter: "ScalarType ComplexDouble is an unexpected tensor scalar type".
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    st_dir, out = _tiny_transformer(tmp_path), tmp_path / "dupq"
    half = transformers.AutoModel.from_pretrained(str(tmp_path / "raw")).to(getattr(torch, dtype))
    half.save_pretrained(str(st_dir))  # the transformer's weights, as the hub ships them
    assert main(["convert", str(st_dir), "--valid", str(_pair_file(tmp_path / "pairs.tsv")), "--out", str(out)]) == 0
    assert read_config(out)["converted"]["weights_stored_as"] == dtype
    source = SentenceTransformer(str(st_dir), device="cpu")
    assert next(source.parameters()).dtype == getattr(torch, dtype)
    texts = [*QUESTIONS, *OTHER_SCRIPTS]
    reference = source.float().encode(texts, normalize_embeddings=True)  # the same weights, widened
    np.testing.assert_allclose(load_encoder(out).encode(texts), reference, atol=1e-4)


@pytest.mark.parametrize(
    "pooling", ["cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken", ("cls", "mean", "max")]
)
def test_every_pooling_mode_converts_to_the_same_cosines(tmp_path: Path, pooling: str | tuple[str, ...]) -> None:
    # bge-small-en-v1.5 pools the [CLS] token's state: it was refused, as every mode but the mean was.
    from sentence_transformers import SentenceTransformer

    st_dir, out = _tiny_transformer(tmp_path, pooling=pooling), tmp_path / "dupq"
    assert main(["convert", str(st_dir), "--valid", str(_pair_file(tmp_path / "pairs.tsv")), "--out", str(out)]) == 0
    texts = [*QUESTIONS, *OTHER_SCRIPTS, "A question far longer than the model reads: " + "word " * 60]
    reference = SentenceTransformer(str(st_dir), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(load_encoder(out).encode(texts, batch_size=4), reference, atol=1e-4)
    modes = [pooling] if isinstance(pooling, str) else list(pooling)
    assert read_config(out)["encoder"]["pooling"] == "+".join(modes)
    assert read_config(out)["dim"] == 32 * len(modes)


def test_dense_layers_after_the_pooling_convert_to_the_same_cosines(tmp_path: Path) -> None:
    # distiluse-base-multilingual-cased is a DistilBERT, mean pooling, then a Dense layer 768 to
    # 512 with tanh: it was refused. Here 32 to 16 with tanh, then 16 to 16 with GELU and a residual.
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    torch.manual_seed(2)
    head = [Dense(32, 16), Dense(16, 16, activation_function=torch.nn.GELU(), use_residual=True), Normalize()]
    st_dir, out = _tiny_transformer(tmp_path, kind="distilbert", head=head), tmp_path / "dupq"
    assert main(["convert", str(st_dir), "--valid", str(_pair_file(tmp_path / "pairs.tsv")), "--out", str(out)]) == 0
    texts = [*QUESTIONS, *OTHER_SCRIPTS, "A question far longer than the model reads: " + "word " * 60]
    reference = SentenceTransformer(str(st_dir), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(load_encoder(out).encode(texts, batch_size=4), reference, atol=1e-4)
    config = read_config(out)
    assert config["dim"] == 16
    assert config["converted"]["sentence_transformers_modules"] == [
        "Transformer",
        "Pooling",
        "Dense",
        "Dense",
        "Normalize",
    ]


def _with_prompts(st_dir: Path, out: Path, include_prompt: bool = True) -> Path:
    """``st_dir`` saved again with a default prompt "Query: " (capitalised: the tokenizer lowercases
    it with the text) and an empty "document" one, in its configuration."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(
        str(st_dir), device="cpu", prompts={"query": "Query: ", "document": ""}, default_prompt_name="query"
    )
    model[1].include_prompt = include_prompt
    model.save(str(out))
    return out


def test_the_source_s_prompt_is_put_before_every_question(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # sentence-transformers' encode puts the default prompt before each text: the converted model
    # must too (it was refused, its cosines far from the source's), or the one --prompt names.
    from sentence_transformers import SentenceTransformer

    st_dir = _with_prompts(_tiny_transformer(tmp_path), tmp_path / "prompted")
    valid = str(_pair_file(tmp_path / "pairs.tsv"))
    source = SentenceTransformer(str(st_dir), device="cpu")
    texts = [*QUESTIONS, "A question far longer than the model reads: " + "word " * 60]
    runs = [
        ([], "Query: ", {"name": "query", "text": "Query: "}),
        (["--prompt", ""], "", None),
        (["--prompt", "document"], "", {"name": "document", "text": ""}),
    ]
    for i, (flag, prompt, said) in enumerate(runs):
        out = tmp_path / f"dupq-{i}"
        assert main(["convert", str(st_dir), "--valid", valid, "--out", str(out), *flag]) == 0
        reference = source.encode(texts, prompt=prompt, normalize_embeddings=True)
        np.testing.assert_allclose(load_encoder(out).encode(texts, batch_size=4), reference, atol=1e-4)
        assert read_config(out)["converted"]["prompt"] == said
    prompted = source.encode(texts[:2], normalize_embeddings=True)
    assert np.abs(prompted - source.encode(texts[:2], prompt="", normalize_embeddings=True)).max() > 1e-2
    capsys.readouterr()

    assert main(["convert", str(st_dir), "--valid", valid, "--out", str(tmp_path / "o"), "--prompt", "passage"]) == 1
    err = capsys.readouterr().err
    assert "the model has no prompt named 'passage' (its prompts: document, query; --prompt '' for none)" in err
    assert not (tmp_path / "o").exists()


def test_a_pooling_that_leaves_the_prompt_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st_dir = _with_prompts(_tiny_transformer(tmp_path), tmp_path / "instructor", include_prompt=False)
    argv = ["convert", str(st_dir), "--valid", str(_pair_file(tmp_path / "p.tsv")), "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    assert "leaves the tokens of the prompt 'query' out (include_prompt false)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main([*argv, "--prompt", ""]) == 0  # without the prompt, every token is pooled


def test_a_matryoshka_cut_converts_to_the_source_s_cut_cosines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # sentence-transformers 6 saves a model's truncate_dim and cuts every vector to it: such a model
    # was refused, its cut cosines up to 0.095 from the graph's whole ones. --dim cuts as
    # truncate_dim does, and overrides the saved one.
    from sentence_transformers import SentenceTransformer

    st_dir = _tiny_transformer(tmp_path)
    SentenceTransformer(str(st_dir), device="cpu", truncate_dim=8).save(str(tmp_path / "cut"))
    SentenceTransformer(str(st_dir), device="cpu", truncate_dim=64).save(str(tmp_path / "wide"))  # cuts nothing
    valid = str(_pair_file(tmp_path / "pairs.tsv"))
    texts = [*QUESTIONS, "A question far longer than the model reads: " + "word " * 60]
    for flag, dim in (([], 8), (["--dim", "16"], 16), (["--dim", "32"], 32)):
        out = tmp_path / f"dupq-{dim}"
        assert main(["convert", str(tmp_path / "cut"), "--valid", valid, "--out", str(out), *flag]) == 0
        reference = SentenceTransformer(str(st_dir), device="cpu", truncate_dim=dim).encode(
            texts, normalize_embeddings=True
        )
        assert reference.shape == (len(texts), dim)
        np.testing.assert_allclose(load_encoder(out).encode(texts, batch_size=4), reference, atol=1e-4)
        assert read_config(out)["dim"] == dim
        assert read_config(out)["converted"]["truncate_dim"] == (dim if dim < 32 else None)
    assert main(["convert", str(tmp_path / "wide"), "--valid", valid, "--out", str(tmp_path / "dupq-64")]) == 0
    assert read_config(tmp_path / "dupq-64")["dim"] == 32
    assert read_config(tmp_path / "dupq-64")["converted"]["truncate_dim"] is None
    capsys.readouterr()
    for dim in ("0", "33"):
        assert main(["convert", str(st_dir), "--valid", valid, "--out", str(tmp_path / "o"), "--dim", dim]) == 1
        assert f"--dim is {dim}, but the model's vectors have 32 columns" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("normalized", [True, False])
def test_a_source_that_scores_by_another_similarity_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, normalized: bool
) -> None:
    # dupq scores by the cosine: a model that scores by the dot product of vectors of any length
    # converts to the cosines of them, which the log says; its unit vectors' dot product is a cosine.
    from sentence_transformers import SentenceTransformer

    st_dir = _tiny_transformer(tmp_path, head=None if normalized else [])
    SentenceTransformer(str(st_dir), device="cpu", similarity_fn_name="dot").save(str(tmp_path / "dot"))
    out = tmp_path / "dupq"
    with caplog.at_level("WARNING", logger="model.training.convert"):
        argv = ["convert", str(tmp_path / "dot"), "--valid", str(_pair_file(tmp_path / "p.tsv")), "--out", str(out)]
        assert main(argv) == 0
    warned = [r.getMessage() for r in caplog.records if r.name == "model.training.convert"]
    said = "scores by dot; dupq scores by the cosine of its vectors, on which tau and the calibration are fitted"
    assert [said in message for message in warned] == ([] if normalized else [True])
    assert read_config(out)["converted"]["similarity_fn_name"] == "dot"


def test_a_conversion_shows_no_tracer_warnings_and_no_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tracer's "might cause the trace to be incorrect" (four of them for all-MiniLM-L6-v2) and
    # the reference's progress bar went to the operator's terminal; the check of the written graph
    # is what says whether the trace holds.
    import warnings

    st_dir, out = _tiny_transformer(tmp_path), tmp_path / "dupq"
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["convert", str(st_dir), "--valid", str(_pair_file(tmp_path / "p.tsv")), "--out", str(out)]) == 0
    assert not [w for w in caught if "trace" in str(w.message) or "aten::index" in str(w.message)]
    assert "Batches" not in capsys.readouterr().err


def test_the_converted_directory_says_what_it_is(converted: tuple[Path, Path]) -> None:
    st_dir, out = converted
    config = read_config(out)  # every file serving needs, checksums included
    assert config["encoder"] == {"kind": "transformer", "pooling": "mean", "max_tokens": 32, "special_tokens": True}
    assert config["dim"] == 32 and config["name"] == "st" and -1 <= config["threshold"] <= 1
    assert config["converted"]["from"] == str(st_dir) and config["converted"]["valid_file"]["pairs"] == 8
    assert config["converted"]["sentence_transformers_modules"] == ["Transformer", "Pooling", "Normalize"]
    assert config["converted"]["cosine_check"]["questions"] == 12  # every distinct validation question
    assert config["converted"]["cosine_check"]["max_gap"] < 1e-4
    assert not (out / "model.safetensors").exists()
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    assert tokenizer["padding"] is None and tokenizer["truncation"]["max_length"] == 32
    with pytest.raises(ModelDirError, match="converted transformer model"):
        load_network(out)


def test_a_long_conversion_says_how_far_it_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A model of half a billion parameters took minutes over 400 validation pairs, saying nothing.
    from model.training import convert as module

    monkeypatch.setattr(module, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(module, "PROGRESS_SLICE", 5)
    st_dir, out = _tiny_transformer(tmp_path), tmp_path / "o"
    with caplog.at_level("INFO"):
        assert main(["convert", str(st_dir), "--valid", str(_pair_file(tmp_path / "p.tsv")), "--out", str(out)]) == 0
    said = [r.getMessage().split(" (")[0] for r in caplog.records if r.getMessage().startswith("encoded ")]
    assert said == ["encoded 5 of 12 validation questions", "encoded 10 of 12 validation questions"]
    assert read_config(out)["converted"]["cosine_check"]["max_gap"] < 1e-4  # the slices, whole


def test_a_model_that_brings_its_own_code_converts_only_when_trusted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # nomic-embed, jina-embeddings and gte-*-v1.5 bring their modeling code (auto_map); convert ended
    # in transformers' own lines, naming an argument dupq does not have (trust_remote_code=True).
    from sentence_transformers import SentenceTransformer

    st_dir, out = _tiny_transformer(tmp_path), tmp_path / "dupq"
    config = json.loads((st_dir / "config.json").read_text())
    config |= {"model_type": "site-bert", "auto_map": {"AutoConfig": "site.SiteConfig", "AutoModel": "site.SiteModel"}}
    (st_dir / "config.json").write_text(json.dumps(config))
    (st_dir / "site.py").write_text(
        "from transformers import BertConfig, BertModel\n\n\n"
        "class SiteConfig(BertConfig):\n    model_type = 'site-bert'\n\n\n"
        "class SiteModel(BertModel):\n    config_class = SiteConfig\n"
    )
    argv = ["convert", str(st_dir), "--valid", str(_pair_file(tmp_path / "pairs.tsv")), "--out", str(out)]
    capsys.readouterr()
    assert main(argv) == 1
    said = [line for line in capsys.readouterr().err.splitlines() if "dupq convert" in line or "trust" in line]
    assert len(said) == 1 and not out.exists()  # one line
    assert said[0].startswith(f"dupq convert: error: {st_dir}: its model runs Python code that it brings in its")
    assert said[0].endswith("--trust-remote-code runs that code, for a model whose code you have read or trust")
    assert main([*argv, "--trust-remote-code"]) == 0
    assert read_config(out)["converted"]["trust_remote_code"] is True
    source = SentenceTransformer(str(st_dir), device="cpu", trust_remote_code=True)
    assert type(source[0].auto_model).__name__ == "SiteModel"
    reference = source.encode(QUESTIONS, normalize_embeddings=True)
    np.testing.assert_allclose(load_encoder(out).encode(QUESTIONS), reference, atol=1e-4)


def test_a_model_of_other_modules_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sentence_transformers.sentence_transformer.modules import LayerNorm

    st_dir = _tiny_transformer(tmp_path, head=[LayerNorm(32)])
    argv = ["convert", str(st_dir), "--valid", str(_pair_file(tmp_path / "p.tsv")), "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    said = "dupq converts a Transformer and its Pooling, or a StaticEmbedding, then Dense or Normalize modules; "
    assert said + "this model is Transformer, Pooling, LayerNorm" in err
    assert not (tmp_path / "o").exists()
    assert main(["convert", str(tmp_path), "--valid", "x", "--out", str(tmp_path / "o")]) == 1
    capsys.readouterr()
    config = (st_dir / "config.json").read_bytes()
    assert main([*argv[:4], "--out", str(st_dir)]) == 1  # it wrote its own config.json over the source's
    assert "is the sentence-transformers model itself: its config.json would be overwritten" in capsys.readouterr().err
    assert (st_dir / "config.json").read_bytes() == config


def test_a_graph_that_strays_from_its_source_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from transformers import BertModel

    from model.training import convert as module

    export_graph = module.export_graph

    def another_transformer(transformer: torch.nn.Module, *after: object) -> None:
        torch.manual_seed(1)
        export_graph(BertModel(transformer.config), *after)  # the source's shape, other weights

    monkeypatch.setattr(module, "export_graph", another_transformer)
    st_dir, out = _tiny_transformer(tmp_path), tmp_path / "o"
    assert main(["convert", str(st_dir), "--valid", str(_pair_file(tmp_path / "p.tsv")), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the converted graph's cosines differ from sentence-transformers' own by up to" in err
    assert f"over 12 validation questions (at most 0.001 allowed); nothing was written to {out}" in err
    assert not out.exists()


def test_the_graph_keeps_its_weights_beside_it_which_serving_checks_and_copies(
    converted: tuple[Path, Path], tmp_path: Path
) -> None:
    # ONNX's protobuf holds at most 2 GiB: bge-m3 and multilingual-e5-large (560 million
    # parameters) ended in a traceback of PyTorch's exporter, then were refused by their size.
    import onnx

    _, out = converted
    config = read_config(out)
    assert config["format_version"] == 5 and config["onnx_data_sha256"] == sha256_file(out / "model.onnx.data")
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    outside = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert outside and all(t.external_data[0].value == "model.onnx.data" for t in outside)
    assert all(len(t.raw_data) < 1024 for t in graph.graph.initializer if t not in outside)  # shapes, say
    assert (out / "model.onnx").stat().st_size < (out / "model.onnx.data").stat().st_size
    assert (out / "model.onnx.data").stat().st_mode & 0o044 == 0o044  # onnx makes it 0600: a service user reads it
    served = tmp_path / "served"
    shutil.copytree(out, served)
    encoder = load_encoder(served)
    before = encoder.encode(QUESTIONS)
    weights = served / "model.onnx.data"
    with open(weights, "r+b") as handle:  # written over in place, as dupq never writes a model
        handle.write(bytes(weights.stat().st_size))
    np.testing.assert_array_equal(encoder.encode(QUESTIONS), before)  # a copy, not mapped from the file
    with pytest.raises(ModelDirError, match=r"model\.onnx\.data does not match config\.json"):
        load_encoder(served)
    weights.unlink()
    with pytest.raises(ModelDirError, match=r"is incomplete: missing model\.onnx\.data$"):
        load_encoder(served)


def test_a_weight_past_what_onnx_runtime_takes_from_memory_is_refused_by_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A weight past 2 GiB (a 7B embedder's token vectors, 151,646 x 3,584 float32: 2.02 GiB) ended in
    # ONNX Runtime's "exceeds the 2147483648 byte limit for embedded initializer data" (a random BERT
    # whose token vectors take 2.29 GiB). Here the limit is lowered below a tiny model's weights.
    from model.training import convert as module

    monkeypatch.setattr(module, "LARGEST_WEIGHT", 1024)
    st_dir, out = _tiny_transformer(tmp_path), tmp_path / "o"
    assert main(["convert", str(st_dir), "--valid", str(_pair_file(tmp_path / "p.tsv")), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"dupq convert: error: {st_dir}: its weight transformer.embeddings.word_embeddings.weight takes" in err
    assert "GiB, and ONNX Runtime takes a weight of at most 9.53674e-07 GiB from the memory that dupq" in err
    assert f"reads them into; nothing was written to {out}" in err and not out.exists()


def test_a_trained_model_written_over_a_converted_one_leaves_no_weights_of_it(
    converted: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from model.training.export import writing

    _, out = converted
    served = tmp_path / "served"
    shutil.copytree(out, served)
    with writing(served) as stage:
        for name in ("config.json", "model.onnx", "tokenizer.json", "model.safetensors"):
            shutil.copy(tiny_model_dir / name, stage / name)
    assert not (served / "model.onnx.data").exists()
    assert read_config(served)["format_version"] == 4


def test_a_conversion_that_is_stopped_leaves_the_model_that_was_there(
    converted: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model.training.evaluation import PairEvaluator

    st_dir, _ = converted
    out = tmp_path / "served"
    shutil.copytree(tiny_model_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    score = PairEvaluator.score

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the validation pairs are scored, tau not yet fitted

    monkeypatch.setattr(PairEvaluator, "score", stopped)
    argv = ["convert", str(st_dir), "--valid", str(_pair_file(tmp_path / "p.tsv")), "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # not a servable model with tau 0.5
    monkeypatch.setattr(PairEvaluator, "score", score)
    assert main(argv) == 0
    assert read_config(out)["encoder"]["kind"] == "transformer"
    assert not (out / "model.safetensors").exists()  # the trained model's weights went with it


def test_the_service_serves_a_converted_model_and_re_embeds_the_store_for_it(
    converted: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    from tests.app.conftest import make_settings, serving

    st_dir, out = converted
    data = tmp_path / "data"
    with serving(make_settings(tiny_model_dir, data)) as client:
        assert client.post("/questions", json={"questions": [{"id": "q1", "text": QUESTIONS[0]}]}).status_code == 201
    with serving(make_settings(out, data, on_model_change="reembed")) as client:
        pair = {"question1": QUESTIONS[0], "question2": QUESTIONS[1]}
        answer = client.post("/similarity", json=pair).json()
        reference = SentenceTransformer(str(st_dir), device="cpu").encode(QUESTIONS[:2], normalize_embeddings=True)
        assert answer["similarity"] == pytest.approx(float(reference[0] @ reference[1]), abs=1e-4)
        assert answer["model"] == f"st-{read_config(out)['version']}"
        match = client.post("/duplicates", json={"question": QUESTIONS[0], "k": 1}).json()["matches"][0]
        assert match["id"] == "q1" and match["similarity"] == pytest.approx(1.0, abs=1e-5)  # re-embedded


def test_the_cost_of_a_converted_model_s_call_can_be_fitted(converted: tuple[Path, Path]) -> None:
    # bench/encoder.py --cost-model drew its token ids up to config.json's vocab_size, which only
    # the LSTM's config names: on a converted model it stopped with a KeyError.
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    run = subprocess.run(
        [sys.executable, str(root / "bench" / "encoder.py"), "--model", str(converted[1]), "--cost-model"],
        capture_output=True,
        text=True,
        check=True,
    )
    fit = json.loads(run.stdout)
    assert set(fit) == {"call_us", "step_us", "row_step_us", "row_us", "call_cost", "step_cost"}
    assert all(np.isfinite(value) for value in fit.values())
