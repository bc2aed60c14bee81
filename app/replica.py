"""A replica of a PostgreSQL store: its local copy of the questions kept level with the store's
change feed (:mod:`app.pgstore`).

Each replica keeps, in its data directory, a SQLite copy of the store's questions
(``replica.sqlite3``, an ordinary :class:`app.store.QuestionStore` whose writes come from the feed
only) and an index built from that copy. Reads (searches, GET, listings, groups) are answered from
them, so they go on while PostgreSQL is away; writes go to PostgreSQL, and are then applied here
through the feed like anyone else's, before the write is answered (read-your-writes on the same
replica). :class:`Follower` applies the feed: when woken by a notification, every ``poll_s``
seconds in case one is lost, and after each of the replica's own writes. The copy records the
position it has applied, in the same transaction as the changes, so a replica killed at any
moment resumes from where its copy is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from app.feed import Applied, FeedBatch, Row
from app.pgstore import PostgresStore, StoreUnavailable
from app.store import QuestionStore, StoreFull

logger = logging.getLogger(__name__)

COPY_FILE = "replica.sqlite3"


class Follower:
    """Applies the change feed of ``primary`` to ``copy`` (and, through ``apply``, which the
    engine sets, to the index too), in order, one batch at a time."""

    def __init__(self, primary: PostgresStore, copy: QuestionStore, model_version: str, batch: int = 2000) -> None:
        self.primary = primary
        self.copy = copy
        self.model_version = model_version
        self.batch = batch
        self.apply: Callable[[FeedBatch], Applied] = lambda b: copy.apply_feed(b, model_version)
        self.position = int(copy.meta("feed_position") or 0)
        self.caught_up_at = time.monotonic()  # when the last pass that found nothing more to apply began
        self.problem: str | None = None  # why this replica must stop serving (another model's vectors)
        self.stalled: str | None = None  # why the last pass failed: the store away, or no room for the copy
        self._lock = threading.Lock()

    def prepare(self, status: Callable[[str], None] = lambda text: None) -> bool:
        """At start-up: copy the whole store if the copy cannot follow the feed (a new replica, a
        copy of another database or of another model's vectors, one that was away longer than the
        feed is kept, or one ahead of the store: a store restored from a backup), then catch up.
        Returns whether it copied everything. ``status`` is told how far the copy is after each
        batch; whatever it raises ends the copy, which leaves the copy as it was (one transaction)."""
        reason = None
        versions = set(self.copy.model_versions())
        if self.copy.meta("source") != self.primary.store_id:
            reason = "a new replica" if self.copy.count() == 0 else "a copy of another database"
        elif versions - {self.model_version}:
            reason = f"the copy holds vectors of model {', '.join(sorted(versions - {self.model_version}))}"
        elif self.primary.read_feed(self.position, 1).floor > self.position:
            reason = "the feed no longer holds the changes since this replica's copy"
        elif (end := self.primary.feed_end()) < self.position:  # the feed went back: its changes since are others
            reason = f"the store's feed ends at {end}, before this copy's position {self.position}"
            reason += ": a store restored from a backup"
        elif (mark := self.copy.meta("feed_mark")) and self.primary.feed_mark(self.position) not in (None, mark):
            # The same number, another change: a store restored and written to since.
            reason = f"the store's change at this copy's position {self.position} is another one than the copy's"
            reason += ": a store restored from a backup"
        copied = reason is not None
        if copied:
            started = time.monotonic()
            logger.info("copying the whole store from %s (%s)", self.primary.where, reason)
            total = self.primary.count()

            def dump(sink: Callable[[list[Row]], None]) -> int:
                done = 0

                def counted(rows: list[Row]) -> None:
                    nonlocal done
                    sink(rows)
                    done += len(rows)
                    status(f"copying the store from PostgreSQL: {done:,} of about {total:,} questions")

                status(f"copying the store from PostgreSQL: 0 of about {total:,} questions")
                return self.primary.dump(counted)

            n = self.copy.reset(self.primary.store_id, dump, self.model_version)
            self.position = int(self.copy.meta("feed_position") or 0)
            if mark := self.primary.feed_mark(self.position):  # else the next change applied records one
                self.copy.set_meta("feed_mark", mark)
            logger.info(
                "copied %d questions in %.1f s, at feed position %d", n, time.monotonic() - started, self.position
            )
        n = self.follow()
        if n:
            logger.info("applied %d changes of the feed, now at position %d", n, self.position)
        return copied

    def lag(self) -> float:
        """Seconds since this replica last knew it had applied every change."""
        return time.monotonic() - self.caught_up_at

    def follow(self) -> int:
        """Apply every change committed before the call; returns how many. Raises
        :class:`StoreUnavailable` if PostgreSQL cannot be reached."""
        with self._lock:
            total = 0
            while self.problem is None:
                started = time.monotonic()
                try:
                    batch = self.primary.read_feed(self.position, self.batch)
                except StoreUnavailable as err:
                    self.stalled = str(err)
                    raise
                if batch.floor > self.position:
                    self.problem = (
                        f"this replica fell behind the store's change feed (at {self.position}, the feed keeps changes "
                        f"after {batch.floor} only): restart it to copy the store again"
                    )
                    break
                if batch.changes:
                    try:
                        applied = self.apply(batch)
                    except StoreFull as err:  # the copy's disk: the store keeps the changes until there is room
                        self.stalled = str(err)
                        raise
                    self.position = batch.position
                    total += len(batch.changes)
                    if applied.model_version is not None:
                        self.problem = (
                            f"the store now holds vectors of model {applied.model_version}, not this replica's "
                            f"{self.model_version}: restart it with that model"
                        )
                        logger.error("%s", self.problem)
                self.stalled = None
                if len(batch.changes) < self.batch:
                    self.caught_up_at = started
                    break
            return total

    def run(self, stopping: threading.Event, poll_s: float) -> None:
        """The follower's thread: follow the feed, then wait for a notification or ``poll_s``
        seconds, until ``stopping``; while PostgreSQL is away, try again every ``poll_s``."""
        listener: psycopg.Connection[object] | None = None
        away = full = False
        while not stopping.is_set():
            try:
                if listener is None:
                    listener = self.primary.listen()
                self.follow()
                if away or full:
                    again = "the store is reachable again" if away else "this replica's copy has room again"
                    logger.warning("%s; this replica caught up with its feed", again)
                    away = full = False
                for _ in listener.notifies(timeout=poll_s, stop_after=1):
                    pass
            except (StoreUnavailable, psycopg.OperationalError) as err:
                if not away:
                    logger.warning("cannot follow the store's change feed (%s); reads go on, writes answer 503", err)
                    away = True
                if listener is not None:
                    listener.close()
                    listener = None
                stopping.wait(poll_s)
            except StoreFull as err:  # this replica's copy, not the store: said once, not at every try
                if not full:
                    logger.error("cannot apply the store's change feed (%s); reads go on from this copy as it is", err)
                    full = True
                stopping.wait(poll_s)
            except Exception:
                logger.exception("following the store's change feed failed; trying again")
                stopping.wait(poll_s)
        if listener is not None:
            listener.close()
