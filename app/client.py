"""A small typed Python client of the dupq HTTP API (contract 1.1), on httpx.

Each method is named after its route and takes the route's fields as keyword arguments::

    from app.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as dupq:
        dupq.add_questions([{"id": "q-17", "text": "How do I learn Python?", "metadata": {"status": "open"}}])
        for match in dupq.duplicates("How can I learn Python?", k=3, filter={"status": "open"})["matches"]:
            print(match["id"], match["similarity"])

An error answer raises :class:`DupqError` with the status and the ``detail``. An overloaded or
not-ready service (503 or 429 with ``Retry-After``) and a failed connection are retried, up to
``retries`` times, after the time the service asks for. A request may also be sent again after a
failure that leaves unknown whether the service acted on it (a timeout or a connection dropped
after sending, a 503 of an unavailable store), where that is safe: reads; adds, which are upserts
by id (an item without an id gets one here, as the service would make it, so that a repeat cannot
store it twice); deletes (a repeat that finds the question gone counts as done). Feedback has no
id, so its pairs are sent again only where the service surely did not act on them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, TypedDict

import httpx
import orjson


class Match(TypedDict):
    id: str
    question: str
    similarity: float
    is_duplicate: bool
    namespace: str
    metadata: dict[str, Any]


class Duplicates(TypedDict):
    matches: list[Match]
    threshold: float
    index_size: int
    model: str
    namespace: str


class Similarity(TypedDict):
    similarity: float
    is_duplicate: bool
    probability: float
    threshold: float
    model: str


class Question(TypedDict):
    id: str
    text: str
    namespace: str
    metadata: dict[str, Any]


class Group(TypedDict):
    representative: str
    ids: list[str]
    size: int


logger = logging.getLogger(__name__)

# How the detail of the service's 503 begins where its store could not be reached
# (app/errors.py): a write that met it may have been committed.
STORE_UNAVAILABLE = "the question store is unavailable"


def _detail(response: httpx.Response) -> Any:
    """The ``detail`` of an error answer (its text where it is not the service's JSON)."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    return body.get("detail") if isinstance(body, dict) else body


class DupqError(Exception):
    """An error answer: its HTTP status and the service's ``detail``."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class Client:
    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 8,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)
        self.retries = retries

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        repeatable: bool = True,
        gone_if_repeated: bool = False,
    ) -> Any:
        """The route's answer. ``repeatable``: the request may be sent again after a failure that
        leaves unknown whether the service acted on it. ``gone_if_repeated``: a 404 to such a repeat
        means the first one did its work (a delete)."""
        content = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        query = {k: v for k, v in (params or {}).items() if v is not None}
        repeated = False
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, content=content, headers=headers, params=query)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:  # never sent
                if last:
                    raise
                self._wait(method, path, f"no connection ({err})", min(10.0, 0.2 * 2**attempt), attempt)
                continue
            except httpx.TransportError as err:  # sent, and perhaps acted on
                if last or not repeatable:
                    raise
                repeated = True
                self._wait(method, path, f"no answer ({err!r})", min(10.0, 0.2 * 2**attempt), attempt)
                continue
            if response.status_code in (429, 503) and not last:
                detail = _detail(response)
                acted = isinstance(detail, str) and detail.startswith(STORE_UNAVAILABLE)
                if repeatable or not acted:
                    repeated = repeated or acted
                    wait = float(response.headers.get("Retry-After", 1))
                    self._wait(method, path, f"{response.status_code} ({detail})", wait, attempt)
                    continue
            if response.status_code == 404 and gone_if_repeated and repeated:
                return None
            if response.status_code >= 400:
                raise DupqError(response.status_code, _detail(response))
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    def _wait(self, method: str, path: str, why: str, seconds: float, attempt: int) -> None:
        logger.info("%s %s: %s; retry %d of %d in %.1f s", method, path, why, attempt + 1, self.retries, seconds)
        time.sleep(seconds)

    # Pairs and embeddings -------------------------------------------------------------------------

    def similarity(self, question1: str, question2: str, threshold: float | None = None) -> Similarity:
        body = {"question1": question1, "question2": question2, "threshold": threshold}
        return self._call("POST", "/similarity", body)

    def similarity_batch(self, pairs: Sequence[tuple[str, str]], threshold: float | None = None) -> dict[str, Any]:
        body = {"pairs": [{"question1": a, "question2": b} for a, b in pairs], "threshold": threshold}
        return self._call("POST", "/similarity/batch", body)

    def embed(self, questions: Sequence[str]) -> list[list[float]]:
        return self._call("POST", "/embed", {"questions": list(questions)})["embeddings"]

    # Stored questions -------------------------------------------------------------------------------

    def add_questions(self, questions: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Upsert ``{"id"?, "text", "namespace"?, "metadata"?}`` items: ``{"ids", "index_size"}``.
        An item without an id gets one here, in the service's form, so that a repeat is an upsert."""
        items = [item if item.get("id") else {**item, "id": f"q-{uuid.uuid4().hex}"} for item in questions]
        return self._call("POST", "/questions", {"questions": items})

    def get_question(self, question_id: str) -> Question:
        return self._call("GET", f"/questions/{question_id}")

    def delete_question(self, question_id: str) -> None:
        self._call("DELETE", f"/questions/{question_id}", gone_if_repeated=True)

    def delete_questions(self, ids: Sequence[str] | None = None, namespace: str | None = None) -> int:
        body = {"ids": list(ids)} if ids is not None else {"namespace": namespace}
        return int(self._call("POST", "/questions/delete", body)["deleted"])

    def list_questions(self, namespace: str = "default", limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        params = {"namespace": namespace, "limit": limit, "cursor": cursor}
        return self._call("GET", "/questions", params=params)

    def iter_questions(self, namespace: str = "default", limit: int = 1000) -> Iterator[Question]:
        """Every question of a namespace, walking the listing's cursors."""
        cursor = None
        while True:
            page = self.list_questions(namespace, limit, cursor)
            yield from page["questions"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def export(self, namespace: str | None = None) -> Iterator[Question]:
        """Every stored question (of one namespace, or all), streamed: read as it arrives."""
        params = {"namespace": namespace} if namespace else {}
        with self._http.stream("GET", "/export", params=params) as response:
            if response.status_code >= 400:
                response.read()
                raise DupqError(response.status_code, _detail(response))
            for line in response.iter_lines():
                if line:
                    yield orjson.loads(line)

    # Search ----------------------------------------------------------------------------------------

    def duplicates(
        self,
        question: str,
        k: int = 5,
        namespace: str = "default",
        filter: dict[str, Any] | None = None,
        exclude_ids: Sequence[str] = (),
        min_similarity: float | None = None,
        threshold: float | None = None,
    ) -> Duplicates:
        body = {"question": question, **_search(k, namespace, filter, exclude_ids, min_similarity, threshold)}
        return self._call("POST", "/duplicates", body)

    def duplicates_batch(
        self,
        questions: Sequence[str],
        k: int = 5,
        namespace: str = "default",
        filter: dict[str, Any] | None = None,
        exclude_ids: Sequence[str] = (),
        min_similarity: float | None = None,
        threshold: float | None = None,
    ) -> dict[str, Any]:
        body = {"questions": list(questions), **_search(k, namespace, filter, exclude_ids, min_similarity, threshold)}
        return self._call("POST", "/duplicates/batch", body)

    def question_duplicates(
        self, question_id: str, k: int = 5, min_similarity: float | None = None, threshold: float | None = None
    ) -> Duplicates:
        params = {"k": k, "min_similarity": min_similarity, "threshold": threshold}
        return self._call("GET", f"/questions/{question_id}/duplicates", params=params)

    def groups(
        self,
        namespace: str = "default",
        threshold: float | None = None,
        min_size: int = 2,
        filter: dict[str, Any] | None = None,
    ) -> list[Group]:
        body = {"namespace": namespace, "threshold": threshold, "min_size": min_size, "filter": filter}
        return self._call("POST", "/groups", body)["groups"]

    def feedback(self, pairs: Sequence[dict[str, Any]]) -> int:
        """Labelled pairs ``{"question1"|"id1", "question2"|"id2", "is_duplicate"}``: how many were stored."""
        return int(self._call("POST", "/feedback", {"pairs": list(pairs)}, repeatable=False)["stored"])

    # Operations ------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return self._call("GET", "/info")

    def ready(self) -> dict[str, Any]:
        return self._call("GET", "/ready")


def _search(
    k: int,
    namespace: str,
    filter: dict[str, Any] | None,
    exclude_ids: Sequence[str],
    min_similarity: float | None,
    threshold: float | None,
) -> dict[str, Any]:
    """The options of /duplicates and /duplicates/batch."""
    return {
        "k": k,
        "namespace": namespace,
        "filter": filter,
        "exclude_ids": list(exclude_ids),
        "min_similarity": min_similarity,
        "threshold": threshold,
    }
