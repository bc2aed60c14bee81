"""Request and response bodies of the contract, version 1.1 (../shared/CONTRACT.md).

Limits fixed by the contract (``k`` in 1..100, the id format, a threshold in [-1, 1]) live in
``Field``. Limits set at run time (``max_question_chars``, ``max_batch``) come in the validation
context as :class:`Limits` (``Model.model_validate(data, context=limits)``), so one validation
pass checks both and names the field either way; :func:`app.main.create_app` writes them into the
OpenAPI document.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class Limits:
    """The limits set at run time (``DUPQ_MAX_QUESTION_CHARS``, ``DUPQ_MAX_BATCH``)."""

    max_question_chars: int
    max_batch: int


def _limits(info: ValidationInfo) -> Limits | None:
    return info.context if isinstance(info.context, Limits) else None


def _question(text: str, info: ValidationInfo) -> str:
    # The length and the place of a NUL as sent, white space included, as the OpenAPI document's
    # maxLength and pattern see them.
    limits = _limits(info)
    if limits is not None and len(text) > limits.max_question_chars:
        raise PydanticCustomError(
            "string_too_long",
            "question has {length} characters; at most max_question_chars = {limit}",
            {"length": len(text), "limit": limits.max_question_chars},
        )
    if "\0" in text:  # JSON's "\u0000" escape: a question stored in PostgreSQL cannot hold it
        raise ValueError(
            f"must not contain the NUL character U+0000 (at character {text.index(chr(0))}), which PostgreSQL "
            "cannot store"
        )
    text = text.strip()
    if not text:
        raise ValueError("must not be empty or white space")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # JSON's "\ud800" escape gives a lone surrogate
        raise ValueError(
            f"must be valid Unicode text: lone surrogate U+{ord(text[err.start]):04X} at character {err.start}"
        ) from None
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
# A question in JSON Schema's words: no NUL anywhere, and one character that is neither NUL nor
# white space.
QUESTION_PATTERN = rf"^[^\u0000]*[^{PYTHON_WHITE_SPACE}\u0000][^\u0000]*$"

# A batch field: 1 (Field(min_length=1)) to max_batch items.
MaxBatch = AfterValidator(_batch)

Question = Annotated[
    str,
    AfterValidator(_question),
    Field(
        description="a question; surrounding white space is ignored (but counts towards max_question_chars)",
        # For the OpenAPI document only (_question checks it): no NUL and at least one character
        # that is not white space, so that a client generating from the schema does not send what
        # is refused.
        json_schema_extra={"minLength": 1, "pattern": QUESTION_PATTERN},
    ),
]
ID_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
QuestionId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN),
    Field(description="1 to 128 letters, digits, '-', '_', '.', ':'"),
]
Namespace = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN),
    Field(description="a namespace: 1 to 128 letters, digits, '-', '_', '.', ':'"),
]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=ID_PATTERN)]

METADATA_MAX_KEYS = 32
METADATA_MAX_BYTES = 4096
METADATA_MAX_STRING = 256
EXCLUDE_MAX = 1000
SCALAR_SCHEMA: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    return "an array" if isinstance(value, list) else type(value).__name__


def _scalar(value: object, what: str) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PydanticCustomError("scalar_type", "{what} must be a finite number", {"what": what})
        return value
    raise PydanticCustomError(
        "scalar_type",
        "{what} must be a string, number, boolean or null, not {kind}",
        {"what": what, "kind": _kind(value)},
    )


def _metadata_value(value: object) -> object:
    _scalar(value, "a metadata value")
    if isinstance(value, str) and len(value) > METADATA_MAX_STRING:
        raise PydanticCustomError(
            "string_too_long",
            "a metadata string has at most {limit} characters, not {length}",
            {"limit": METADATA_MAX_STRING, "length": len(value)},
        )
    return value


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > METADATA_MAX_KEYS:
        raise PydanticCustomError(
            "too_long", "metadata has {n} keys; at most {limit}", {"n": len(value), "limit": METADATA_MAX_KEYS}
        )
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > METADATA_MAX_BYTES:
        raise PydanticCustomError(
            "too_long", "metadata is {size} bytes as JSON; at most {limit}", {"size": size, "limit": METADATA_MAX_BYTES}
        )
    return value


MetadataValue = Annotated[
    Any, AfterValidator(_metadata_value), Field(json_schema_extra={**SCALAR_SCHEMA, "maxLength": METADATA_MAX_STRING})
]
KEYS_SCHEMA: dict[str, Any] = {
    "propertyNames": {"minLength": 1, "maxLength": 64, "pattern": ID_PATTERN},
    "additionalProperties": False,
    "maxProperties": METADATA_MAX_KEYS,
}
Metadata = Annotated[
    dict[MetadataKey, MetadataValue],
    AfterValidator(_metadata),
    Field(
        json_schema_extra=KEYS_SCHEMA,
        description=f"at most {METADATA_MAX_KEYS} keys of 1 to 64 id characters; values string (at most "
        f"{METADATA_MAX_STRING} characters), number, boolean or null; at most {METADATA_MAX_BYTES} bytes as JSON",
    ),
]


def _filter_value(value: object) -> tuple[object, ...]:
    """A filter condition as the values it accepts: a scalar (equality) or ``{"in": [...]}``."""
    if isinstance(value, dict):
        if set(value) != {"in"} or not isinstance(value["in"], list):
            raise PydanticCustomError(
                "filter_type",
                "a filter condition is a value or {example}, not an object with keys {keys}",
                {"example": '{"in": [values]}', "keys": sorted(value)},
            )
        values = value["in"]
        if not 1 <= len(values) <= EXCLUDE_MAX:
            raise PydanticCustomError("filter_type", '"in" holds 1 to {limit} values', {"limit": EXCLUDE_MAX})
        return tuple(_scalar(v, 'a value of "in"') for v in values)
    return (_scalar(value, "a filter value (filters apply to scalar metadata)"),)


FilterCondition = Annotated[
    Any,
    AfterValidator(_filter_value),
    Field(
        json_schema_extra={
            "oneOf": [
                SCALAR_SCHEMA,
                {
                    "type": "object",
                    "properties": {
                        "in": {"type": "array", "items": SCALAR_SCHEMA, "minItems": 1, "maxItems": EXCLUDE_MAX}
                    },
                    "required": ["in"],
                    "additionalProperties": False,
                },
            ]
        }
    ),
]


def _filter(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > METADATA_MAX_KEYS:
        raise PydanticCustomError(
            "too_long", "a filter has {n} keys; at most {limit}", {"n": len(value), "limit": METADATA_MAX_KEYS}
        )
    return value


Filter = Annotated[
    dict[MetadataKey, FilterCondition],
    AfterValidator(_filter),
    Field(
        json_schema_extra=KEYS_SCHEMA,
        description='metadata key -> a value (equality) or {"in": [values]}; every condition must hold',
    ),
]
ExcludeIds = Annotated[list[QuestionId], Field(max_length=EXCLUDE_MAX, description="ids never returned")]


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
    namespace: Namespace = "default"
    metadata: Metadata | None = None


class AddQuestionsRequest(Strict):
    questions: Annotated[list[QuestionIn], MaxBatch] = Field(min_length=1)


class AddQuestionsResponse(BaseModel):
    ids: list[str]
    index_size: int


class StoredQuestionOut(BaseModel):
    id: str
    text: str
    namespace: str
    metadata: dict[str, Any]


class QuestionPage(BaseModel):
    questions: list[StoredQuestionOut]
    next_cursor: str | None = Field(description="pass it as `cursor` for the next page; null at the end")


def _one_of(*names: str) -> dict[str, Any]:
    """JSON schema: exactly one of these fields."""
    return {"oneOf": [{"required": [name]} for name in names]}


# Fields that are one of two: absent means "not this one", and null is refused as it is in the
# schema (an unset default is not validated, so the type need not hold None).
class DeleteRequest(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_of("ids", "namespace"))

    ids: Annotated[list[QuestionId], MaxBatch, Field(min_length=1)] = None  # type: ignore[assignment]
    namespace: Namespace = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _one_of(self) -> DeleteRequest:
        if (self.ids is None) == (self.namespace is None):
            raise ValueError('give either "ids" or "namespace", not both or neither')
        return self


class DeleteResponse(BaseModel):
    deleted: int


class SearchOptions(Strict):
    namespace: Namespace = "default"
    filter: Filter | None = None
    exclude_ids: ExcludeIds = []


class DuplicatesRequest(SearchOptions):
    question: Question
    k: K = 5
    min_similarity: Similarity | None = None
    threshold: Threshold | None = None


class MatchOut(BaseModel):
    id: str
    question: str
    similarity: float
    is_duplicate: bool
    namespace: str
    metadata: dict[str, Any]


class DuplicatesResponse(BaseModel):
    matches: list[MatchOut]
    threshold: float
    index_size: int = Field(description="questions in the whole index, every namespace")
    model: ModelName
    namespace: str = Field(description="the namespace searched")


class DuplicatesBatchRequest(SearchOptions):
    questions: Annotated[list[Question], MaxBatch] = Field(min_length=1)
    k: K = 5
    min_similarity: Similarity | None = None
    threshold: Threshold | None = None


class MatchList(BaseModel):
    matches: list[MatchOut]


class DuplicatesBatchResponse(BaseModel):
    results: list[MatchList]
    threshold: float
    index_size: int = Field(description="questions in the whole index, every namespace")
    model: ModelName
    namespace: str = Field(description="the namespace searched")


class GroupsRequest(Strict):
    namespace: Namespace = "default"
    threshold: Threshold | None = None
    min_size: Annotated[int, Field(ge=1, description="smallest group returned"), JsonNumber] = 2
    filter: Filter | None = None


class GroupOut(BaseModel):
    representative: str
    ids: list[str] = Field(description="the members, the representative first")
    size: int


class GroupsResponse(BaseModel):
    groups: list[GroupOut] = Field(description="disjoint, largest first")
    threshold: float
    namespace: str
    model: ModelName


class FeedbackPair(Strict):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"allOf": [_one_of("question1", "id1"), _one_of("question2", "id2")]}
    )

    question1: Question = None  # type: ignore[assignment]
    question2: Question = None  # type: ignore[assignment]
    id1: QuestionId = Field(None, description="a stored question, instead of question1")  # type: ignore[assignment]
    id2: QuestionId = Field(None, description="a stored question, instead of question2")  # type: ignore[assignment]
    is_duplicate: Annotated[bool, Field(strict=True)]

    @model_validator(mode="after")
    def _one_of_each(self) -> FeedbackPair:
        for n in ("1", "2"):
            if (getattr(self, f"question{n}") is None) == (getattr(self, f"id{n}") is None):
                raise ValueError(f'give either "question{n}" or "id{n}", not both or neither')
        return self


class FeedbackRequest(Strict):
    pairs: Annotated[list[FeedbackPair], MaxBatch] = Field(min_length=1)


class FeedbackResponse(BaseModel):
    stored: int


_ONE_QUESTION: TypeAdapter[str] = TypeAdapter(Question)


def _text_or_texts(value: Any, info: ValidationInfo) -> Any:
    """``input`` of /v1/embeddings as a list: one text is checked as a question, its errors at
    ``input`` itself (a union of the two would report each error twice, under pydantic's names
    for its branches); a list's errors are at their index."""
    if isinstance(value, str):
        try:
            return [_ONE_QUESTION.validate_python(value, context=info.context)]
        except ValidationError as err:
            error = err.errors()[0]
            raise PydanticCustomError(error["type"], error["msg"], error.get("ctx")) from None
    if not isinstance(value, list):
        raise PydanticCustomError("text_or_texts", "a text or a list of texts (token arrays are not taken: send text)")
    return value


class OpenAIEmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request; fields it has that dupq has no use for (``user``) are ignored."""

    model_config = ConfigDict(extra="ignore")

    input: Annotated[
        list[Question],
        MaxBatch,
        Field(min_length=1),
        BeforeValidator(_text_or_texts),
        WithJsonSchema(TypeAdapter(Question | Annotated[list[Question], Field(min_length=1)]).json_schema()),
    ] = Field(description="a text or a list of texts (token arrays are not taken: send text)")
    model: str | None = Field(None, description="ignored: the loaded model answers")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, JsonNumber] | None = Field(None, description="must be the model's dim when given")


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


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
    index_kind: str = Field(description="auto, flat or hnsw (DUPQ_INDEX_KIND)")
    index_size: int
    index_structures: dict[str, int] = Field(
        description="namespaces searched exactly (flat) and approximately (hnsw) now; under auto a "
        "namespace switches to hnsw in the background when it reaches DUPQ_HNSW_FROM questions"
    )
    namespaces: int = Field(description="namespaces that hold at least one question")
    encoder_backend: str = Field(description="always onnx: the network runs in ONNX Runtime")
    threads: int


class ErrorBody(BaseModel):
    detail: str | list[dict[str, object]]
