"""OpenAI-compatible request and response types, fields in the OpenAI reference's order.

Each of OpenAI's request fields is implemented, a hint (accepted: it cannot change the answer here) or
`refused` (a 400 naming it): docs/API.md, "OpenAI request fields". Fields OpenAI does not know either
are accepted (clients send many) and logged, never silently relied on.
Extensions (vLLM's top_k / min_p / min_tokens / ignore_eos / chat_template_kwargs / thinking_token_budget, the
reasoning of thinking models, Holo's image part and resize report) are marked as such.
"""

import logging
import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, computed_field, field_validator,
                      model_serializer, model_validator)
from pydantic_core import PydanticCustomError

log = logging.getLogger("holo_mlx.server")


class Request(BaseModel):
    model_config = ConfigDict(extra="allow")
    # Fields OpenAI's OpenAPI document lets be null, where null means unset: they take their default.
    NULL_MEANS_ABSENT: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls_meaning_absent(cls, data):
        if isinstance(data, dict) and cls.NULL_MEANS_ABSENT:
            return {key: value for key, value in data.items() if value is not None or key not in cls.NULL_MEANS_ABSENT}
        return data

    @model_validator(mode="after")
    def _log_unknown_fields(self):
        if self.model_extra:
            log.info("%s: ignoring unknown fields %s", type(self).__name__, sorted(self.model_extra))
        return self


def refused(reason: str, *harmless) -> Any:
    """An OpenAI field whose honouring would change the answer, which this server cannot honour:
    null and the `harmless` values (those that ask for nothing) pass; any other value is refused with
    a 400 naming the field (errors.py), never answered as if it were absent."""
    def check(value):
        if value is not None and value not in harmless:
            raise PydanticCustomError("unsupported_parameter", reason)
        return value

    return Annotated[Any, AfterValidator(check)]


# --- content parts -------------------------------------------------------------------------------

class TextPart(Request):
    type: Literal["text"]
    text: str


class ImageURL(Request):
    url: str
    detail: str | None = None


class PixelBudget(Request):
    """Extension: the pixels one image may have after resizing, within the server's bounds: vLLM's
    `mm_processor_kwargs` of a request, or Qwen's (qwen-vl-utils') keys beside an image part's image."""

    min_pixels: int | None = None
    max_pixels: int | None = None


class ImageURLPart(PixelBudget):
    type: Literal["image_url"]
    image_url: ImageURL


class HoloImage(Request):
    b64: str


class HoloImagePart(PixelBudget):
    """Extension: the original Holo API's `{"type": "image", "image": {"b64": ...}}`."""

    type: Literal["image"]
    image: HoloImage


ContentPart = Annotated[TextPart | ImageURLPart | HoloImagePart, Field(discriminator="type")]
CONTENT_PART_FORMS = ('{"type": "text", "text": ...}, {"type": "image_url", "image_url": {"url": ...}} '
                      'or {"type": "image", "image": {"b64": ...}}')


# --- tools ---------------------------------------------------------------------------------------

