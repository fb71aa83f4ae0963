"""Thinking models (Holo2): the reasoning the chat template opens, split from the answer in chat
completions (whole and streamed) and the Responses API, constraints that hold the answer only, and
chat_template_kwargs. The tiny Holo1.5 checkpoint with the Qwen3-VL Thinking template (its vocabulary
has the think tokens): random weights, the real server and the real openai client."""

import json
import re
import shutil

import httpx
import jsonschema
import pytest
from transformers import AutoTokenizer

from holo_mlx.engine.sampling import SamplingParams
from holo_mlx.engine.stream import TextStream
from holo_mlx.prompt import PromptBuilder
from holo_mlx.testing import QWEN3_VL_CHAT_TEMPLATE
from test_server import Server, error_of
from test_structured import FORM, POINT, response_format
from test_tools import ASK, CLICK, assert_valid_calls

OPEN, CLOSE, TOOL_CALL = 151667, 151668, 151657  # <think>, </think>, <tool_call> in the Qwen3 vocabulary
EOS = 151645
THINKING_OFF = {"chat_template_kwargs": {"enable_thinking": False}}
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def thinking_checkpoint(hf_root_checkpoint, module_tmp_factory):
    path = module_tmp_factory("thinking")
    shutil.copytree(hf_root_checkpoint, path, dirs_exist_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": QWEN3_VL_CHAT_TEMPLATE}))
    (path / "chat_template.json").write_text(json.dumps({"chat_template": QWEN3_VL_CHAT_TEMPLATE}))
    return path


@pytest.fixture(scope="module")
def server(thinking_checkpoint):
    running = Server("--model", str(thinking_checkpoint), "--served-model-name", "holo-thinking")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def chat(client, **fields):
    return client.chat.completions.create(model="holo-thinking", **{"messages": HELLO, "temperature": 0, **fields})


def reasoning_of(message) -> str | None:
    assert message.model_extra["reasoning"] == message.model_extra["reasoning_content"]  # the two names agree
    return message.model_extra["reasoning_content"]


@pytest.fixture(scope="module")
def closing(client) -> dict:
    """Sampling fields under which the random weights close their reasoning after a few tokens and
    then answer: a logit bias on `</think>` just below the one that closes it at the first token
    (found by bisection; greedy, so the tokens before `</think>` are the same for every smaller
    bias), and penalties that keep it from coming back in the answer."""
    def fields(bias: float) -> dict:
        return {"max_tokens": 16, "logit_bias": {str(CLOSE): bias}, "presence_penalty": 2, "frequency_penalty": 2}

    low, high = 0.0, 16.0
    for _ in range(8):
        middle = (low + high) / 2
        if reasoning_of(chat(client, **fields(middle)).choices[0].message):
            low = middle
        else:
            high = middle
    return fields(low)


# --- the prompt ----------------------------------------------------------------------------------

def test_only_a_generation_prompt_that_opens_a_think_block_thinks(thinking_checkpoint, hf_root_checkpoint):
    thinking = PromptBuilder.from_pretrained(thinking_checkpoint)
    prompt = thinking.build(HELLO)
    assert prompt.thinking and thinking.tokenizer.decode(prompt.input_ids).endswith("<|im_start|>assistant\n<think>\n")
    off = thinking.build(HELLO, template_kwargs={"enable_thinking": False})
    assert not off.thinking and thinking.tokenizer.decode(off.input_ids).endswith("<think>\n\n</think>\n\n")
    assert not thinking.build(HELLO, add_generation_prompt=False).thinking
    holo15 = PromptBuilder.from_pretrained(hf_root_checkpoint)  # its template never writes <think>
    assert not holo15.build(HELLO).thinking
    quoted = holo15.build([{"role": "user", "content": "What does <think> mean? <think>"}])
    assert OPEN in quoted.input_ids and not quoted.thinking  # the rest of the conversation follows it


def test_the_text_stream_splits_at_the_close_and_stops_only_the_answer(thinking_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(thinking_checkpoint)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    tokens = [*encode("\nplan: click"), CLOSE, *encode('\n\n{"x": 1}'), EOS]

    def run(reasoning_end):
        params = SamplingParams(max_tokens=64, stop=["plan", "}"], reasoning_end=reasoning_end)
        stream = TextStream(tokenizer, params, {EOS}, prompt_tokens=1)
        chunks = []
        for token in tokens:
            chunks.append(stream.add(token, None))
            if chunks[-1].finish_reason:
                return chunks

    chunks = run(CLOSE)
    # Leading newlines go from both parts; the stop strings wait for the answer.
    assert "".join(chunk.reasoning or "" for chunk in chunks) == "plan: click"
    assert "".join(chunk.text for chunk in chunks) == '{"x": 1'
    assert sum(chunk.reasoning is not None for chunk in chunks) == len(encode("\nplan: click")) + 1
    assert chunks[-1].finish_reason == "stop"
    plain = run(None)  # no think block: all answer, and "plan" stops it
    assert all(chunk.reasoning is None for chunk in plain) and "".join(chunk.text for chunk in plain) == "\n"


# --- chat completions ----------------------------------------------------------------------------

def test_the_reasoning_is_split_from_the_content(client, closing):
    response = chat(client, **closing)
    message, usage = response.choices[0].message, response.usage
    reasoning = reasoning_of(message)
    assert reasoning and message.content and "</think>" not in reasoning + message.content
    # Every token up to `</think>` is reasoning; max_tokens counts them.
    assert 1 < usage.completion_tokens_details.reasoning_tokens < usage.completion_tokens <= 16


def test_streamed_reasoning_comes_first_and_matches_the_whole_answer(client, closing):
    whole = chat(client, **closing)
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}, **closing))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    kinds = [("reasoning" if delta.model_extra["reasoning_content"] else "content")
             for delta in deltas if delta.model_extra["reasoning_content"] or delta.content]
    assert kinds == sorted(kinds, key=["reasoning", "content"].index) and set(kinds) == {"reasoning", "content"}
    assert all(delta.model_extra["reasoning"] == delta.model_extra["reasoning_content"] for delta in deltas)
    assert "".join(delta.model_extra["reasoning_content"] or "" for delta in deltas) == reasoning_of(whole.choices[0].message)
    assert "".join(delta.content or "" for delta in deltas) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == whole.usage.completion_tokens_details.reasoning_tokens


