"""The stored questions: add (upsert), read, list, delete, and the duplicates of a stored one."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError

from app.deps import EngineDep
from app.errors import COMMON_ERRORS, WRITE_ERRORS
from app.routes.duplicates import matches_out
from app.routing import JsonRoute
from app.schemas import (
    ID_PATTERN,
    AddQuestionsRequest,
    AddQuestionsResponse,
    DeleteRequest,
    DeleteResponse,
    DuplicatesResponse,
    ErrorBody,
    QuestionPage,
    StoredQuestionOut,
)
from app.store import NewQuestion, StoredQuestion

router = APIRouter(prefix="/questions", tags=["questions"], route_class=JsonRoute, responses=COMMON_ERRORS)

IdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN, description="question id")]
NamespaceQuery = Annotated[
    str, Query(min_length=1, max_length=128, pattern=ID_PATTERN, description="the namespace to list")
]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no question with this id"}}


def question_out(question: StoredQuestion) -> dict[str, Any]:
    """A stored question's fields, its metadata as the JSON text it is stored as."""
    return {
        "id": question.id,
        "text": question.text,
        "namespace": question.namespace,
        "metadata": orjson.Fragment(question.metadata),
    }


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AddQuestionsResponse, responses=WRITE_ERRORS)
async def add_questions(body: AddQuestionsRequest, engine: EngineDep) -> dict[str, Any]:
    """Add questions, or replace those whose id exists (moving them to the item's namespace);
    all of them or none, durable once answered."""
    items = [NewQuestion.of(q.id or "", q.text, q.namespace, q.metadata) for q in body.questions]
    ids, size = await engine.add(items)
    return {"ids": ids, "index_size": size}


def _cursor(namespace: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{seq}:{namespace}".encode()).decode().rstrip("=")


def _position(cursor: str, namespace: str) -> tuple[str, int]:
    """The position a cursor of :func:`_cursor` stands for; a 422 on the ``cursor`` parameter for
    anything else, or for a cursor of another namespace."""
    try:
        seq, _, of = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        position = (of, int(seq))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        position = None
    if position is None or position[0] != namespace:
        why = (
            "unknown cursor" if position is None else f"this cursor walks namespace {position[0]!r}, not {namespace!r}"
        )
        raise RequestValidationError([{"type": "value_error", "loc": ["query", "cursor"], "msg": why, "input": cursor}])
    return position


@router.get("", response_model=QuestionPage)
async def list_questions(
    engine: EngineDep,
    namespace: NamespaceQuery = "default",
    limit: Annotated[int, Query(ge=1, le=1000, description="most questions in this page")] = 100,
    cursor: Annotated[str | None, Query(max_length=400, description="next_cursor of the previous page")] = None,
) -> Response:
    """The questions of a namespace, a page at a time, in the order they were first added. Walking
    the cursors returns every question that exists for the whole walk exactly once, whatever is
    added or deleted meanwhile."""
    after = _position(cursor, namespace) if cursor is not None else None
    page = await engine.page(namespace, after, limit)
    next_cursor = _cursor(namespace, page[-1][1]) if len(page) == limit else None
    content = {"questions": [question_out(q) for q, _ in page], "next_cursor": next_cursor}
    return Response(orjson.dumps(content), media_type="application/json")


@router.post("/delete", response_model=DeleteResponse, responses=WRITE_ERRORS)
async def delete_questions(body: DeleteRequest, engine: EngineDep) -> dict[str, Any]:
    """Delete questions by id (unknown ids are not an error) or a whole namespace, in one
    transaction; durable once answered."""
    if body.namespace is not None:
        return {"deleted": await engine.delete_namespace(body.namespace)}
    return {"deleted": await engine.delete_ids(body.ids or [])}


@router.get("/{question_id}", response_model=StoredQuestionOut, responses=NOT_FOUND)
async def get_question(question_id: IdPath, engine: EngineDep) -> Response:
    """One stored question, with its namespace and metadata."""
    found = await engine.get(question_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no question with id {question_id!r}")
    return Response(orjson.dumps(question_out(found)), media_type="application/json")


@router.get("/{question_id}/duplicates", response_model=DuplicatesResponse, responses=NOT_FOUND)
async def duplicates_of_question(
    question_id: IdPath,
    engine: EngineDep,
    k: Annotated[int, Query(ge=1, le=100, description="most matches to return")] = 5,
    min_similarity: Annotated[float | None, Query(ge=-1.0, le=1.0, description="drop matches below")] = None,
    threshold: Annotated[float | None, Query(ge=-1.0, le=1.0, description="overrides tau")] = None,
) -> Response:
    """The duplicates of a stored question within its namespace, itself left out, found from its
    stored vector."""
    found = await engine.duplicates_of(question_id, k)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no question with id {question_id!r}")
    question, matches = found
    tau = engine.threshold if threshold is None else threshold
    content = {
        "matches": matches_out(matches, tau, min_similarity),
        "threshold": tau,
        "index_size": engine.index_size(),
        "model": engine.model_name,
        "namespace": question.namespace,
    }
    return Response(orjson.dumps(content), media_type="application/json")


@router.delete(
    "/{question_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**NOT_FOUND, **WRITE_ERRORS},
)
async def delete_question(question_id: IdPath, engine: EngineDep) -> Response:
    """Remove a question; it never appears in results again."""
    if not await engine.delete(question_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no question with id {question_id!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
