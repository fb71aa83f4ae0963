"""Anthropic's Messages API over the chat path: a message request becomes one ChatCompletionRequest
(system and turns as chat messages, tool_use / tool_result blocks as tool calls and tool messages,
thinking blocks as the turn's reasoning), which runs through chat.start_chat like any chat request;
the answer becomes content blocks (thinking, text, tool_use), whole or as Anthropic's event stream.

With a computer tool (computer_20241022 / _20250124 / _20251124) the turn is one step of the family's
computer-use harness (agent.py), as on the Responses API (server/computer.py), its actions written as
the computer tool's `tool_use` input.
"""

import json
from dataclasses import dataclass, field

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..engine.stream import GenerationChunk
from . import computer
from .anthropic_protocol import (COMPANION_TOOL_PREFIXES, COMPUTER_TOOL_TYPES, INPUT_BLOCK_TYPES, ComputerTool,
                                 CountTokensRequest, CustomTool, ImageBlock, InputBlock, Message, MessagesRequest,
                                 MessageUsage, RedactedThinkingBlock, TextBlock, TextContent, ThinkingAdaptive,
                                 ThinkingBlock, ThinkingContent, ThinkingDisabled, ThinkingEnabled, ToolChoiceAny,
                                 ToolChoiceNone, ToolChoiceTool, ToolResultBlock, ToolUseBlock, ToolUseContent)
from .chat import ChatRun
from .computer import Screen
from .errors import APIError, anthropic_envelope
from .protocol import ChatCompletionRequest
from .streaming import sse

INPUT_BLOCK = TypeAdapter(InputBlock)


def validated(model, value, param: str):
    """`value` as `model` (a pydantic model or TypeAdapter); 400 naming the first bad field under `param`."""
    try:
        return model.validate_python(value) if isinstance(model, TypeAdapter) else model.model_validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join([param, *(str(part) for part in first["loc"])] if param else map(str, first["loc"]))
        raise APIError(400, f"{location}: {first['msg']}", param=location) from None


# --- the request's turns -> chat messages --------------------------------------------------------------

@dataclass
class Conversation:
    """A request's system and turns as chat messages, each message and content part with the place in
    the request it came from (a user turn of tool results becomes several chat messages), so that an
    error met on the chat path names the request's own field."""

    messages: list[dict] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)  # "messages.3.content.1" -> "messages.1.content.2"

    def add(self, message: dict, origin: str, part_origins: list[str] = ()) -> None:
        where = f"messages.{len(self.messages)}"
        self.messages.append(message)
        self.origins[where] = origin
        self.origins.update({f"{where}.content.{index}": part for index, part in enumerate(part_origins)})

    def origin(self, param: str | None) -> str | None:
        """The request's field for a chat message's (`param` itself when it names no message)."""
        for where in sorted(self.origins, key=len, reverse=True):
            if param == where or (param or "").startswith(where + "."):
                return self.origins[where] + param[len(where):]
        return param

    def renamed(self, error: APIError) -> APIError:
        error.param = self.origin(error.param)
        return error

    def image_origins(self) -> dict[str, str]:
        """Each image's URL -> where the request has it (a computer-use turn's prompt carries images only)."""
        return {part["image_url"]["url"]: self.origin(f"messages.{index}.content.{number}")
                for index, message in enumerate(self.messages) if isinstance(message["content"], list)
                for number, part in enumerate(message["content"]) if part["type"] == "image_url"}


def image_part(block: ImageBlock) -> dict:
    source = block.source
    url = source.url if source.type == "url" else f"data:{source.media_type};base64,{source.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def conversation_of(body: CountTokensRequest) -> Conversation:
    if not body.messages:
        raise APIError(400, "messages must not be empty", param="messages")
    conversation = Conversation()
    if body.system:
        system = body.system if isinstance(body.system, str) else "\n".join(block.text for block in body.system)
        conversation.add({"role": "system", "content": system}, "system")
    for index, message in enumerate(body.messages):
        where = f"messages.{index}"
        if isinstance(message.content, str):
            conversation.add({"role": message.role, "content": message.content}, where)
            continue
        blocks = [(validated(INPUT_BLOCK, block, f"{where}.content.{number}"), f"{where}.content.{number}")
                  for number, block in enumerate(message.content)]
        if message.role == "assistant":
            conversation.add(assistant_message(blocks), where)
        else:
            add_user_turn(conversation, blocks, where)
    return conversation


