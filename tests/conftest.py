"""Shared fixtures: a tiny deterministic model directory, built once, and pair files.

Building it takes the training layer (PyTorch); loading and serving it take none.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model.config import EncoderConfig
from model.tokenizer import train_tokenizer
from model.training.export import save_model_dir
from model.training.network import Network, SiameseEncoder, SideBySide
from tests.postgres import PostgresServer

FIXTURES = Path(__file__).parent / "fixtures"

CORPUS = [
    "How old are you?",
    "What is your age?",
    "Where are you from?",
    "Where are you going?",
    "How do I learn Python?",
    "How can I learn Python quickly?",
    "Is Rust hard to learn?",
    "What is the best way to lose weight?",
    "How can I lose weight fast?",
    "Why is the sky blue?",
    "What causes the blue colour of the sky?",
    "Can't I sleep at night?",
]


# Questions of several lengths, for the encoder's tests.
QUESTIONS = [
    "How old are you?",
    "What is your age?",
    "Where are you from?",
    "Why is the sky blue?",
    "A much longer question about many things?",
]


def build_tiny_model(out: Path, seed: int = 0, version_prefix: str = "test", members: int = 1) -> Path:
    """A small, seeded, untrained model directory: fast, deterministic, real in every part; with
    ``members``, that many such networks side by side."""
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(CORPUS * 3, vocab_size=200, min_frequency=1)
    config = EncoderConfig(
        vocab_size=tokenizer.get_vocab_size(),
        embed_dim=16,
        hidden_dim=16,
        pooling="mean_max",
        out_dim=24,
        dropout=0.0,
    )
    network: Network = SideBySide(config, members) if members > 1 else SiameseEncoder(config)
    save_model_dir(
        out,
        network,
        tokenizer,
        name="tiny",
        threshold=0.8,
        calibration=(10.0, -8.0),
        version_prefix=version_prefix,
    )
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_members_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny networks side by side."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-members"), members=2)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session", params=["one network", "two side by side"])
def model_dir(request: pytest.FixtureRequest, tiny_model_dir: Path, tiny_members_dir: Path) -> Path:
    """Each tiny model directory in turn: one network, then two side by side."""
    return tiny_model_dir if request.param == "one network" else tiny_members_dir


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own for the test run (see tests/postgres.py)."""
    try:
        server = PostgresServer()
    except FileNotFoundError as err:
        if os.environ.get("DUPQ_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(str(err))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """Each store in turn: None (the data directory's SQLite file), then a fresh PostgreSQL
    database."""
    if request.param == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()