def test_with_thinking_off_nothing_is_split(client):
    # The template closes the block itself: a `</think>` the model writes is answer text.
    response = chat(client, max_tokens=4, logit_bias={str(CLOSE): 100}, extra_body=THINKING_OFF)
    message = response.choices[0].message
    assert reasoning_of(message) is None and message.content == "</think>" * 4
    assert response.usage.completion_tokens_details.reasoning_tokens == 0


def test_stop_strings_apply_to_the_answer_only(client, closing):
    before = chat(client, **closing).choices[0]
    reasoning = reasoning_of(before.message)
    stop = next(reasoning[:n] for n in range(len(reasoning), 0, -1) if reasoning[:n] not in before.message.content)
    after = chat(client, stop=[stop], **closing).choices[0]
    assert reasoning_of(after.message) == reasoning and after.message.content == before.message.content
    assert after.finish_reason == before.finish_reason


def test_completions_take_raw_text_and_do_not_split(server):
    # A raw prompt that opens a think block is continued as text: `</think>` and all.
    body = server.post("/v1/completions", {"prompt": "<|im_start|>assistant\n<think>\n", "max_tokens": 2,
                                          "temperature": 0, "logit_bias": {str(CLOSE): 100}}).json()
    assert body["choices"][0]["text"] == "</think></think>" and "reasoning_content" not in body["choices"][0]


# --- constraints after the reasoning ---------------------------------------------------------------