def assistant_message(blocks: list[tuple[BaseModel, str]]) -> dict:
    """An assistant turn: its text, its calls (tool_use input as the arguments) and its reasoning."""
    text, calls, reasoning = [], [], []
    for block, where in blocks:
        if isinstance(block, TextBlock):
            text.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append({"id": block.id, "type": "function",
                          "function": {"name": block.name, "arguments": block.input}})
        elif isinstance(block, ThinkingBlock):
            reasoning.append(block.thinking)
        elif not isinstance(block, RedactedThinkingBlock):
            raise APIError(400, f"{where}: an assistant turn holds text, tool_use and thinking blocks, not "
                           f"{block.type}", param=f"{where}.type")
    message = {"role": "assistant", "content": "".join(text)}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    return message


def add_user_turn(conversation: Conversation, blocks: list[tuple[BaseModel, str]], where: str) -> None:
    """A user turn: each tool result as a tool message, the text and images between them as user messages."""
    parts, origins = [], []

    def flush():
        if parts:
            conversation.add({"role": "user", "content": parts[:]}, where, origins[:])
            parts.clear()
            origins.clear()

    for block, origin in blocks:
        if isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(image_part(block))
        elif isinstance(block, ToolResultBlock):
            flush()
            content = block.content if isinstance(block.content, str) else [
                image_part(item) if isinstance(item, ImageBlock) else {"type": "text", "text": item.text}
                for item in block.content]
            conversation.add({"role": "tool", "tool_call_id": block.tool_use_id, "content": content}, origin,
                             [f"{origin}.content.{number}" for number in range(len(content))]
                             if isinstance(content, list) else [])
            continue
        else:
            raise APIError(400, f"{origin}: a user turn holds text, image and tool_result blocks, not {block.type} "
                           f"(blocks: {INPUT_BLOCK_TYPES})", param=f"{origin}.type")
        origins.append(origin)
    flush()

# --- tools and the chat request -------------------------------------------------------------------------

@dataclass
class Tools:
    """A request's tools: its function tools in chat's format, and its computer tool if any."""

    functions: list[dict] | None
    computer: ComputerTool | None = None

    @property
    def screen(self) -> Screen:
        return Screen((self.computer.display_width_px, self.computer.display_height_px))


def tools_of(body: CountTokensRequest) -> Tools:
    functions, computers, companions = [], [], []
    for index, tool in enumerate(body.tools or []):
        where = f"tools.{index}"
        kind = tool.get("type")
        if kind in (None, "custom"):
            custom = validated(CustomTool, tool, where)
            functions.append({"type": "function", "function": {
                "name": custom.name, "description": custom.description, "parameters": custom.input_schema}})
        elif kind in COMPUTER_TOOL_TYPES:
            computers.append(validated(ComputerTool, tool, where))
        elif isinstance(kind, str) and kind.startswith(COMPANION_TOOL_PREFIXES):
            companions.append(where)
        else:
            raise APIError(400, f"{where}.type: tools of type {kind!r} are not supported here (custom tools and "
                           f"the computer tool, {', '.join(COMPUTER_TOOL_TYPES)}, are)", param=f"{where}.type")
    if len(computers) > 1:
        raise APIError(400, "give one computer tool", param="tools")
    if companions and not computers:
        raise APIError(400, f"{companions[0]}.type: the bash and text editor tools are taken only beside a computer "
                       "tool (and never called: Holo's navigation step drives the computer alone)",
                       param=f"{companions[0]}.type")
    if computers and functions:
        raise APIError(400, "a computer tool cannot be combined with custom tools here", param="tools")
    if computers and isinstance(body.tool_choice, ToolChoiceNone):
        return Tools(None)  # no tools: a plain answer
    return Tools(functions or None, computers[0] if computers else None)


def chat_tool_choice(body: CountTokensRequest):
    choice = body.tool_choice
    if choice is None:
        return None
    if isinstance(choice, ToolChoiceTool):
        return {"type": "function", "function": {"name": choice.name}}
    return "required" if isinstance(choice, ToolChoiceAny) else choice.type


