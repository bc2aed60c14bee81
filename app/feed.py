"""The change feed of the PostgreSQL store (:mod:`app.pgstore`), as a replica reads it and applies
it to its own copy (:meth:`app.store.QuestionStore.apply_feed`, :mod:`app.replica`)."""

from __future__ import annotations

from dataclasses import dataclass, field

Removed = tuple[int, str]  # (key, namespace) of a row a write removed


@dataclass(frozen=True)
class Row:
    key: int
    id: str
    text: str
    embedding: bytes
    model_version: str
    namespace: str
    metadata: str
    seq: int


@dataclass(frozen=True)
class Change:
    seq: int
    op: str  # add, remove, drop, model
    key: int | None
    namespace: str | None
    model_version: str | None
    created: int = 0  # when it was committed (microseconds since 1970): with seq, which change this is


@dataclass(frozen=True)
class FeedBatch:
    """Changes after a position, in order, with the rows their ``add``s name that are still stored
    (read in the same transaction: a row missing here was removed by a later change)."""

    changes: list[Change]
    rows: dict[int, Row]
    floor: int  # changes up to this one were pruned from the feed

    @property
    def position(self) -> int:
        return self.changes[-1].seq

    @property
    def mark(self) -> str:
        """What tells the change at :attr:`position` from another given the same number (a store
        restored from a backup, written to since)."""
        return f"{self.changes[-1].seq}@{self.changes[-1].created}"


@dataclass
class Applied:
    """What a batch of the change feed changed in a replica's copy: for its index."""

    removed: list[Removed] = field(default_factory=list)
    added: list[tuple[int, str, bytes]] = field(default_factory=list)  # key, namespace, vector
    dropped: list[str] = field(default_factory=list)
    count: int = 0  # questions added or removed, namespaces dropped
    model_version: str | None = None  # another model's vectors met (a `model` change, or a row)


class ModelMismatch(ValueError):
    """A copied store holds vectors of another model version."""