class FunctionDefinition(Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None  # a JSON schema; the arguments are held to it either way
    strict: bool | None = None


class FunctionTool(Request):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(Request):
    name: str


class NamedToolChoice(Request):
    type: Literal["function"]
    function: FunctionName


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class CalledFunction(Request):
    """A function an earlier assistant turn called, in a request's history."""

    name: str
    # JSON text as OpenAI sends it, or the object itself as some clients send it: Qwen's templates take
    # either (Holo3's iterates the object's items), so both reach the prompt alike.
    arguments: str | dict[str, Any]


class CalledTool(Request):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # Parts are checked one by one (content.to_parts), so a bad one is named by its own index.
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[CalledTool] | None = None  # assistant
    tool_call_id: str | None = None  # tool
    # Extension: an assistant turn's reasoning, as this server returns it (vLLM's newer name accepted too).
    reasoning_content: str | None = Field(None, validation_alias=AliasChoices("reasoning_content", "reasoning"))


class StreamOptions(Request):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # a hint: padding against size side channels, nothing to pad here


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


class MMProcessorKwargs(PixelBudget):
    """Extension (vLLM): `"mm_processor_kwargs": {"min_pixels", "max_pixels"}`, for every image of
    the request (an image part's own keys win); other keys are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class HoloOptions(Request):
    """Extension: `"holo": {...}` in a chat request."""

    model_config = ConfigDict(extra="forbid")
    # Rewrite x/y and boxes of the JSON answer into the original image's pixels (None: the server's
    # --map-coordinates).
    map_coordinates: bool | None = None


# --- requests ------------------------------------------------------------------------------------

class PlatformHints(Request):
    """OpenAI's fields about its platform that chat completions and the Responses API share: hints
    that cannot change the answer here (no tiers, no billing, one prefix cache managed by the server),
    accepted and unused; `moderation` would filter the answer and is refused."""

    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    moderation: refused("moderation is not available on this server") = None


class SamplingFields(Request):
    """Fields shared by chat and text completions."""

    NULL_MEANS_ABSENT = ("stream", "n")
    max_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    user: str | None = None  # a hint: nothing is logged per user
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias
    # vLLM extensions, used by benchmarks and agents (UI-TARS sends repetition_penalty)
    top_k: int | None = None
    min_p: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    repetition_penalty: float | None = None
    # structured output: OpenAI's field, vLLM's, and vLLM's older one (the Holo cookbook sends it)
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict | str | None = None
    mm_processor_kwargs: MMProcessorKwargs | None = None  # vLLM's


class ChatCompletionRequest(SamplingFields, PlatformHints):
    NULL_MEANS_ABSENT = (*SamplingFields.NULL_MEANS_ABSENT, "logprobs")
    messages: list[ChatMessage]
    model: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # The legacy forms of tools and tool_choice: read as those (one call at most), answered in their
    # own form (message.function_call, finish_reason "function_call").
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | FunctionName | None = None
    logprobs: bool = False
    max_completion_tokens: int | None = None
    top_logprobs: int | None = None
    holo: HoloOptions | None = None
    # The next three take any JSON: server/reasoning_fields.py answers a bad value with a 400 naming it.
    # OpenAI's: "none" turns thinking off, a level reaches the chat template as `reasoning_effort`.
    reasoning_effort: Any = None
    # Extension (vLLM): the most reasoning tokens before `</think>` is forced (None: --reasoning-budget).
    thinking_token_budget: Any = None
    # Extension (vLLM): more chat template variables, e.g. {"enable_thinking": false}.
    chat_template_kwargs: Any = None
    # Hints: nothing is stored or listed, and the answer's length is the model's own.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    modalities: refused("this server generates text only: modalities can only be [\"text\"]", ["text"]) = None
    audio: refused("this server generates no audio") = None
    web_search_options: refused("this server has no web search") = None
    prediction: refused("predicted outputs are not supported") = None

    @field_validator("functions", "function_call")
    @classmethod
    def _legacy_or_tools(cls, value, info):
        if value is not None and (info.data.get("tools") is not None or info.data.get("tool_choice") is not None):
            raise ValueError("send functions / function_call or tools / tool_choice, not both")
        return value

    @model_validator(mode="after")
    def _functions_as_tools(self):
        if self.functions is not None:
            self.tools = [FunctionTool(type="function", function=function) for function in self.functions]
            self.parallel_tool_calls = False
        if isinstance(self.function_call, FunctionName):
            self.tool_choice = NamedToolChoice(type="function", function=self.function_call)
        elif self.function_call is not None:
            self.tool_choice = self.function_call
        return self


class CompletionRequest(SamplingFields):
    NULL_MEANS_ABSENT = (*SamplingFields.NULL_MEANS_ABSENT, "echo")
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = None
    echo: bool = False
    logprobs: int | None = None
    suffix: refused("suffix (insertion) is not supported", "") = None


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


class TokenizeRequest(Request):
    """Extension (vLLM): POST /tokenize of a raw `prompt` (vLLM's TokenizeCompletionRequest) or of chat
    `messages` through the chat template, as chat completions builds them (its TokenizeChatRequest):
    one model for both, so a bad field's error names that field alone."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    # vLLM's defaults: true for a prompt, false for messages (the chat template writes their special
    # tokens; Qwen's tokenizers add none either way).
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True  # messages only, as the next two
    chat_template_kwargs: Any = None
    tools: list[FunctionTool] | None = None
    return_token_strs: bool | None = False
    mm_processor_kwargs: MMProcessorKwargs | None = None  # messages only, as in chat completions


class DetokenizeRequest(Request):
    """Extension (vLLM): POST /detokenize."""

    model: str | None = None
    tokens: list[int]


# --- responses -----------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0  # a thinking model's, `</think>` included


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None  # chat completions


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobEntry]
    refusal: list[TokenLogprobEntry] | None = None  # the model never refuses here: always null


class ReasoningAlias(BaseModel):
    """Extension: a thinking model's `reasoning_content` (the name vLLM's reasoning parsers first
    gave it; null when the prompt opened no reasoning) also sent as `reasoning`, vLLM's and mlx-lm's
    name now."""

    @computed_field
    @property
    def reasoning(self) -> str | None:
        return self.reasoning_content


class LegacyFunctionCall(BaseModel):
    """The legacy `function_call` of an answer, sent only to requests with `functions`."""

    function_call: FunctionCall | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_function_call(self, handler):
        data = handler(self)
        if data.get("function_call", ...) is None:
            del data["function_call"]
        return data


class AssistantMessage(ReasoningAlias, LegacyFunctionCall):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None  # OpenAI's, always sent: null, as no refusal is ever told apart here
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ImageSize(BaseModel):
    width: int
    height: int


class ImageResize(BaseModel):
    original: ImageSize
    resized: ImageSize  # Holo1.5 answers coordinates in these pixels


class TruncationInfo(BaseModel):
    """Extension: what `truncation: "auto"` dropped from a Responses conversation to fit the context
    (messages as the prompt has them: a message and its function calls are one)."""

    dropped_messages: int = 0
    dropped_images: int = 0


class HoloInfo(BaseModel):
    """Extension: how each input image was resized, in prompt order, whether the answer's
    coordinates were mapped into the original image's pixels (and if not, why), and (Responses)
    what truncation dropped."""

    images: list[ImageResize]
    map_coordinates: str | None = None
    truncation: TruncationInfo | None = None


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


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCall


class ChatDelta(ReasoningAlias, LegacyFunctionCall):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


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


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "holo-mlx"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON body with OpenAI's explicit nulls; the `holo` extension is left out when unset, and so is
    its `truncation` (Responses only)."""
    data = model.model_dump()
    if data.get("holo", ...) is None:
        del data["holo"]
    elif "holo" in data and data["holo"]["truncation"] is None:
        del data["holo"]["truncation"]
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


class RankInfo(BaseModel):
    rank: int
    host: str
    weight_bytes: int = Field(description="bytes of the weights this rank holds")


class Health(BaseModel):
    """GET /health, 200 once the model is ready and 503 before (or once it cannot serve: a failed load,
    a lost rank)."""

    status: Literal["loading", "ready", "error"]
    model: str
    model_path: str
    device: str
    dtype: str | None
    family: str | None = Field(description="the model family (registry name) once loaded")
    coordinates: Literal["resized_pixels", "normalized_1000"] | None = Field(
        description="where the family's answers put x and y: pixels of the resized image, or 0-1000 on each axis")
    max_side: int | None = Field(description="longest image side before resizing; null: no cap")
    max_pixels: int | None = Field(description="pixel budget per image after resizing, in force")
    min_pixels: int | None = Field(description="the checkpoint's pixel floor per image")
    error: str | None = Field(description="why the server cannot serve (status \"error\"): the model failed "
                                           "to load, or a rank was lost")
    ranks: list[RankInfo] | None = Field(description="the processes holding the model once loaded: one for a "
                                                     "single-process server")
    requests_running: int
    requests_waiting: int


# --- Responses API -------------------------------------------------------------------------------

class ResponseFormatText(Request):
    """`text.format` of the Responses API: text, json_object, or json_schema (flat: name, schema, strict)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseText(Request):
    format: ResponseFormatText | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # a hint: the answer's length is the model's own


class ReasoningOptions(Request):
    """The Responses API's `reasoning`."""

    effort: Any = None  # as chat completions' reasoning_effort
    summary: str | None = None  # the reasoning comes whole (a reasoning item's text): no summaries
    generate_summary: str | None = None  # summary's older name


class ResponseStreamOptions(Request):
    include_obfuscation: bool | None = None  # a hint, as in chat completions


INCLUDABLE = Literal["file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
                     "message.input_image.image_url", "computer_call_output.output.image_url",
                     "code_interpreter_call.outputs", "reasoning.encrypted_content", "message.output_text.logprobs"]


class ResponsesRequest(PlatformHints):
    """POST /v1/responses. Input items are checked one by one (server/responses.py), so a bad one
    is named by its index."""

    NULL_MEANS_ABSENT = ("stream", "store")

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: ResponseText | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[str, str] | None = None
    # message.output_text.logprobs is honoured; the others name items this server never answers with
    # (hosted tools' results, input listings) or, reasoning.encrypted_content, reasoning it sends in clear.
    include: list[INCLUDABLE] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    stream_options: ResponseStreamOptions | None = None
    background: refused("background responses are not supported: send the request and wait", False) = None
    conversation: refused("conversations are not supported: continue with previous_response_id") = None
    prompt: refused("prompt templates are not supported: send the input itself") = None
    context_management: refused("context management (compaction) is not supported") = None
    reasoning: ReasoningOptions | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = Field(None, ge=0)
    thinking_token_budget: Any = None  # extension, as in chat completions
    chat_template_kwargs: Any = None  # extension, as in chat completions
    mm_processor_kwargs: MMProcessorKwargs | None = None  # extension, as in chat completions

    @property
    def wants_logprobs(self) -> bool:
        """include ["message.output_text.logprobs"], or top_logprobs (which means nothing without it)."""
        return "message.output_text.logprobs" in (self.include or ()) or self.top_logprobs is not None


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItem(BaseModel):
    """A thinking model's reasoning, before the answer's items: the text itself (no summary)."""

    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list = []
    content: list[ReasoningText]
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list = []  # citations of OpenAI's own tools: none here
    logprobs: list[TokenLogprobEntry] = []  # with include ["message.output_text.logprobs"]


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallItem(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


class ComputerCallItem(BaseModel):
    type: Literal["computer_call"] = "computer_call"
    id: str
    call_id: str
    action: dict[str, Any]  # click, double_click, scroll, type, keypress, wait, drag, move, screenshot
    pending_safety_checks: list = []
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


OutputItem = ReasoningItem | OutputMessage | FunctionCallItem | ComputerCallItem


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # OpenAI bills writes to its cache apart; this server's prefix cache costs nothing


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: dict | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = []
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = []
    max_tool_calls: int | None = None
    top_logprobs: int | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: str = "disabled"
    store: bool = True
    metadata: dict[str, str] = {}
    usage: ResponseUsage | None = None
    user: str | None = None
    reasoning: dict[str, Any] | None = None  # the request's effort and summary, echoed
    holo: HoloInfo | None = None  # extension, as in chat completions


class ResponseEvent(BaseModel):
    """One event of a streamed response (`event:` its type): created, output items and their text,
    then completed or incomplete; the fields besides these two depend on the type."""

    model_config = ConfigDict(extra="allow")

    type: str
    sequence_number: int


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
