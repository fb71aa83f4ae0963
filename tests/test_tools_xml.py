"""Tool calling in Qwen3.5's XML form (Holo3): the real Qwen3.5 chat template renders tools, calls and
results; answers are parsed whole and streamed with arguments typed by the tools' schemas; the
grammar keeps random weights' calls valid, through the real server and the real openai client on a
holo3-tiny checkpoint."""

import copy
import json

import jsonschema
import llguidance
import pytest

from holo_mlx.constrain import Grammars
from holo_mlx.prompt import PromptBuilder
from holo_mlx.tool_format import parse
from holo_mlx.tool_format_xml import XML, read_call, xml_call_grammar
from test_tools import ASK, CALLS_ENDED, CLICK, HISTORY, SCHEMAS, TYPE, internal, streamed_calls

NOTE = {"type": "function", "function": {"name": "note", "parameters": {
    "type": "object", "properties": {
        "text": {"type": "string"}, "count": {"type": "integer"}, "ratio": {"type": "number"},
        "done": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}},
        "where": {"type": "object", "properties": {"x": {"type": "integer"}}},
        "mode": {"enum": ["fast", "slow"]}, "limit": {"type": ["integer", "null"]}},
    "required": ["text", "count"], "additionalProperties": False}}}
SCHEMAS = {**SCHEMAS, "note": NOTE["function"]["parameters"]}
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}  # the answer (and the grammar) at once

CALL_TEXT = ("<tool_call>\n<function=click>\n<parameter=x>\n1\n</parameter>\n<parameter=y>\n2\n</parameter>\n"
             "</function>\n</tool_call>\n<tool_call>\n<function=type_text>\n<parameter=text>\nhi\n</parameter>\n"
             "</function>\n</tool_call>")


@pytest.fixture(scope="module")
def builder(holo3_checkpoint):
    return PromptBuilder.from_pretrained(holo3_checkpoint)


# --- the template ---------------------------------------------------------------------------------

def test_the_qwen3_5_template_writes_tools_calls_and_results(builder):
    assert builder.template_writes_tools and builder.tool_format is XML
    text = builder.tokenizer.decode(builder.build(internal(HISTORY), tools=[CLICK, TYPE]).input_ids)
    assert text.startswith("<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n<tools>\n"
                           + json.dumps(CLICK))
    assert "</IMPORTANT>\n\nYou are Holo.<|im_end|>" in text
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\n" + CALL_TEXT + "<|im_end|>" in text
    assert ("<|im_start|>user\n<tool_response>\nclicked\n</tool_response>\n<tool_response>\ntyped\n"
            "</tool_response><|im_end|>") in text


def test_arguments_as_json_text_or_as_an_object_render_alike(builder):
    as_objects = [{**message, "tool_calls": [{**call, "arguments": json.loads(call["arguments"])}
                                             for call in message["tool_calls"]]}
                  if message.get("tool_calls") else message for message in internal(HISTORY)]
    assert builder.build(as_objects, tools=[CLICK, TYPE]).input_ids \
        == builder.build(internal(HISTORY), tools=[CLICK, TYPE]).input_ids
    broken = [*internal(HISTORY)[:2], {"role": "assistant", "content": "",
                                       "tool_calls": [{"name": "click", "arguments": "[1, 2]"}]}]
    with pytest.raises(ValueError, match="must be a JSON object"):
        builder.build(broken, tools=[CLICK])


def test_the_format_renders_as_the_template_does(builder):
    # A template without tools gets them written into plain messages by the format: the same prompt.
    native, plain = builder, copy.copy(builder)  # sharing its tokenizer, which Qwen3.5's takes seconds to load
    plain.template_writes_tools = False
    said = [*internal(HISTORY)[:2], {"role": "assistant", "content": "Sure.", "tool_calls": [
        {"name": "note", "arguments": json.dumps({"text": "a\nb", "count": 2, "done": True, "tags": ["x"]})}]},
        {"role": "tool", "content": "ok"}]
    for messages in (internal(HISTORY), said):
        assert plain.build(messages, tools=[CLICK, TYPE, NOTE]).input_ids \
            == native.build(messages, tools=[CLICK, TYPE, NOTE]).input_ids


