"""Limits set at run time (question length, batch size), reported as 422s that name the field,
in the same shape as FastAPI's own validation errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError

from app.settings import Settings


def check(
    settings: Settings, texts: Sequence[tuple[tuple[str | int, ...], str]], batches: Sequence[tuple[str, int]] = ()
) -> None:
    """``texts``: (location, text) pairs; ``batches``: (field, length) pairs."""
    errors: list[dict[str, Any]] = []
    for field, length in batches:
        if length > settings.max_batch:
            errors.append(
                {
                    "type": "too_long",
                    "loc": ("body", field),
                    "msg": f"{field} has {length} items; at most max_batch = {settings.max_batch} are allowed",
                    "input": None,
                }
            )
    if not errors:
        for loc, text in texts:
            why = too_long(text, settings.max_question_chars)
            if why:
                errors.append(
                    {"type": "string_too_long", "loc": ("body", *loc), "msg": why, "input": text[:40] + "..."}
                )
    if errors:
        raise RequestValidationError(errors)


def too_long(text: str, max_chars: int) -> str | None:
    """Why ``text`` is over the question length limit, or None: the rule of requests and bulk loads."""
    if len(text) <= max_chars:
        return None
    return f"question has {len(text)} characters; at most max_question_chars = {max_chars}"
