"""OpenAI-compatible request and response types, fields in the OpenAI reference's order.

Unknown request fields are accepted (clients send many) and logged, never silently relied on.
Extensions (vLLM's top_k / min_tokens / ignore_eos, Holo's image part and resize report) are
marked as such.
"""

import logging
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("holo_mlx.server")


class Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_unknown_fields(self):
        if self.model_extra:
            log.info("%s: ignoring unknown fields %s", type(self).__name__, sorted(self.model_extra))
        return self


# --- content parts -------------------------------------------------------------------------------

class TextPart(Request):
    type: Literal["text"]
    text: str


class ImageURL(Request):
    url: str
    detail: str | None = None


class ImageURLPart(Request):
    type: Literal["image_url"]
    image_url: ImageURL


class HoloImage(Request):
    b64: str


class HoloImagePart(Request):
    """Extension: the original Holo API's `{"type": "image", "image": {"b64": ...}}`."""

    type: Literal["image"]
    image: HoloImage


ContentPart = Annotated[TextPart | ImageURLPart | HoloImagePart, Field(discriminator="type")]


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(Request):
    include_usage: bool = False


# --- structured output ---------------------------------------------------------------------------

class JsonSchemaFormat(Request):
    name: str | None = None
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None  # the schema is enforced either way


class ResponseFormat(Request):
    """OpenAI's response_format."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(Request):
    """vLLM's structured_outputs; its other modes (regex, choice, grammar) are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")
    json_: dict | str | None = Field(None, alias="json")
    json_object: bool | None = None


class HoloOptions(Request):
    """Extension: `"holo": {...}` in a chat request."""

    model_config = ConfigDict(extra="forbid")
    map_coordinates: bool = False  # rewrite x/y and boxes of the JSON answer into the original image's pixels


# --- requests ------------------------------------------------------------------------------------

class SamplingFields(Request):
    """Fields shared by chat and text completions."""

    max_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    user: str | None = None
    # vLLM extensions, used by benchmarks and agents
    top_k: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    # structured output: OpenAI's field, vLLM's, and vLLM's older one (the Holo cookbook sends it)
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict | str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    model: str | None = None
    logprobs: bool = False
    max_completion_tokens: int | None = None
    top_logprobs: int | None = None
    holo: HoloOptions | None = None


class CompletionRequest(SamplingFields):
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None


class EmbeddingRequest(Request):
    input: str | list[str] | list[int] | list[list[int]] | list[ContentPart] | list[list[ContentPart]]
    model: str | None = None
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


class LocalizeRequest(Request):
    """Extension: POST /v1/localize."""

    image: str  # data URL (or another image URL the server allows) or bare base64
    target: str
    model: str | None = None


# --- responses -----------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobEntry]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ImageSize(BaseModel):
    width: int
    height: int


class ImageResize(BaseModel):
    original: ImageSize
    resized: ImageSize  # Holo1.5 answers coordinates in these pixels


class HoloInfo(BaseModel):
    """Extension: how each input image was resized, in prompt order."""

    images: list[ImageResize]


class OriginalClick(BaseModel):
    x: int
    y: int
    width: int
    height: int


class Localization(BaseModel):
    """Extension: the click position in the resized image the model saw, and in the original."""

    x: int
    y: int
    resized: ImageSize
    original: OriginalClick
    model: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    holo: HoloInfo | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    holo: HoloInfo | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "holo-mlx"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON body with OpenAI's explicit nulls; the `holo` extension is left out when unset."""
    data = model.model_dump()
    if data.get("holo", ...) is None:
        del data["holo"]
    return data


# --- error envelope, health ----------------------------------------------------------------------

class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: every 4xx and 5xx body (see errors.envelope)."""

    error: ErrorDetail


class Health(BaseModel):
    """GET /health, 200 once the model is ready and 503 before (or if it failed to load)."""

    status: Literal["loading", "ready", "error"]
    model: str
    model_path: str
    device: str
    dtype: str | None
    max_side: int | None
    max_pixels: int | None
    load_error: str | None
    requests_running: int
    requests_waiting: int
