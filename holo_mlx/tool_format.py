"""Tool calling in the Qwen/Hermes convention: tools written into the prompt, calls parsed out of
the answer, and the grammar that keeps a call valid.

Qwen2.5 and Qwen3 (and so Holo1.5 and Holo2) were trained on it: the tool definitions as JSON
lines inside <tools></tools> at the end of the system turn, each call answered as
    <tool_call>
    {"name": <function-name>, "arguments": <args-json-object>}
    </tool_call>
and each tool result sent back in a user turn inside <tool_response></tool_response>. When the
checkpoint's chat template writes tools itself, the template is used (PromptBuilder); otherwise
`render` writes the same text into plain messages, so the Qwen2.5-VL template (which has no tools)
gives what Qwen's own tools template gives.

The framing (calls between <tool_call> tags, results in <tool_response>) is shared with Qwen3.5's
XML calls (tool_format_xml.py): parse, CallStream, render and calls_grammar take the part that
differs.
"""

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import mlx.core as mx

from .constrain import JSON_OPTIONS, Grammar, Grammars
from .tokens import held_back

OPEN, CLOSE = "<tool_call>", "</tool_call>"
TOOLS_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
                "\"arguments\": <args-json-object>}\n</tool_call>")
CALL = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.DOTALL)
ANY_ARGUMENTS = {"type": "object"}


@dataclass(frozen=True)
class ParsedCall:
    """A call read out of the model's answer (server/tool_use.py gives it to clients as protocol.ToolCall)."""

    name: str
    arguments: str  # JSON text of an object, as OpenAI's API carries it
    id: str = ""

    @classmethod
    def new(cls, name: str, arguments: str) -> "ParsedCall":
        return cls(name, arguments, f"call_{uuid.uuid4().hex[:24]}")


def call_text(name: str, arguments: str | dict) -> str:
    """One call as the model writes it (Qwen's template: arguments as given when they are text)."""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return f'{OPEN}\n{{"name": "{name}", "arguments": {arguments}}}\n{CLOSE}'


def tools_block(tools: list[dict]) -> str:
    return TOOLS_HEADER + "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools) + TOOLS_FOOTER


def system_with_tools(system: str | None, tools: list[dict]) -> str:
    """Qwen3's system turn with tools: the system message first, the tools block after it."""
    return (system + "\n\n" if system is not None else "") + tools_block(tools)


def render(messages: list[dict], tools: list[dict] | None, *,
           system: Callable[[str | None, list[dict]], str] = system_with_tools,
           call: Callable[[str, str | dict], str] = call_text, after_content: str = "\n") -> list[dict]:
    """Tool definitions, assistant calls and tool results written into plain system, user and
    assistant messages (for chat templates without tool support). A format gives its system turn
    with tools (from the system message's text, None without one), its call text, and what
    separates an assistant's content from its calls."""
    rendered: list[dict] = []
    if tools:
        if messages and messages[0]["role"] == "system" and isinstance(messages[0]["content"], str):
            instructions, messages = messages[0]["content"], messages[1:]
        else:
            instructions = None
        rendered.append({"role": "system", "content": system(instructions, tools)})
    for message in messages:
        role = message["role"]
        if role == "assistant" and message.get("tool_calls"):
            content = message["content"]
            calls = "\n".join(call(entry["name"], entry["arguments"]) for entry in message["tool_calls"])
            if not content:
                content = calls
            elif isinstance(content, str):
                content = f"{content}{after_content}{calls}"
            else:  # parts stay parts (an image among them too), the calls after them
                content = [*content, {"type": "text", "text": f"{after_content}{calls}"}]
            rendered.append({"role": "assistant", "content": content})
        elif role == "tool":
            parts = as_parts(message["content"])
            response = [{"type": "text", "text": "<tool_response>\n"}, *parts, {"type": "text", "text": "\n</tool_response>"}]
            if rendered and rendered[-1].get("tool_results"):  # consecutive results share one user turn
                rendered[-1]["content"] += [{"type": "text", "text": "\n"}, *response]
            else:
                rendered.append({"role": "user", "content": response, "tool_results": True})
        else:
            rendered.append(message)
    return [{key: value for key, value in message.items() if key != "tool_results"} for message in rendered]