# --- parsing -----------------------------------------------------------------------------------------

def test_calls_are_parsed_with_arguments_typed_by_the_schema_whole_or_streamed():
    note = ("<tool_call>\n<function=note>\n<parameter=text>\n  two\nlines \n</parameter>\n<parameter=count>\n7\n"
            "</parameter>\n<parameter=ratio>\n2.0\n</parameter>\n<parameter=done>\nTrue\n</parameter>\n"
            "<parameter=tags>\n[\"a\", \"b\"]\n</parameter>\n<parameter=where>\n{'x': 3}\n</parameter>\n"
            "<parameter=mode>\nfast\n</parameter>\n<parameter=limit>\nnull\n</parameter>\n"
            "<parameter=extra>\n12\n</parameter>\n</function>\n</tool_call>")
    text = "Let me do that.\n\n" + CALL_TEXT + "\n" + note
    expected = [("click", {"x": 1, "y": 2}), ("type_text", {"text": "hi"}),
                ("note", {"text": "  two\nlines ", "count": 7, "ratio": 2, "done": True, "tags": ["a", "b"],
                          "where": {"x": 3}, "mode": "fast", "limit": None, "extra": "12"})]
    content, calls = XML.parse(text, [CLICK, TYPE, NOTE])
    assert content == "Let me do that." and [(c.name, json.loads(c.arguments)) for c in calls] == expected
    stream, streamed, streamed_calls = XML.stream([CLICK, TYPE, NOTE]), "", []
    for start in range(0, len(text), 5):  # pieces that cut the tags apart
        piece, found = stream.add(text[start:start + 5])
        streamed, streamed_calls = streamed + piece, streamed_calls + found
    streamed += stream.finish()
    assert streamed.strip() == "Let me do that."
    assert [(c.name, json.loads(c.arguments)) for c in streamed_calls] == expected


@pytest.mark.parametrize("text, schema, value", [
    ("12", {"type": "integer"}, 12), ("twelve", {"type": "integer"}, "twelve"), ("1.5", {"type": "number"}, 1.5),
    ("1e3", {"type": "number"}, 1000), ("inf", {"type": "number"}, "inf"), ("false", {"type": "boolean"}, False),
    ("[1, 2]", {"type": "array"}, [1, 2]), ("(1, 2)", {"type": "array"}, [1, 2]), ("{1, 2}", {"type": "array"}, "{1, 2}"),
    ("NULL", {"type": "string"}, None), ("007", None, "007"), ("3", {"type": ["null", "integer"]}, 3),
])
def test_values_are_typed_as_vllms_qwen3_coder_parser_types_them(text, schema, value):
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"v": schema} if schema else {}}}}
    call = read_call(f"<function=f>\n<parameter=v>\n{text}\n</parameter>\n</function>", [tool])
    assert json.loads(call.arguments) == {"v": value}


@pytest.mark.parametrize("body", [
    "<function=scroll>\n</function>",  # not one of the tools
    "<function=click>\n<parameter=x>\n1\n</parameter>\nand more\n</function>",  # text among the parameters
    '{"name": "click", "arguments": {"x": 1, "y": 2}}',  # Hermes JSON
])
def test_what_is_not_a_call_to_the_tools_stays_text(body):
    text = f"<tool_call>\n{body}\n</tool_call>"
    assert parse(text, lambda inside: read_call(inside, [CLICK])) == (text, [])


# --- the server ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(shared_server, holo3_checkpoint):
    return shared_server("--model", str(holo3_checkpoint), "--served-model-name", "holo3-tiny")


def assert_valid_calls(calls, names):
    assert calls
    for call in calls:
        assert call.function.name in names and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", range(3))
