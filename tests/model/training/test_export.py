"""Writing a model directory, reading its weights back, and upgrading an older one."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from tokenizers import pre_tokenizers

from app.cli import main
from model.encoder import load_encoder
from model.model_dir import ModelDirError
from model.tokenizer import load_tokenizer
from model.training.export import load_network, save_model_dir

from ...conftest import CORPUS


def test_the_version_changes_with_the_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The same weights with another tokenizer can give a question another vector: another version.
    config = json.loads((tiny_model_dir / "config.json").read_text())
    tokenizer = load_tokenizer(tiny_model_dir / "tokenizer.json")
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    other = save_model_dir(
        tmp_path / "other", load_network(tiny_model_dir), tokenizer, name="n", threshold=0.5, calibration=(1.0, 0.0)
    )
    assert other["weights_sha256"] == config["weights_sha256"]
    assert other["tokenizer_sha256"] != config["tokenizer_sha256"]
    assert other["version"].split("+")[1] != config["version"].split("+")[1]


def test_a_write_that_is_stopped_leaves_the_model_that_was_there(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model.training import export

    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    (out / "report").mkdir()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    tokenizer = load_tokenizer(tiny_model_dir / "tokenizer.json")
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # another tokenizer.json

    def stopped(out: Path, network: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C with the weights and the tokenizer written

    write_onnx = export._write_onnx
    monkeypatch.setattr(export, "_write_onnx", stopped)
    with pytest.raises(KeyboardInterrupt):
        save_model_dir(out, load_network(tiny_model_dir), tokenizer, name="n", threshold=0.5, calibration=(1.0, 0.0))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["report"]  # no stage left behind
    monkeypatch.setattr(export, "_write_onnx", write_onnx)
    written = save_model_dir(
        out, load_network(tiny_model_dir), tokenizer, name="n", threshold=0.5, calibration=(1.0, 0.0)
    )
    assert load_encoder(out).version == written["version"] != json.loads(before["config.json"])["version"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*before, "report"])


def test_weights_are_readable_by_others_and_damage_is_reported(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert (tiny_model_dir / "model.safetensors").stat().st_mode & 0o044 == 0o044  # a service user can read them
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, damaged)
    (damaged / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ModelDirError, match="cannot read"):
        load_network(damaged)


def test_weights_that_do_not_match_the_config_are_refused(
    tiny_model_dir: Path, tiny_members_dir: Path, tmp_path: Path
) -> None:
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_model_dir, mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["encoder"]["hidden_dim"] = 32
    (mismatched / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"do not match config\.json"):
        load_network(mismatched)
    for members, message in ((3, "do not match config.json: members.2.embed.weight"), (0, "at least 1, not 0")):
        broken = tmp_path / f"members{members}"
        shutil.copytree(tiny_members_dir, broken)
        config = json.loads((broken / "config.json").read_text())
        (broken / "config.json").write_text(json.dumps({**config, "members": members}))
        with pytest.raises(ModelDirError, match=re.escape(message)):
            load_network(broken)


def _older(source: Path, target: Path, format_version: int) -> Path:
    """``source`` as an older dupq wrote it: no model.onnx, no onnx_sha256."""
    shutil.copytree(source, target)
    (target / "model.onnx").unlink()
    config = json.loads((target / "config.json").read_text())
    del config["onnx_sha256"]
    (target / "config.json").write_text(json.dumps({**config, "format_version": format_version}))
    return target


@pytest.mark.parametrize("members", [1, 2])
def test_upgrade_adds_the_graph_and_changes_no_vector(
    tiny_model_dir: Path, tiny_members_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], members: int
) -> None:
    source = tiny_model_dir if members == 1 else tiny_members_dir
    older = _older(source, tmp_path / "older", format_version=members)
    assert main(["upgrade", str(older)]) == 0
    printed = json.loads(capsys.readouterr().out)
    before, after = (json.loads((d / "config.json").read_text()) for d in (source, older))
    assert printed == {"model_dir": str(older), "version": before["version"], "format": 4}
    assert after == before  # the same config, the same version, the same graph
    np.testing.assert_array_equal(load_encoder(older).encode(CORPUS), load_encoder(source).encode(CORPUS))
    assert main(["upgrade", str(older)]) == 0  # again: nothing changes
    assert json.loads((older / "config.json").read_text()) == before


def test_upgrade_refuses_weights_that_changed(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    older = _older(tiny_model_dir, tmp_path / "older", format_version=1)
    weights = (older / "model.safetensors").read_bytes()
    (older / "model.safetensors").write_bytes(weights[:-4] + b"\x00\x00\x80\x3f")  # the last weight is now 1.0
    assert main(["upgrade", str(older)]) == 1
    assert "model.safetensors does not match config.json" in capsys.readouterr().err
