"""A chat request's tools: which reach the prompt, the grammar that holds the calls, and the answer
split into content and calls."""

import asyncio
from dataclasses import dataclass

from ..constrain import Grammars, SchemaError
from ..tool_format import CallStream, CallsWhenOpened, ParsedCall, ToolFormat
from .errors import APIError
from .protocol import ChatCompletionRequest, FunctionCall, ToolCall, ToolCallDelta


@dataclass
class ToolUse:
    """What a request's tools mean for its prompt, its decoding and its answer."""

    tools: list[dict]  # OpenAI function tools for the prompt
    grammar: object  # a Grammar (required or named: the answer is calls) or CallsWhenOpened (auto)
    format: ToolFormat

    def parse(self, text: str) -> tuple[str, list[ParsedCall]]:
        """The answer's content and its calls (their arguments typed by these tools' schemas where
        the format writes untyped text)."""
        return self.format.parse(text, self.tools)

    def stream(self) -> CallStream:
        return self.format.stream(self.tools)


async def tool_use(body: ChatCompletionRequest, grammars: Grammars, tool_format: ToolFormat,
                   has_schema: bool) -> ToolUse | None:
    """None when the request has no tools or tool_choice is "none" (its tools are then left out of
    the prompt, so the model is not invited to call them)."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        return None
    if choice == "none":
        return None
    if has_schema:
        raise APIError(400, "tools and a response schema cannot be combined; send tool_choice \"none\" "
                       "to answer in the schema", param="tools")
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools]
    names = [tool["function"]["name"] for tool in tools]
    if len(set(names)) != len(names):
        raise APIError(400, "tool names must be unique", param="tools")
    called = tools
    if choice is not None and not isinstance(choice, str):
        if choice.function.name not in names:
            raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not in tools",
                           param="tool_choice")
        called = [tools[names.index(choice.function.name)]]
    try:
        grammar = await asyncio.to_thread(tool_format.grammar, grammars, called, parallel=body.parallel_tool_calls)
    except SchemaError as error:
        raise APIError(400, f"invalid function parameters schema: {error}", param="tools",
                       code="invalid_json_schema") from None
    if choice in (None, "auto"):
        opening = grammars.hf_tokenizer.convert_tokens_to_ids(tool_format.opening)
        grammar = CallsWhenOpened(grammar, opening, grammars.vocab_size)
    return ToolUse(tools, grammar, tool_format)


def as_tool_calls(calls: list[ParsedCall]) -> list[ToolCall]:
    return [ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments)) for call in calls]


def as_deltas(calls: list[ParsedCall], first_index: int) -> list[ToolCallDelta]:
    """Each call whole in one delta (the SDKs accumulate name and arguments either way)."""
    return [ToolCallDelta(index=first_index + number, id=call.id, type="function",
                          function=FunctionCall(name=call.name, arguments=call.arguments))
            for number, call in enumerate(calls)]