def reasoning_fields(body: CountTokensRequest) -> dict:
    """Anthropic's `thinking` as chat's reasoning controls: enabled (with its budget) or adaptive turns
    the chat template's thinking on, disabled turns it off; absent leaves the family's default."""
    thinking = body.thinking
    if isinstance(thinking, ThinkingDisabled):
        return {"reasoning_effort": "none"}
    if isinstance(thinking, (ThinkingEnabled, ThinkingAdaptive)):
        budget = thinking.budget_tokens if isinstance(thinking, ThinkingEnabled) else None
        return {"chat_template_kwargs": {"enable_thinking": True}, "thinking_token_budget": budget}
    return {}


def chat_request(body: CountTokensRequest, messages: list[dict], tools: list[dict] | None,
                 **more) -> ChatCompletionRequest:
    """The chat request of a message request (the prompt's fields; `more`: its sampling and the rest)."""
    parallel = not getattr(body.tool_choice, "disable_parallel_tool_use", False)
    fields = {"model": body.model, "messages": messages, "tools": tools, "tool_choice": chat_tool_choice(body),
              "parallel_tool_calls": parallel, **reasoning_fields(body), **more}
    return validated(ChatCompletionRequest, {key: value for key, value in fields.items() if value is not None}, "")


def sampling_fields(body: MessagesRequest) -> dict:
    if isinstance(body.thinking, ThinkingEnabled) and body.thinking.budget_tokens >= body.max_tokens:
        raise APIError(400, f"thinking.budget_tokens ({body.thinking.budget_tokens}) must be less than max_tokens "
                       f"({body.max_tokens}): the reasoning counts against it", param="thinking.budget_tokens")
    form = body.output_config.format if body.output_config else None
    return {"max_tokens": body.max_tokens, "stop": body.stop_sequences, "temperature": body.temperature,
            "top_p": body.top_p, "top_k": body.top_k, "seed": body.seed, "stream": body.stream,
            "response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": form.schema_}}
            if form else None}


# --- the answer -----------------------------------------------------------------------------------------

def usage(run: ChatRun | None, output_tokens: int) -> MessageUsage:
    """The prompt's tokens split as Anthropic does: those the prefix cache held are cache reads."""
    if run is None:
        return MessageUsage(input_tokens=0, output_tokens=output_tokens)
    cached = run.generations[0].cached_tokens
    return MessageUsage(input_tokens=len(run.prompt.input_ids) - cached, output_tokens=output_tokens,
                        cache_read_input_tokens=cached)


