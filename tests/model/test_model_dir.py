"""Reading a model directory for serving: what is refused, and how it says so."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model.encoder import load_encoder
from model.model_dir import FORMAT_VERSION, ONE_FILE_FORMAT, ModelDirError, read_config
from model.tokenizer import UNK_ID


def _copy(source: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def _edit_config(model_dir: Path, **changes: object) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config.update(changes)
    (model_dir / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))


def test_a_complete_directory_of_this_format_loads(tiny_model_dir: Path) -> None:
    config = read_config(tiny_model_dir)
    assert config["format_version"] == ONE_FILE_FORMAT == 4  # trained: the graph holds its weights
    assert FORMAT_VERSION == 5
    assert {p.name for p in tiny_model_dir.iterdir()} >= {"config.json", "model.onnx", "tokenizer.json"}
    assert not any(p.suffix in {".pt", ".pkl", ".bin"} for p in tiny_model_dir.iterdir())


def test_serving_needs_no_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    lean = _copy(tiny_model_dir, tmp_path, "lean")
    (lean / "model.safetensors").unlink()  # what training and `dupq upgrade` read, not serving
    assert load_encoder(lean).encode(["How old are you?"]).shape == (1, 24)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: shutil.rmtree(d), r"does not exist"),
        (lambda d: (d / "tokenizer.json").unlink(), r"missing tokenizer\.json"),
        (lambda d: (d / "config.json").write_text("{not json"), r"config\.json is not valid JSON"),
        (lambda d: (d / "model.onnx").write_bytes(b"not a graph"), r"model\.onnx does not match config\.json"),
        (lambda d: (d / "tokenizer.json").write_text("{}"), r"tokenizer\.json does not match config\.json"),
        (lambda d: _edit_config(d, threshold=None), r"lacks the field\(s\) 'threshold'"),
        (lambda d: _edit_config(d, format_version=6), r"has format 6; this dupq reads up to 5"),
        (lambda d: _edit_config(d, encoder={"hidden_dim": 16}), r"'encoder' must hold the architecture"),
        # Both were "has no model.onnx (format 1, written by an older dupq): run `dupq upgrade`", which
        # then refused them as lacking 'encoder'.
        (
            lambda d: (d / "modules.json").write_text("[]"),
            r"is a sentence-transformers model directory, not a dupq one: `dupq convert .*broken --valid FILE",
        ),
        (
            lambda d: (d / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}'),
            r"broken is not a dupq model directory: its config\.json has neither 'version' nor 'encoder'$",
        ),
    ],
)
def test_a_broken_directory_is_refused_in_one_line(tiny_model_dir: Path, tmp_path: Path, damage, message) -> None:  # type: ignore[no-untyped-def]
    broken = _copy(tiny_model_dir, tmp_path, "broken")
    damage(broken)
    with pytest.raises(ModelDirError, match=message) as caught:
        load_encoder(broken)
    assert "\n" not in str(caught.value)


def test_an_older_directory_names_the_command_that_upgrades_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    older = _copy(tiny_model_dir, tmp_path, "older")
    (older / "model.onnx").unlink()
    _edit_config(older, format_version=2, onnx_sha256=None)
    with pytest.raises(ModelDirError) as caught:
        load_encoder(older)
    assert str(caught.value) == (
        f"model directory {older} has no model.onnx (format 2, written by an older dupq): "
        f"run `dupq upgrade {older}` to add it (needs the train extra: pip install 'dupq[train]')"
    )


def test_unknown_words_are_told_apart_and_a_format_3_directory_serves_them_as_before(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Two questions in a script the vocabulary lacks: each word now has a row of its own. Format 3
    # had no such rows (no `unknown_buckets`): every word was [UNK] and any two such questions one
    # vector, cosine 1, a duplicate.
    older = _copy(tiny_model_dir, tmp_path, "format-3")
    config = json.loads((older / "config.json").read_text())
    encoder = {k: v for k, v in config["encoder"].items() if k != "unknown_buckets"}
    _edit_config(older, format_version=3, encoder=encoder)
    questions = ["ქალაქი სად არის?", "რა გქვია?", "How old are you?"]
    now, before = load_encoder(tiny_model_dir), load_encoder(older)
    [mark] = now.token_ids(["?"])
    assert before.token_ids(questions[:2]) == [[UNK_ID] * 3 + mark, [UNK_ID] * 2 + mark]
    a, b, c = now.encode(questions)
    assert float(a @ b) < 0.95 and float(a @ a) == pytest.approx(1.0, abs=1e-5)
    old_a, old_b, old_c = before.encode(questions)
    assert float(old_a @ old_b) > 0.99
    np.testing.assert_array_equal(old_c, c)  # known words as they were