def as_parts(content) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def parse(text: str, read_call: Callable[[str], ParsedCall | None] | None = None) -> tuple[str, list[ParsedCall]]:
    """(the text outside calls, the calls) of an answer; a call that `read_call` (default: Hermes
    JSON's parse_call) cannot read stays in the text."""
    read_call = read_call or parse_call
    calls, kept, end = [], [], 0
    for match in CALL.finditer(text):
        call = read_call(match.group(1))
        if call is None:
            continue
        kept.append(text[end:match.start()])
        end = match.end()
        calls.append(call)
    kept.append(text[end:])
    return "".join(kept).strip() if calls else text, calls


def parse_call(body: str, tools: list[dict] | None = None) -> ParsedCall | None:
    """A JSON call: an object with a string name and object arguments (`tools` do not type it)."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not (isinstance(value, dict) and isinstance(value.get("name"), str) and isinstance(value.get("arguments"), dict)):
        return None
    return ParsedCall.new(value["name"], json.dumps(value["arguments"], ensure_ascii=False))


class CallStream:
    """Streamed text split into content and whole calls: text that could still open a call is held
    back, a call is given once its closing tag arrives; `read_call` reads each call's text, as parse's."""

    def __init__(self, read_call: Callable[[str], ParsedCall | None] | None = None):
        self.buffer = ""
        self.read_call = read_call or parse_call

    def add(self, piece: str) -> tuple[str, list[ParsedCall]]:
        self.buffer += piece
        content, calls = "", []
        while True:
            start = self.buffer.find(OPEN)
            if start < 0:
                keep = held_back(self.buffer, [OPEN])
                content += self.buffer[:len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep:]
                return content, calls
            end = self.buffer.find(CLOSE, start)
            if end < 0:
                content += self.buffer[:start]
                self.buffer = self.buffer[start:]
                return content, calls
            content += self.buffer[:start]
            call = self.read_call(self.buffer[start + len(OPEN):end].strip())
            if call is None:
                content += self.buffer[start:end + len(CLOSE)]
            else:
                calls.append(call)
            self.buffer = self.buffer[end + len(CLOSE):]

    def finish(self) -> str:
        """What is left at the end (an unclosed call stays text)."""
        rest, self.buffer = self.buffer, ""
        return rest


# Keywords whose value is a schema or a list of schemas. allOf is left out: closing one of its
# branches would refuse the properties that another declares.
SUBSCHEMAS = ("items", "prefixItems", "anyOf", "oneOf", "not", "if", "then", "else", "contains",
              "additionalProperties")
SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")  # name -> schema


def closed_objects(schema):
    """The schema with every object that lists its properties closed to them (additionalProperties
    false) where it says nothing of other keys: JSON Schema lets such an object take any key, and a
    model, more so an unsure one, then calls a function with keys it never declared. An object that
    allows more (additionalProperties true or a schema; or allOf, unevaluatedProperties) stays so."""
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {}
    for key, value in schema.items():
        if key in SUBSCHEMAS:
            value = closed_objects(value)
        elif key in SCHEMA_MAPS and isinstance(value, dict):
            value = {name: closed_objects(item) for name, item in value.items()}
        closed[key] = value
    if "properties" in schema and not {"additionalProperties", "allOf", "unevaluatedProperties"} & set(schema):
        closed["additionalProperties"] = False
    return closed


def call_grammar(grammars: Grammars, tools: list[dict], *, parallel: bool) -> Grammar:
    """Grammar of an answer made of JSON calls to these functions (one, or several when parallel),
    each call's arguments valid against its function's parameter schema, its objects closed."""
    bodies = []
    for tool in tools:
        function = tool["function"]
        bodies.append({"type": "object",
                       "properties": {"name": {"const": function["name"]},
                                      "arguments": closed_objects(function.get("parameters") or ANY_ARGUMENTS)},
                       "required": ["name", "arguments"], "additionalProperties": False})
    schema = {"anyOf": bodies} if len(bodies) > 1 else bodies[0]
    schema["x-guidance"] = JSON_OPTIONS
    return calls_grammar(grammars, f"body: %json {json.dumps(schema)}\n", parallel=parallel)


def calls_grammar(grammars: Grammars, rules: str, *, parallel: bool, text_ends: tuple[str, ...] = ()) -> Grammar:
    """An answer of calls between the call tags (one, or several on their own lines when parallel),
    each call's text the rule `body`, which `rules` (Lark) define (`text_ends`: Grammars.lark's)."""
    repeat = ' ("\\n" call)*' if parallel else ""
    opening, closing = (lexeme(grammars.hf_tokenizer, tag) for tag in (OPEN, CLOSE))
    return grammars.lark(f"start: call{repeat}\n"
                         f'call: {opening} "\\n" body "\\n" {closing}\n' + rules, text_ends)


def lexeme(tokenizer, text: str) -> str:
    """`text` in a grammar: its token when the vocabulary has one (llguidance matches such added
    tokens by id, not by their text), else the literal."""
    token = tokenizer.convert_tokens_to_ids(text)
    return f"<[{token}]>" if isinstance(token, int) and token != tokenizer.unk_token_id else json.dumps(text)


@dataclass(frozen=True)
class CallsWhenOpened:
    """tool_choice "auto": the text is free until the model opens a call; from then the call
    grammar holds the rest of the answer, so a call once started stays valid."""

    grammar: Grammar  # call_grammar's
    opening_token: int
    vocab_size: int

    def constraint(self) -> "CallAfterOpening":
        return CallAfterOpening(self)

    def shortest_answer_tokens(self) -> None:
        return None  # free text fits any budget


class CallAfterOpening:
    """One request's state for CallsWhenOpened."""

    def __init__(self, calls: CallsWhenOpened):
        self.opening_token, self.calls = calls.opening_token, calls.grammar.constraint()
        self.shortest = calls.grammar.shortest_answer_tokens()
        self.vocab_size = calls.vocab_size
        self.opened = False

    @property
    def closed_early(self) -> bool:
        return self.opened and self.calls.closed_early

    def allowed(self, remaining: int | None = None) -> mx.array | None:
        """None (any token) before a call opens, except at the end of the budget, where a call
        opened now could no longer close: then everything but the opening."""
        if self.opened:
            return self.calls.allowed(remaining)
        if remaining is not None and self.shortest is not None and remaining < self.shortest + 1:
            return mx.arange(self.vocab_size) != self.opening_token
        return None

    def advance(self, token: int) -> None:
        self.opened = self.opened or token == self.opening_token
        if self.opened:
            self.calls.advance(token)


@dataclass(frozen=True)
class ToolFormat:
    """How a model family's checkpoints call tools (Family.tool_format)."""

    opening: str  # the text that opens a call
    render: Callable[[list[dict], list[dict] | None], list[dict]]  # into plain messages
    read_call: Callable[[str, list[dict]], ParsedCall | None]  # (a call's text between the tags, the tools)
    grammar: Callable[..., Grammar]  # (grammars, tools, parallel=) -> answers made of calls
    # An assistant call's arguments (JSON text, as OpenAI sends them, or a mapping) as the checkpoint's
    # own chat template takes them.
    template_arguments: Callable[[str | dict], str | dict] = lambda arguments: arguments

    def parse(self, text: str, tools: list[dict]) -> tuple[str, list[ParsedCall]]:
        """(the text outside calls, the calls) of an answer to a request with these tools."""
        return parse(text, partial(self.read_call, tools=tools))

    def stream(self, tools: list[dict]) -> CallStream:
        return CallStream(partial(self.read_call, tools=tools))


HERMES = ToolFormat(opening=OPEN, render=render, read_call=parse_call, grammar=call_grammar)