def stop_reason(last: GenerationChunk | None, called: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of an answer: "max_tokens" whenever the budget ended it, calls or
    not, as chat.finish_reason_of says "length" (the budget may have closed the calls early)."""
    if last is not None and last.finish_reason == "length":
        return "max_tokens", None
    if called:
        return "tool_use", None
    if last is not None and last.stop_sequence is not None:
        return "stop_sequence", last.stop_sequence
    return "end_turn", None


def tool_use_block(call) -> ToolUseContent:
    return ToolUseContent(name=call.name, input=json.loads(call.arguments))


def message_of(run: ChatRun, model: str, chunks: list[GenerationChunk]) -> Message:
    """The whole answer: its reasoning (a thinking model's), then its text, then its calls."""
    text, calls = run.answer("".join(chunk.text for chunk in chunks))
    reasoning = run.reasoning(chunks)
    blocks = [] if reasoning is None else [ThinkingContent(thinking=reasoning)]
    if text or not calls:
        blocks.append(TextContent(text=text))
    blocks += [tool_use_block(call) for call in calls]
    reason, sequence = stop_reason(chunks[-1] if chunks else None, bool(calls))
    return Message(model=model, content=blocks, stop_reason=reason, stop_sequence=sequence,
                   usage=usage(run, len(chunks)))


# --- the event stream -------------------------------------------------------------------------------------

# A block's opening (content_block_start) and how its content goes as a delta, by type.
OPENING = {"text": {"type": "text", "text": ""}, "thinking": {"type": "thinking", "thinking": "", "signature": ""}}
DELTA = {"text": ("text_delta", "text"), "thinking": ("thinking_delta", "thinking")}


class Events:
    """Anthropic's server-sent events of one message, its content blocks numbered as they open."""

    def __init__(self):
        self.index, self.open = -1, None  # the latest block, and its type while it is open

    @staticmethod
    def send(kind: str, **fields) -> str:
        return f"event: {kind}\n{sse({'type': kind, **fields})}"

    def opening(self, message: Message) -> list[str]:
        started = message.model_dump()
        started.update(content=[], stop_reason=None, stop_sequence=None,
                       usage={**started["usage"], "output_tokens": 0})
        return [self.send("message_start", message=started), self.send("ping")]

    def start(self, block: dict) -> list[str]:
        """A block opened (the open one closed first)."""
        closed = self.close()
        self.index, self.open = self.index + 1, block["type"]
        return closed + [self.send("content_block_start", index=self.index, content_block=block)]

    def delta(self, kind: str, text: str) -> str:
        name, key = DELTA[kind]
        return self.send("content_block_delta", index=self.index, delta={"type": name, key: text})

    def text(self, kind: str, text: str) -> list[str]:
        """Text of a text or thinking block, opening one when the open block is of another type."""
        return ([] if self.open == kind else self.start(OPENING[kind])) + ([self.delta(kind, text)] if text else [])

    def tool_use(self, block: ToolUseContent) -> list[str]:
        """A whole call: opened with an empty input, which one input_json_delta fills."""
        return self.start({**block.model_dump(), "input": {}}) + [
            self.send("content_block_delta", index=self.index,
                      delta={"type": "input_json_delta", "partial_json": json.dumps(block.input)})] + self.close()

    def close(self) -> list[str]:
        if self.open is None:
            return []
        self.open = None
        return [self.send("content_block_stop", index=self.index)]

    def ending(self, message: Message) -> list[str]:
        return self.close() + [
            self.send("message_delta", usage=message.usage.model_dump(),
                      delta={"stop_reason": message.stop_reason, "stop_sequence": message.stop_sequence}),
            self.send("message_stop")]


def whole_message_events(message: Message):
    """The events of a message known whole: each block opened, given in one delta, closed."""
    events = Events()
    yield from events.opening(message)
    for block in message.content:
        if isinstance(block, ToolUseContent):
            yield from events.tool_use(block)
        else:
            yield from events.text(block.type, getattr(block, block.type))
            yield from events.close()
    yield from events.ending(message)


async def live_events(run: ChatRun, model: str):
    """The events of an answer as it is generated: thinking deltas, then text deltas, each call whole
    as soon as it is parsed, then the stop reason and usage."""
    events, chunks, called = Events(), [], False
    split = run.tools.stream() if run.tools is not None else None
    for event in events.opening(Message(model=model, content=[], stop_reason=None, usage=usage(run, 0))):
        yield event
    try:
        async for chunk in run.generations[0]:
            chunks.append(chunk)
            if chunk.reasoning is not None:
                for event in events.text("thinking", chunk.reasoning):
                    yield event
                continue
            text, calls = (chunk.text, []) if split is None else split.add(chunk.text)
            if chunk.finish_reason and split is not None:
                text += split.finish()
            if text:
                for event in events.text("text", text):
                    yield event
            for call in calls:
                called = True
                for event in events.tool_use(tool_use_block(call)):
                    yield event
    finally:  # a client gone mid-stream frees the sequence
        run.generations[0].cancel()
    if events.index < 0:  # no answer at all: still one (empty) text block
        for event in events.start(OPENING["text"]):
            yield event
    reason, sequence = stop_reason(chunks[-1] if chunks else None, called)
    for event in events.ending(Message(model=model, content=[], stop_reason=reason, stop_sequence=sequence,
                                       usage=usage(run, len(chunks)))):
        yield event


def error_event(error: APIError) -> str:
    """A failure after the stream began, as Anthropic sends it."""
    return Events.send("error", **{key: value for key, value in anthropic_envelope(error.status, error.message,
                                                                                  error.param)[1].items()
                                   if key != "type"})


# --- the computer tool ------------------------------------------------------------------------------------

SCROLL_CLICKS = 5  # Anthropic scrolls by wheel clicks: about the half display the Responses API scrolls
KEYSYMS = {"ALT": "alt", "CMD": "cmd", "LEFT": "Left", "[": "bracketleft"}  # xdotool's names, as Anthropic's
# computer_20241022 has no scroll or wait: the keys that page instead, and a screenshot to look again.
PAGE_KEYS = {"down": "Page_Down", "up": "Page_Up", "left": "Left", "right": "Right"}


def computer_input(action: dict, tool: ComputerTool) -> dict:
    """A computer action of server/computer.py (positions already on the display) as the `tool_use`
    input of Anthropic's computer tool."""
    kind = action["type"]
    if kind == "click":
        return {"action": "left_click", "coordinate": [action["x"], action["y"]]}
    if kind == "type":
        return {"action": "type", "text": action["text"]}
    if kind == "keypress":
        return {"action": "key", "text": "+".join(KEYSYMS.get(key, key if len(key) > 1 else key.lower())
                                                  for key in action["keys"])}
    old = tool.type == "computer_20241022"
    if kind == "scroll":
        horizontal = action["scroll_x"] != 0
        amount = action["scroll_x"] if horizontal else action["scroll_y"]
        direction = ("right" if amount > 0 else "left") if horizontal else ("down" if amount > 0 else "up")
        if old:
            return {"action": "key", "text": PAGE_KEYS[direction]}
        return {"action": "scroll", "coordinate": [action["x"], action["y"]], "scroll_direction": direction,
                "scroll_amount": SCROLL_CLICKS}
    return {"action": "screenshot"} if old else {"action": "wait", "duration": 1}  # wait


def computer_conversation(messages: list[dict]) -> list[dict]:
    """The conversation as a harness reads it: each assistant turn's text with its calls' inputs after it
    (the actions so far); tool results (the screenshots) as they are."""
    def actions(message: dict) -> str:
        said = [message["content"]] if message["content"] else []
        return "\n".join(said + [json.dumps(call["function"]["arguments"]) for call in message.get("tool_calls", [])])

    return [{**message, "content": actions(message)} if message["role"] == "assistant" else message
            for message in messages]


def screenshot_message(tool: ComputerTool, model: str) -> Message:
    """The first turn without a screenshot: ask for one (the model does not run)."""
    return Message(model=model, content=[ToolUseContent(name=tool.name, input={"action": "screenshot"})],
                   stop_reason="tool_use", usage=usage(None, 0))


def computer_message(run: ChatRun, tools: Tools, model: str, chunks: list[GenerationChunk]) -> Message:
    """A navigation step's answer: its reasoning, then its actions as tool_use blocks, or its final answer
    as text; a step cut short by max_tokens as the text it got to."""
    text, family = "".join(chunk.text for chunk in chunks), run.served.engine.model.family
    reasoning = run.reasoning(chunks)
    blocks = [] if reasoning is None else [ThinkingContent(thinking=reasoning)]
    try:
        step = family.harness.step.model_validate_json(text)
    except ValidationError:
        reason, sequence = stop_reason(chunks[-1] if chunks else None, False)
        return Message(model=model, content=blocks + [TextContent(text=text)], stop_reason=reason,
                       stop_sequence=sequence, usage=usage(run, len(chunks)))
    image = run.prompt.images[-1]
    actions, answer = computer.computer_calls(family.harness.action(step), tools.screen, image.resized_size,
                                              image.original_size, family.coordinates)
    blocks += [ToolUseContent(name=tools.computer.name, input=computer_input(action, tools.computer))
               for action in actions]
    if answer is not None:
        blocks.append(TextContent(text=answer))
    return Message(model=model, content=blocks, stop_reason="tool_use" if actions else "end_turn",
                   usage=usage(run, len(chunks)))


def navigation_of(conversation: Conversation, family) -> Conversation:
    """The family's computer-use turn for the conversation so far (its harness's messages), each image
    named as the request has it."""
    origins = conversation.image_origins()
    navigation = Conversation()
    schema = computer.step_schema(family.harness, family.coordinates)
    for message in family.harness.messages(computer_conversation(conversation.messages), schema):
        parts = message["content"] if isinstance(message["content"], list) else []
        navigation.add(message, "messages", [origins.get(part.get("image_url", {}).get("url"), "messages")
                                             for part in parts])
    return navigation


def navigation_request(body: CountTokensRequest, navigation: Conversation, family, **sampling) -> ChatCompletionRequest:
    schema = computer.step_schema(family.harness, family.coordinates)
    return chat_request(body, navigation.messages, None, **{
        **sampling, "tool_choice": None, "parallel_tool_calls": None, "response_format": computer.step_format(schema)})
