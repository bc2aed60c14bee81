"""Runtime settings: environment variables with the ``DUPQ_`` prefix, read once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.encoder import available_cpus

REPO_ROOT = Path(__file__).resolve().parent.parent
# The model bundled with the source: next to the code in a checkout (or an editable install); an
# installed dupq (`pip install .`) finds it in the directory it runs in, the checkout's root.
BUNDLED_MODEL = REPO_ROOT / "models" / "dupq-qqp"
if not BUNDLED_MODEL.is_dir():
    BUNDLED_MODEL = Path("models") / "dupq-qqp"


class Settings(BaseSettings):
    """Every ``DUPQ_*`` variable; the README lists them with their defaults."""

    model_config = SettingsConfigDict(env_prefix="DUPQ_", protected_namespaces=(), extra="ignore")

    model_dir: Path = Field(BUNDLED_MODEL, description="model directory to serve")
    data_dir: Path = Field(Path("data"), description="where the question store and index snapshot live")
    api_key: SecretStr | None = Field(
        None, description="if set, every route but /health and /ready needs 'Authorization: Bearer <key>'"
    )
    read_api_key: SecretStr | None = Field(
        None, description="if set (with DUPQ_API_KEY), a second key that may call every route but writes (403)"
    )
    cors_origins: str = Field(
        "", description="comma-separated origins allowed to call the API from a browser (CORS); '*' for any"
    )
    threshold: float | None = Field(None, ge=-1.0, le=1.0, description="overrides the model's stored threshold tau")
    max_question_chars: int = Field(1000, ge=1, description="longest question accepted, in characters after stripping")
    max_batch: int = Field(256, ge=1, description="most items in one batch request")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body accepted")
    index_kind: Literal["auto", "flat", "hnsw"] = Field(
        "auto",
        description="auto (exact while a namespace is small, HNSW from hnsw_from questions on), "
        "flat (always exact) or hnsw (always approximate)",
    )
    hnsw_from: int = Field(
        10_000,
        ge=1,
        description="auto: a namespace of this many questions is searched by HNSW (switched in the background)",
    )
    hnsw_m: int = Field(32, ge=4, le=128, description="HNSW graph degree")
    hnsw_ef_search: int = Field(
        128,
        ge=8,
        description="HNSW search breadth (recall against speed) up to a million questions in a namespace; "
        "above, it grows in proportion to the namespace's size, up to 8 times this",
    )
    seed_file: Path | None = Field(
        None,
        description="questions loaded when the store is empty, in any format of `dupq import` (text or "
        "'id<TAB>text' lines, CSV or TSV with a header, JSONL; by the file's name), read through before the "
        "service listens, so that one that cannot be read stops start-up; unset or empty: none",
    )
    on_model_change: Literal["reembed", "refuse"] = Field(
        "reembed",
        description="when stored vectors come from another model version: re-embed them at start-up, "
        "or refuse to start",
    )
    snapshot_interval_s: float = Field(
        300.0,
        ge=0.0,
        description="seconds between index snapshots while questions change (0: only at shutdown); "
        "a restart replays from the store only what changed since the last one",
    )
    snapshot_changes: int = Field(
        20_000,
        ge=0,
        description="questions added or deleted that trigger an index snapshot before snapshot_interval_s "
        "is up (0: no such trigger), so that a restart after a crash replays at most about this many",
    )
    store_url: str | None = Field(
        None,
        description="where the questions live: unset, the SQLite file of data_dir; sqlite:///PATH, another "
        "SQLite file; postgresql://USER:PASSWORD@HOST:PORT/DB, a PostgreSQL database that several replicas share",
    )
    store_timeout_s: float = Field(
        2.0, gt=0.0, description="PostgreSQL: longest wait for a connection before a write answers 503"
    )
    store_connect_timeout_s: float = Field(
        30.0, gt=0.0, description="PostgreSQL: how long start-up waits for the database to accept connections"
    )
    feed_poll_s: float = Field(
        0.5,
        gt=0.0,
        description="PostgreSQL: a replica reads the change feed when notified, and at least this often",
    )
    max_lag_s: float = Field(
        5.0,
        gt=0.0,
        description="PostgreSQL: /ready answers 503 once the replica has not been level with the feed for this long",
    )
    feed_retention_s: float = Field(
        86_400.0,
        gt=0.0,
        description="PostgreSQL: changes kept in the feed; a replica away for longer copies the whole store again",
    )
    threads: int = Field(
        0, ge=0, description="CPU threads for the encoder and FAISS; 0 = the CPUs this process may use"
    )
    batch_max_size: int = Field(
        256, ge=1, description="dynamic batching: most questions per encoder call or index search"
    )
    batch_wait_ms: float = Field(
        2.0, ge=0.0, description="dynamic batching, under load: longest wait for more requests to join a batch"
    )
    queue_max: int = Field(
        4096, ge=1, description="most questions waiting for the encoder (or the index); beyond it, 503 + Retry-After"
    )
    log_level: str = Field("INFO", description="logging level")
    log_json: bool = Field(True, description="one JSON object per log line")

    @field_validator("seed_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # DUPQ_SEED_FILE= (set but empty) means no seed file, as an unset variable does.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("store_url", mode="before")
    @classmethod
    def _known_store(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str) and not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:///, postgresql:// or postgres://")
        return value

    def sqlite_path(self) -> Path | None:
        """The SQLite file that store_url names, if it names one (as SQLAlchemy writes it:
        sqlite:///relative/path, sqlite:////absolute/path)."""
        if self.store_url is not None and self.store_url.startswith("sqlite:///"):
            return Path(self.store_url.removeprefix("sqlite:///"))
        return None

    @model_validator(mode="after")
    def _read_key_needs_a_key(self) -> Settings:
        if _secret(self.read_api_key) and not _secret(self.api_key):
            raise ValueError("DUPQ_READ_API_KEY needs DUPQ_API_KEY: without a full key nobody could write")
        return self

    def keys(self) -> tuple[str | None, str | None]:
        """The full key and the read-only key; None where unset or empty."""
        return _secret(self.api_key), _secret(self.read_api_key)

    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    def cpu_count(self) -> int:
        return self.threads or available_cpus()


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() or None if value is not None else None