def test_required_calls_validate_against_their_functions(client, seed):
    response = client.chat.completions.create(
        model="holo3-tiny", messages=ASK, tools=[CLICK, TYPE, NOTE], tool_choice="required", temperature=1.0,
        seed=seed, max_tokens=200, extra_body=NO_THINKING)
    choice = response.choices[0]
    assert choice.finish_reason in CALLS_ENDED, choice.message.content
    assert_valid_calls(choice.message.tool_calls, SCHEMAS)


def test_a_named_tool_is_the_one_called_once_without_parallel_calls(client):
    response = client.chat.completions.create(
        model="holo3-tiny", messages=ASK, tools=[CLICK, TYPE, NOTE], max_tokens=200, parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "note"}}, extra_body=NO_THINKING)
    calls = response.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "note"
    assert_valid_calls(calls, ["note"])


def test_an_auto_call_once_opened_stays_valid_to_the_end_of_the_budget(client, builder):
    # The bias makes random weights open a call at once; the grammar then holds it, and the budget
    # closes its free text (which only `\n</parameter>\n` ends) in time.
    opening = builder.tokenizer.convert_tokens_to_ids("<tool_call>")
    for max_tokens in (40, 64):
        response = client.chat.completions.create(
            model="holo3-tiny", messages=ASK, tools=[NOTE], max_tokens=max_tokens, parallel_tool_calls=False,
            temperature=1.0, seed=max_tokens, logit_bias={str(opening): 100}, extra_body=NO_THINKING)
        assert response.choices[0].finish_reason in CALLS_ENDED and response.usage.completion_tokens <= max_tokens
        assert_valid_calls(response.choices[0].message.tool_calls, ["note"])
    # With less than the shortest call left, the call may not open at all: no broken call in the text.
    short = client.chat.completions.create(model="holo3-tiny", messages=ASK, tools=[NOTE], max_tokens=10,
                                           logit_bias={str(opening): 100}, extra_body=NO_THINKING)
    assert short.choices[0].message.tool_calls is None and "<tool_call>" not in short.choices[0].message.content


def test_streamed_calls_arrive_as_tool_call_deltas(client):
    stream = client.chat.completions.create(
        model="holo3-tiny", messages=ASK, tools=[NOTE], tool_choice="required", max_tokens=200, stream=True,
        extra_body=NO_THINKING)
    calls, finish = streamed_calls(stream)
    assert finish in CALLS_ENDED and calls
    for entry in calls.values():
        assert entry["name"] == "note"
        jsonschema.validate(json.loads(entry["arguments"]), SCHEMAS["note"])


def test_a_tool_call_history_is_read_into_the_prompt(client, builder):
    response = client.chat.completions.create(model="holo3-tiny", messages=HISTORY, tools=[CLICK, TYPE],
                                              max_tokens=4)
    assert response.usage.prompt_tokens == len(builder.build(internal(HISTORY), tools=[CLICK, TYPE]).input_ids)


@pytest.mark.parametrize("additional, accepted", [(None, False), (True, True)])
def test_a_call_takes_undeclared_parameters_only_where_the_schema_allows_them(builder, holo3_checkpoint, additional,
                                                                               accepted):
    config = json.loads((holo3_checkpoint / "config.json").read_text())["text_config"]
    grammars = Grammars(builder.tokenizer, config["vocab_size"], {config["eos_token_id"]})
    parameters = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"],
                  **({} if additional is None else {"additionalProperties": additional})}
    grammar = xml_call_grammar(grammars, [{"type": "function", "function": {"name": "move", "parameters": parameters}}],
                               parallel=False)
    matcher = llguidance.LLMatcher(grammars.tokenizer, grammar.text)
    matcher.consume_tokens(builder.tokenizer.encode(
        "<tool_call>\n<function=move>\n<parameter=x>\n1\n</parameter>\n<parameter=y>\n2\n</parameter>\n</function>\n"
        "</tool_call>", add_special_tokens=False))
    assert matcher.is_error() != accepted