@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("stream", [False, True])
def test_json_answers_validate_whether_the_model_thinks_or_not(client, thinking, stream):
    fields = {"max_tokens": 64, "response_format": response_format(FORM), **({} if thinking else {"extra_body": THINKING_OFF})}
    if stream:
        deltas = [chunk.choices[0].delta for chunk in chat(client, stream=True, **fields) if chunk.choices]
        content = "".join(delta.content or "" for delta in deltas)
        reasoning = "".join(delta.model_extra["reasoning_content"] or "" for delta in deltas)
    else:
        message = chat(client, **fields).choices[0].message
        content, reasoning = message.content, reasoning_of(message)
    jsonschema.validate(json.loads(content), FORM)
    assert bool(reasoning) == thinking  # random weights never close on their own: the budget closes them


def shortest_answer(server, **fields) -> int:
    """The shortest answer's tokens, as the 400 for max_tokens=1 gives them."""
    error = error_of(server.post("/v1/chat/completions", {"messages": HELLO, "max_tokens": 1,
                                                          "response_format": response_format(POINT), **fields}))
    assert error["param"] == "max_tokens"
    return int(re.search(r"takes (\d+) tokens", error["message"]).group(1))


def test_the_smallest_budget_forces_the_close_and_still_answers(client, server):
    shortest = shortest_answer(server)
    assert shortest == shortest_answer(server, **THINKING_OFF) + 2  # `</think>` and the blank line
    response = chat(client, max_tokens=shortest, response_format=response_format(POINT))
    choice = response.choices[0]
    assert reasoning_of(choice.message) == "" and choice.finish_reason == "length"
    jsonschema.validate(json.loads(choice.message.content), POINT)
    assert response.usage.completion_tokens == shortest and response.usage.completion_tokens_details.reasoning_tokens == 1
    # A few tokens more: they go to the reasoning, then the same forced close.
    longer = chat(client, max_tokens=shortest + 5, response_format=response_format(POINT))
    assert longer.usage.completion_tokens_details.reasoning_tokens == 6
    jsonschema.validate(json.loads(longer.choices[0].message.content), POINT)


def test_tool_calls_come_after_the_reasoning(client):
    response = chat(client, messages=ASK, tools=[CLICK], tool_choice="required", max_tokens=48)
    choice = response.choices[0]
    assert_valid_calls(choice.message.tool_calls, {"click"})
    # The reasoning ran until only the call still fitted, which the budget then closed: "length", as a schema's.
    assert reasoning_of(choice.message) and choice.message.content is None and choice.finish_reason == "length"


def test_a_call_written_in_the_reasoning_is_no_call(client):
    # The call grammar and the call parser see the answer only.
    response = chat(client, messages=ASK, tools=[CLICK], max_tokens=8, logit_bias={str(TOOL_CALL): 100})
    choice = response.choices[0]
    assert reasoning_of(choice.message) == "<tool_call>" * 8
    assert choice.message.tool_calls is None and choice.finish_reason == "length"


def test_earlier_reasoning_goes_back_into_the_prompt(client):
    # Qwen3's template writes the reasoning of the turns after the last user message (a tool loop).
    def prompt_tokens(**assistant):
        messages = [*ASK, {"role": "assistant", "content": None, **assistant, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "click", "arguments": '{"x": 1, "y": 2}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "clicked"}]
        return chat(client, messages=messages, tools=[CLICK], max_tokens=1).usage.prompt_tokens

    without = prompt_tokens()
    assert prompt_tokens(reasoning_content="The OK button is at the top.") > without
    assert prompt_tokens(reasoning="The OK button is at the top.") == prompt_tokens(
        reasoning_content="The OK button is at the top.")


# --- the Responses API ---------------------------------------------------------------------------

def responses_fields(**fields) -> dict:
    return {"model": "holo-thinking", "input": "Hello", "temperature": 0, "max_output_tokens": 48,
            "text": {"format": {"type": "json_schema", "name": "point", "schema": POINT, "strict": True}}, **fields}


def test_responses_give_the_reasoning_as_an_item_before_the_message(client):
    response = client.responses.create(**responses_fields())
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.summary == [] and reasoning.content[0].type == "reasoning_text"
    assert reasoning.content[0].text and message.type == "message"
    jsonschema.validate(json.loads(response.output_text), POINT)
    assert 0 < response.usage.output_tokens_details.reasoning_tokens < response.usage.output_tokens
    off = client.responses.create(**responses_fields(extra_body=THINKING_OFF))
    assert [item.type for item in off.output] == ["message"] and off.usage.output_tokens_details.reasoning_tokens == 0


def test_streamed_responses_send_the_reasoning_item_first(client):
    whole = client.responses.create(**responses_fields())
    with client.responses.stream(**responses_fields()) as stream:
        events = list(stream)
    # The budget closed the reasoning (random weights never do): the answer is whole, but cut short.
    assert events[-1].type == "response.incomplete" and whole.status == "incomplete"
    final = events[-1].response
    kinds = [event.type for event in events]
    first_text = kinds.index("response.output_text.delta")
    assert "response.reasoning_text.done" in kinds[:first_text]
    assert all(kind != "response.reasoning_text.delta" for kind in kinds[first_text:])
    deltas = "".join(event.delta for event in events if event.type == "response.reasoning_text.delta")
    assert deltas == final.output[0].content[0].text == whole.output[0].content[0].text
    assert final.output_text == whole.output_text and [item.type for item in final.output] == ["reasoning", "message"]


def test_reasoning_items_in_the_input_go_back_into_the_prompt(client):
    def input_tokens(*reasoning):
        items = [{"role": "user", "content": "Click the OK button."}, *reasoning,
                 {"type": "function_call", "call_id": "call_1", "name": "click", "arguments": '{"x": 1, "y": 2}'},
                 {"type": "function_call_output", "call_id": "call_1", "output": "clicked"}]
        tools = [{"type": "function", **CLICK["function"]}]
        return client.responses.create(model="holo-thinking", input=items, tools=tools, max_output_tokens=1,
                                       store=False).usage.input_tokens

    thought = {"type": "reasoning", "id": "rs_1", "summary": [],
               "content": [{"type": "reasoning_text", "text": "The OK button is at the top."}]}
    assert input_tokens(thought) > input_tokens()


# --- chat_template_kwargs ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, param", [
    ([True], "chat_template_kwargs"),
    ("enable_thinking=False", "chat_template_kwargs"),
    ({"tools": []}, "chat_template_kwargs.tools"),
    ({"add_generation_prompt": False}, "chat_template_kwargs.add_generation_prompt"),
    ({"messages": []}, "chat_template_kwargs.messages"),
    ({"tokenize": True}, "chat_template_kwargs.tokenize"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_bad_chat_template_kwargs_are_400s_naming_them(server, path, kwargs, param):
    payload = {"messages": HELLO} if path == "/v1/chat/completions" else {"input": "Hello"}
    response = server.post(path, {**payload, "max_tokens": 4, "chat_template_kwargs": kwargs})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_chat_template_kwargs_reach_the_template(server):
    usage = [httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "messages": HELLO, "max_tokens": 1, **({"chat_template_kwargs": kwargs} if kwargs is not None else {})}).json()["usage"]
        for kwargs in (None, {"enable_thinking": True}, {"enable_thinking": False})]
    assert usage[0]["prompt_tokens"] == usage[1]["prompt_tokens"] < usage[2]["prompt_tokens"]  # `\n</think>\n\n` more


# --- Holo2 itself --------------------------------------------------------------------------------

def test_holo2_thinks_first_and_its_json_answer_follows_the_reasoning(holo2_root_checkpoint, holo2_server):
    client = holo2_server.client()
    answers = {thinking: client.chat.completions.create(
        model=holo2_root_checkpoint.name, messages=HELLO, temperature=0, max_tokens=40,
        response_format=response_format(POINT), **({} if thinking else {"extra_body": THINKING_OFF}))
        for thinking in (True, False)}
    for thinking, answer in answers.items():
        message = answer.choices[0].message
        jsonschema.validate(json.loads(message.content), POINT)
        assert bool(reasoning_of(message)) == thinking
        assert (answer.usage.completion_tokens_details.reasoning_tokens > 0) == thinking
