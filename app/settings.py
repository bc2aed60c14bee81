"""Runtime settings: environment variables with the ``DUPQ_`` prefix, read once at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO_ROOT / "models" / "dupq-qqp"


class Settings(BaseSettings):
    """Every ``DUPQ_*`` variable; the README lists them with their defaults."""

    model_config = SettingsConfigDict(env_prefix="DUPQ_", protected_namespaces=(), extra="ignore")

    model_dir: Path = Field(BUNDLED_MODEL, description="model directory to serve")
    data_dir: Path = Field(Path("data"), description="where the question store and index snapshot live")
    api_key: SecretStr | None = Field(
        None, description="if set, every route but /health and /ready needs 'Authorization: Bearer <key>'"
    )
    threshold: float | None = Field(None, ge=-1.0, le=1.0, description="overrides the model's stored threshold tau")
    max_question_chars: int = Field(1000, ge=1, description="longest question accepted, in characters after stripping")
    max_batch: int = Field(256, ge=1, description="most items in one batch request")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body accepted")
    index_kind: Literal["flat", "hnsw"] = Field(
        "flat", description="flat (exact) or hnsw (approximate, large collections)"
    )
    hnsw_m: int = Field(32, ge=4, le=128, description="HNSW graph degree")
    hnsw_ef_search: int = Field(128, ge=8, description="HNSW search breadth: recall against speed")
    seed_file: Path | None = Field(
        None, description="questions (one per line, or 'id<TAB>text') loaded when the store is empty"
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
    threads: int = Field(
        0, ge=0, description="CPU threads for the encoder and FAISS; 0 = the CPUs this process may use"
    )
    encoder_backend: Literal["onnx", "torch"] = Field("onnx", description="run the network in ONNX Runtime or PyTorch")
    batch_max_size: int = Field(
        256, ge=1, description="dynamic batching: most questions per encoder call or index search"
    )
    batch_wait_ms: float = Field(
        2.0, ge=0.0, description="dynamic batching, under load: longest wait for more requests to join a batch"
    )
    queue_max: int = Field(
        4096, ge=1, description="most questions waiting for the encoder (or the index); beyond it, 503 + Retry-After"
    )
    fast_path: bool = Field(
        True, description="answer valid POST /similarity requests on a lean path that skips FastAPI's routing"
    )
    log_level: str = Field("INFO", description="logging level")
    log_json: bool = Field(True, description="one JSON object per log line")

    def cpu_count(self) -> int:
        if self.threads:
            return self.threads
        return available_cpus()


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 quota (containers)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)
