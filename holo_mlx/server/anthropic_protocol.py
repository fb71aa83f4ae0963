"""Anthropic Messages API request and response types (POST /v1/messages and /v1/messages/count_tokens).

Unknown request fields are accepted and logged, as on the OpenAI routes (protocol.Request): Anthropic's
clients send hints (`metadata`, `service_tier`, `cache_control` on blocks) that have nothing to honour here.
Content blocks and tools are checked one by one (server/anthropic_chat.py), so a bad one is named by its index.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .protocol import Request, new_id

# --- request content blocks ------------------------------------------------------------------------------


class TextBlock(Request):
    type: Literal["text"]
    text: str


class Base64Source(Request):
    type: Literal["base64"]
    media_type: str
    data: str


class URLSource(Request):
    type: Literal["url"]
    url: str


class ImageBlock(Request):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]


class ToolUseBlock(Request):
    """An earlier assistant turn's call."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(Request):
    """A call's result, in the next user turn."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = ""
    is_error: bool = False


class ThinkingBlock(Request):
    """An earlier assistant turn's reasoning (its signature is not checked: this server signs nothing)."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(Request):
    """Claude's encrypted reasoning: nothing a local model can read; left out of the prompt."""

    type: Literal["redacted_thinking"]
    data: str


InputBlock = Annotated[TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
                       Field(discriminator="type")]
INPUT_BLOCK_TYPES = "text, image, tool_use, tool_result, thinking or redacted_thinking"


class MessageParam(Request):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]  # blocks checked one by one, as InputBlock


# --- tools -------------------------------------------------------------------------------------------------

class CustomTool(Request):
    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]


COMPUTER_TOOL_TYPES = ("computer_20241022", "computer_20250124", "computer_20251124")
# Anthropic's reference computer-use loop sends its shell and editor tools beside the computer: taken
# with a computer tool (Holo's navigation step never calls them), refused without one.
COMPANION_TOOL_PREFIXES = ("bash_", "text_editor_")


class ComputerTool(Request):
    type: Literal["computer_20241022", "computer_20250124", "computer_20251124"]
    name: str = "computer"
    display_width_px: int = Field(gt=0)
    display_height_px: int = Field(gt=0)
    display_number: int | None = None  # the client's X11 display: nothing to do with the model


class ToolChoiceAuto(Request):
    type: Literal["auto"]
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(Request):
    type: Literal["any"]
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(Request):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(Request):
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")]


class ThinkingEnabled(Request):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1)


class ThinkingAdaptive(Request):
    """The model decides how long to think: the server's --reasoning-budget holds it."""

    type: Literal["adaptive"]


class ThinkingDisabled(Request):
    type: Literal["disabled"]


Thinking = Annotated[ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled, Field(discriminator="type")]


class JSONOutputFormat(Request):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Request):
    """Anthropic's structured output: the answer's text held to `format`'s schema (as chat's
    response_format). `effort` is a hint for Claude: nothing to honour here."""

    format: JSONOutputFormat | None = None
    effort: str | None = None


# --- requests ----------------------------------------------------------------------------------------------

class CountTokensRequest(Request):
    """POST /v1/messages/count_tokens: the prompt's fields of a message request."""

    model: str
    messages: list[MessageParam]
    system: str | list[TextBlock] | None = None
    tools: list[dict[str, Any]] | None = None  # CustomTool or ComputerTool, checked one by one
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages. temperature, top_p and top_k are read from the body whether a client puts
    them there (LangChain) or the anthropic SDK 2.x sends them through extra_body (the same place)."""

    NULL_MEANS_ABSENT = ("stream",)
    max_tokens: int
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None  # a hint (user_id): nothing to honour here
    seed: int | None = None  # extension, as chat's: the same seed and request sample the same answer
    output_config: OutputConfig | None = None


# --- responses ---------------------------------------------------------------------------------------------

class TextContent(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingContent(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""  # nothing to sign: a thinking block sent back is read as it is


class ToolUseContent(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str = Field(default_factory=lambda: new_id("toolu").replace("-", "_"))
    name: str
    input: dict[str, Any]


ContentBlock = ThinkingContent | TextContent | ToolUseContent
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageUsage(BaseModel):
    input_tokens: int  # the prompt's tokens not read from the prefix cache
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0  # the prompt's tokens the prefix cache held


class Message(BaseModel):
    id: str = Field(default_factory=lambda: new_id("msg").replace("-", "_"))
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: MessageUsage


class TokenCount(BaseModel):
    input_tokens: int


class StreamEvent(BaseModel):
    """One event of a streamed message (`event:` its type): message_start, ping, content_block_start /
    _delta / _stop per block, message_delta, message_stop; or error."""

    model_config = ConfigDict(extra="allow")
    type: str


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    """Anthropic's error envelope: every 4xx and 5xx body of these routes (see errors.anthropic_envelope)."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail
