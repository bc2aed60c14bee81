"""Request and response bodies of contract version 1 (../shared/CONTRACT.md).

Limits fixed by the contract (``k`` in 1..100, the id format, a threshold in [-1, 1]) live in
``Field``. Limits set at run time (``max_question_chars``, ``max_batch``) come in the validation
context as :class:`Limits` (``Model.model_validate(data, context=limits)``), so one validation
pass checks both and names the field either way; :func:`app.main.create_app` writes them into the
OpenAPI document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationInfo
from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class Limits:
    """The limits set at run time (``DUPQ_MAX_QUESTION_CHARS``, ``DUPQ_MAX_BATCH``)."""

    max_question_chars: int
    max_batch: int


def _limits(info: ValidationInfo) -> Limits | None:
    return info.context if isinstance(info.context, Limits) else None


def _question(text: str, info: ValidationInfo) -> str:
    text = text.strip()
    if not text:
        raise ValueError("must not be empty or white space")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # JSON's "\ud800" escape gives a lone surrogate
        raise ValueError(
            f"must be valid Unicode text: lone surrogate U+{ord(text[err.start]):04X} at character {err.start}"
        ) from None
    limits = _limits(info)
    if limits is not None and len(text) > limits.max_question_chars:
        raise PydanticCustomError(
            "string_too_long",
            "question has {length} characters; at most max_question_chars = {limit}",
            {"length": len(text), "limit": limits.max_question_chars},
        )
    return text


def _batch(items: list[Any], info: ValidationInfo) -> list[Any]:
    limits = _limits(info)
    if limits is not None and len(items) > limits.max_batch:
        raise PydanticCustomError(
            "too_long",
            "{length} items; at most max_batch = {limit} are allowed",
            {"length": len(items), "limit": limits.max_batch},
        )
    return items


# The characters str.strip() removes (str.isspace), as ranges: a question must hold one that is not.
PYTHON_WHITE_SPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

# A batch field: 1 (Field(min_length=1)) to max_batch items.
MaxBatch = AfterValidator(_batch)

Question = Annotated[
    str,
    AfterValidator(_question),
    Field(
        description="a question; surrounding white space is ignored",
        # For the OpenAPI document only (_question checks it): at least one character that is not
        # white space, so that a client generating from the schema does not send what is refused.
        json_schema_extra={"minLength": 1, "pattern": f"[^{PYTHON_WHITE_SPACE}]"},
    ),
]
QuestionId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$"),
    Field(description="1 to 128 letters, digits, '-', '_', '.', ':'"),
]


def _json_number(value: object) -> object:
    """Refuse what pydantic's lax mode would turn into a number: a string ("5") or a boolean."""
    if isinstance(value, bool | str):
        kind = "a boolean" if isinstance(value, bool) else "a string"
        raise PydanticCustomError("number_type", "Input should be a JSON number, not {kind}", {"kind": kind})
    return value


# The range goes before the validator: after it, pydantic still checks it but writes it into the
# OpenAPI document as unknown "ge"/"le" keys instead of "minimum"/"maximum".
JsonNumber = BeforeValidator(_json_number)
Threshold = Annotated[float, Field(ge=-1.0, le=1.0, description="overrides the decision threshold tau"), JsonNumber]
Similarity = Annotated[float, Field(ge=-1.0, le=1.0, description="drop matches below this similarity"), JsonNumber]
K = Annotated[int, Field(ge=1, le=100, description="most matches to return"), JsonNumber]
ModelName = Annotated[str, Field(description="name and version of the loaded model")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimilarityRequest(Strict):
    question1: Question
    question2: Question
    threshold: Threshold | None = None


class SimilarityResult(BaseModel):
    similarity: float = Field(description="cosine similarity of the two embeddings, in [-1, 1]")
    is_duplicate: bool = Field(description="similarity >= threshold")
    probability: float = Field(description="calibrated probability that the pair is a duplicate")


class SimilarityResponse(SimilarityResult):
    threshold: float
    model: ModelName


class PairIn(Strict):
    question1: Question
    question2: Question


class SimilarityBatchRequest(Strict):
    pairs: Annotated[list[PairIn], MaxBatch] = Field(min_length=1)
    threshold: Threshold | None = None


class SimilarityBatchResponse(BaseModel):
    results: list[SimilarityResult]
    threshold: float
    model: ModelName


class EmbedRequest(Strict):
    questions: Annotated[list[Question], MaxBatch] = Field(min_length=1)


class EmbedResponse(BaseModel):
    embeddings: list[list[float]] = Field(description="one L2-normalized row per question, in request order")
    dim: int
    model: ModelName


class QuestionIn(Strict):
    id: QuestionId | None = Field(None, description="omit to have one generated; an existing id is replaced")
    text: Question


class AddQuestionsRequest(Strict):
    questions: Annotated[list[QuestionIn], MaxBatch] = Field(min_length=1)


class AddQuestionsResponse(BaseModel):
    ids: list[str]
    index_size: int


class StoredQuestionOut(BaseModel):
    id: str
    text: str


class DuplicatesRequest(Strict):
    question: Question
    k: K = 5
    min_similarity: Similarity | None = None
    threshold: Threshold | None = None


class MatchOut(BaseModel):
    id: str
    question: str
    similarity: float
    is_duplicate: bool


class DuplicatesResponse(BaseModel):
    matches: list[MatchOut]
    threshold: float
    index_size: int
    model: ModelName


class DuplicatesBatchRequest(Strict):
    questions: Annotated[list[Question], MaxBatch] = Field(min_length=1)
    k: K = 5
    min_similarity: Similarity | None = None
    threshold: Threshold | None = None


class MatchList(BaseModel):
    matches: list[MatchOut]


class DuplicatesBatchResponse(BaseModel):
    results: list[MatchList]
    threshold: float
    index_size: int
    model: ModelName


class Status(BaseModel):
    status: str


class ReadyStatus(BaseModel):
    status: str
    index_size: int


class Info(BaseModel):
    name: str
    version: str
    model: ModelName
    dim: int
    threshold: float
    max_tokens: int
    max_question_chars: int
    max_batch: int
    max_body_bytes: int
    index_kind: str
    index_size: int
    encoder_backend: str = Field(description="always onnx: the network runs in ONNX Runtime")
    threads: int


class ErrorBody(BaseModel):
    detail: str | list[dict[str, object]]
