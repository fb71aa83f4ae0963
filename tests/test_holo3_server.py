"""Holo3 (the Qwen3.5 hybrid) through the real server end to end, on random weights: chat whole and
streamed, a screenshot off the 32-pixel grid, the Responses API, /v1/localize, computer use,
embeddings, thinking followed by XML tool calls (auto, required, named; whole and streamed), a tool
call history, LangChain and openai-agents driving tools, an agent's next turn resumed from the prefix
cache with the tokens a cold server gives, an agent loop that keeps its 3 latest screenshots, and the
name and health check the holo CLI uses. The dense holo3-tiny runs everything; the MoE
holo3-moe-tiny, served under the name the holo CLI's local mode uses, the cheap core."""

import base64
import json

import httpx
import numpy as np
import pytest

from holo_mlx.agent import (EVICTED, AgentLoop, AgentStep, AnswerAction, bounded_schema, evict_screenshots,
                            holo2_localization_prompt, holo2_localization_schema)
from holo_mlx.coordinates import NORMALIZED_1000, map_point
from holo_mlx.folders import read_config
from holo_mlx.prompt import PromptBuilder
from holo_mlx.server import computer
from holo_mlx.testing import synthetic_screenshot
from test_agents import agents_model, langchain_required_clicks, run_click_agent
from test_hybrid import common_prefix
from test_reasoning import reasoning_of
from test_server import data_url, error_of, image_message
from test_tools import ASK, CLICK, HISTORY, TYPE, assert_valid_calls, internal, streamed_calls

DENSE = "holo3-tiny"
# The name hub.hcompany.ai's holo CLI pages give a local Holo3.1 server (`holo run --model`): the MoE
# fixture is Holo3.1-35B-A3B's architecture.
MOE = "Hcompany/Holo-3.1-35B-A3B"
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
CLOSE, OPEN_CALL = "</think>", "<tool_call>"


@pytest.fixture(scope="module")
def server(shared_server, holo3_checkpoint):
    return shared_server("--model", str(holo3_checkpoint), "--served-model-name", DENSE)


@pytest.fixture(scope="module")
def moe_server(shared_server, holo3_moe_checkpoint):
    return shared_server("--model", str(holo3_moe_checkpoint), "--served-model-name", MOE)


@pytest.fixture(scope="module", params=[DENSE, MOE])
def served(request):
    """(server, model name): a test asking for it runs on the dense and on the MoE server."""
    return request.getfixturevalue("server" if request.param == DENSE else "moe_server"), request.param


@pytest.fixture(scope="module")
def builder(holo3_checkpoint):
    return PromptBuilder.from_pretrained(holo3_checkpoint)


def token_id(builder, token: str) -> int:
    return builder.tokenizer.convert_tokens_to_ids(token)


def screenshot(width: int = 333, height: int = 217, seed: int = 0) -> str:
    """A data URL; the default's sides are no multiples of 32 (Qwen3.5's 16-pixel patches merged 2x2)."""
    return data_url(synthetic_screenshot(width, height, seed=seed))


def streamed_answer(stream) -> dict:
    """A streamed chat answer: its reasoning, content and calls as the deltas add them up, the order in
    which reasoning and content came, and the finish reason."""
    chunks = [chunk for chunk in stream if chunk.choices]
    deltas = [chunk.choices[0].delta for chunk in chunks]
    calls, finish = streamed_calls(chunks)
    kinds = [kind for delta in deltas for kind, text in (("reasoning", reasoning_of(delta)), ("content", delta.content))
             if text]
    return {"reasoning": "".join(reasoning_of(delta) or "" for delta in deltas),
            "content": "".join(delta.content or "" for delta in deltas), "calls": list(calls.values()),
            "kinds": [kind for index, kind in enumerate(kinds) if kind not in kinds[:index]], "finish": finish}


def whole_calls(message) -> list[dict]:
    return [{"name": call.function.name, "arguments": call.function.arguments} for call in message.tool_calls or []]


# --- chat ------------------------------------------------------------------------------------------

def test_a_chat_thinks_first_and_streams_what_it_answers_whole(served):
    server, model = served
    client = server.client()
    kwargs = dict(model=model, messages=ASK, max_tokens=12, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    message = whole.choices[0].message
    # Qwen3.5's template opens a think block: random weights never close it within 12 tokens.
    assert reasoning_of(message) and message.content == "" and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens_details.reasoning_tokens == whole.usage.completion_tokens == 12
    streamed = streamed_answer(client.chat.completions.create(stream=True, **kwargs))
    assert (streamed["reasoning"], streamed["content"], streamed["finish"]) == (reasoning_of(message), "", "length")
    plain = client.chat.completions.create(**{**kwargs, "extra_body": NO_THINKING})
    assert reasoning_of(plain.choices[0].message) is None and plain.choices[0].message.content
    assert streamed_answer(client.chat.completions.create(stream=True, **kwargs, extra_body=NO_THINKING))["content"] \
        == plain.choices[0].message.content


def test_a_screenshot_off_the_32_pixel_grid_is_resized_onto_it(client):
    def ask(content):
        return client.chat.completions.create(model=DENSE, messages=[{"role": "user", "content": content}],
                                              max_tokens=1, temperature=0)

    text = {"type": "text", "text": "Click OK"}
    response = ask([{"type": "image_url", "image_url": {"url": screenshot(333, 217)}}, text])
    image = response.model_extra["holo"]["images"][0]
    # Each side to the nearest multiple of 32 (333 -> 320, 217 -> 224): one visual token per 32x32
    # block, between <|vision_start|> and <|vision_end|>.
    assert image == {"original": {"width": 333, "height": 217}, "resized": {"width": 320, "height": 224}}
    assert response.usage.prompt_tokens - ask([text]).usage.prompt_tokens == 10 * 7 + 2


# --- Responses, localization, computer use, embeddings --------------------------------------------

def test_the_responses_api_answers_a_screenshot_as_chat_does(client):
    shot, ask = screenshot(), "Open the settings."
    chat = client.chat.completions.create(model=DENSE, messages=image_message(shot, ask), max_tokens=8,
                                          temperature=0, extra_body=NO_THINKING)
    response = client.responses.create(
        model=DENSE, input=[{"role": "user", "content": [{"type": "input_image", "image_url": shot},
                                                         {"type": "input_text", "text": ask}]}],
        max_output_tokens=8, temperature=0, extra_body=NO_THINKING)
    assert [item.type for item in response.output] == ["message"] and response.status == "incomplete"
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens and response.usage.output_tokens == 8


def test_localize_asks_as_hcompanys_element_localization_guide_does(server, client):
    shot, target = screenshot(), "the OK button"
    click = server.post("/v1/localize", {"image": shot, "target": target}).json()
    # hub.hcompany.ai/element-localization asks Holo3 and Holo3.1 with Holo2's words and {x, y} schema,
    # thinking off, greedy: the same call through chat completions gives the same answer.
    chat = client.chat.completions.create(
        model=DENSE, messages=image_message(shot, holo2_localization_prompt(target)), max_tokens=64, temperature=0,
        extra_body={"structured_outputs": {"json": holo2_localization_schema(0, 0)}, **NO_THINKING})
    assert json.loads(chat.choices[0].message.content) == {"x": click["x"], "y": click["y"]}
    assert 0 <= click["x"] <= 1000 and 0 <= click["y"] <= 1000
    assert (click["original"]["x"], click["original"]["y"]) == map_point(click["x"], click["y"], (320, 224),
                                                                         (333, 217), NORMALIZED_1000)


def test_computer_use_through_responses_thinks_then_acts_on_the_display(server):
    tool = {"type": "computer_use_preview", "display_width": 640, "display_height": 400, "environment": "browser"}
    task = "Open the settings page"
    first = server.post("/v1/responses", {"model": DENSE, "input": task, "tools": [tool]}).json()
    [call] = first["output"]
    assert call["type"] == "computer_call" and call["action"] == {"type": "screenshot"}
    shown = {"type": "computer_call_output", "call_id": call["call_id"],
             "output": {"type": "computer_screenshot", "image_url": screenshot(640, 400)}}
    step = server.post("/v1/responses", {"model": DENSE, "input": [{"role": "user", "content": task}, call, shown],
                                         "tools": [tool], "max_output_tokens": 160}).json()
    reasoning, *acted = step["output"]
    # Holo3 reasons first (the budget closes it in time), then one navigation step: calls or an answer.
    assert reasoning["type"] == "reasoning" and reasoning["content"][0]["text"] and acted
    assert all(item["type"] == "computer_call" for item in acted) or [item["type"] for item in acted] == ["message"]
    for item in acted:
        action = item.get("action", {})
        if "x" in action:
            assert 0 <= action["x"] < 640 and 0 <= action["y"] < 400, action


def test_computer_use_asks_holo3_in_hcompanys_agent_loop_with_its_three_latest_screenshots(server):
    """A computer turn on Holo3 is Hcompany's agent loop (AgentLoop): the whole conversation with each
    screenshot in an <observation> turn and only the 3 latest kept, answered as an AgentStep. The same
    messages asked through chat completions have the turn's token count and give the calls it made."""
    tool = {"type": "computer_use_preview", "display_width": 640, "display_height": 400, "environment": "browser"}
    task = "Open the settings page"
    items, conversation = [{"role": "user", "content": task}], [{"role": "user", "content": task}]
    for turn in range(4):
        shot = screenshot(640, 400, seed=turn)
        call = {"type": "computer_call", "call_id": f"call_{turn}", "action": {"type": "screenshot"}}
        items += [call, {"type": "computer_call_output", "call_id": f"call_{turn}",
                         "output": {"type": "computer_screenshot", "image_url": shot}}]
        conversation += [{"role": "assistant", "content": json.dumps(call["action"])},
                         {"role": "user", "content": [{"type": "image_url", "image_url": {"url": shot}}]}]
    schema = computer.step_schema(AgentLoop, NORMALIZED_1000)
    messages = AgentLoop.messages(conversation, schema)
    assert "<output_format>" in messages[0]["content"] and [message["role"] for message in messages] == \
        ["system", "user"] + ["assistant", "user"] * 4
    observations = [message["content"] for message in messages[3::2]]
    assert all(parts[0]["text"] == "<observation>" and parts[-1]["text"] == "</observation>" for parts in observations)
    assert [parts[1]["type"] for parts in observations] == ["text", "image_url", "image_url", "image_url"]
    assert observations[0][1]["text"] == EVICTED
    asked = server.post("/v1/chat/completions", {"model": DENSE, "messages": messages, "temperature": 0,
                                                 "max_tokens": 300, "response_format": computer.step_format(schema),
                                                 **NO_THINKING}).json()
    turn = server.post("/v1/responses", {"model": DENSE, "input": items, "tools": [tool], "max_output_tokens": 300,
                                         "store": False, **NO_THINKING}).json()
    assert turn["usage"]["input_tokens"] == asked["usage"]["prompt_tokens"]
    step = AgentStep.model_validate_json(asked["choices"][0]["message"]["content"])
    expected, answer = computer.computer_calls(AgentLoop.action(step), computer.Screen.of_tool(tool, "tools.0"), (1, 1),
                                               (640, 400), NORMALIZED_1000)
    assert [item.get("action") or item["content"][0]["text"] for item in turn["output"]] == \
        expected + ([answer] if answer is not None else [])


def test_an_agent_step_becomes_the_surfer_h_action_a_computer_call_is_made_from():
    step = AgentStep.model_validate({"note": None, "thought": "Type the query.", "tool_call": {
        "tool_name": "write", "content": "holo", "element": "Search box", "x": 500, "y": 250}})
    tool = {"type": "computer_use_preview", "display_width": 1280, "display_height": 800}
    assert computer.computer_calls(AgentLoop.action(step), computer.Screen.of_tool(tool, "tools.0"), (1400, 700), (2560, 1600),
                                   NORMALIZED_1000) == ([{"type": "click", "button": "left", "x": 640, "y": 200},
                                                         {"type": "type", "text": "holo"}], None)
    answer = AgentStep.model_validate({"note": "done", "thought": "", "tool_call": {"tool_name": "answer",
                                                                                   "content": "42"}})
    assert AgentLoop.action(answer) == AnswerAction(content="42")


def test_embeddings_of_text_and_a_screenshot(server, client, holo3_checkpoint):
    hidden = read_config(holo3_checkpoint)["text_config"]["hidden_size"]
    batch = client.embeddings.create(model=DENSE, input=["Submit button", "Cancel"], encoding_format="float")
    alone = client.embeddings.create(model=DENSE, input="Cancel", encoding_format="float")
    vectors = [np.array(item.embedding) for item in batch.data]
    assert all(vector.shape == (hidden,) and abs(np.linalg.norm(vector) - 1) < 1e-5 for vector in vectors)
    # Right padding in a batch reaches neither the recurrent states nor the pooled mean.
    np.testing.assert_allclose(vectors[1], alone.data[0].embedding, atol=1e-5)
    caption = {"type": "text", "text": "login form"}
    shot = server.post("/v1/embeddings", {"model": DENSE, "input": [[
        {"type": "image_url", "image_url": {"url": screenshot()}}, caption]]}).json()
    text = server.post("/v1/embeddings", {"model": DENSE, "input": [[caption]]}).json()
    assert shot["usage"]["prompt_tokens"] - text["usage"]["prompt_tokens"] == 10 * 7 + 2
    assert abs(np.linalg.norm(shot["data"][0]["embedding"]) - 1) < 1e-5


# --- thinking, then XML tool calls ------------------------------------------------------------------

def test_required_calls_come_after_the_reasoning_whole_and_streamed(served):
    server, model = served
    client = server.client()
    kwargs = dict(model=model, messages=ASK, tools=[CLICK, TYPE], tool_choice="required", max_tokens=48,
                  temperature=0)
    choice = client.chat.completions.create(**kwargs).choices[0]
    # The reasoning runs until only the shortest call still fits, then the grammar writes the call:
    # the budget closed the answer, "length" (server/chat.finish_reason), streamed or not.
    assert reasoning_of(choice.message) and choice.message.content is None and choice.finish_reason == "length"
    assert_valid_calls(choice.message.tool_calls)
    streamed = streamed_answer(client.chat.completions.create(stream=True, **kwargs))
    assert streamed["kinds"] == ["reasoning"] and streamed["reasoning"] == reasoning_of(choice.message)
    assert streamed["calls"] == whole_calls(choice.message) and streamed["finish"] == "length"


def test_a_named_call_comes_after_the_reasoning_whole_and_streamed(client):
    kwargs = dict(model=DENSE, messages=ASK, tools=[CLICK, TYPE], parallel_tool_calls=False, max_tokens=48,
                  temperature=0, tool_choice={"type": "function", "function": {"name": "type_text"}})
    choice = client.chat.completions.create(**kwargs).choices[0]
    assert reasoning_of(choice.message) and [call.function.name for call in choice.message.tool_calls] == ["type_text"]
    assert_valid_calls(choice.message.tool_calls, ["type_text"])
    streamed = streamed_answer(client.chat.completions.create(stream=True, **kwargs))
    assert streamed["reasoning"] == reasoning_of(choice.message) and streamed["calls"] == whole_calls(choice.message)


def test_an_auto_call_after_the_reasoning_whole_and_streamed(client, builder):
    # Biases that make random weights close the reasoning and open a call now and then (sampled, seeded):
    # a `<tool_call>` inside the reasoning is text, the one after it a call.
    bias = {str(token_id(builder, CLOSE)): 12, str(token_id(builder, OPEN_CALL)): 12}
    kwargs = dict(model=DENSE, messages=ASK, tools=[CLICK], max_tokens=64, temperature=1.0, logit_bias=bias)
    answers = {seed: client.chat.completions.create(seed=seed, **kwargs).choices[0] for seed in range(3)}
    for choice in answers.values():
        assert choice.finish_reason == "tool_calls"
        assert_valid_calls(choice.message.tool_calls, ["click"])
    seed, choice = next((seed, choice) for seed, choice in answers.items() if OPEN_CALL in reasoning_of(choice.message))
    streamed = streamed_answer(client.chat.completions.create(seed=seed, stream=True, **kwargs))
    assert streamed["reasoning"] == reasoning_of(choice.message) and streamed["kinds"][0] == "reasoning"
    assert streamed["content"] == (choice.message.content or "") and streamed["calls"] == whole_calls(choice.message)


def tool_history(arguments_as: str) -> list[dict]:
    """HISTORY with each call's arguments as OpenAI sends them (JSON text) or as the object itself."""
    history = json.loads(json.dumps(HISTORY))
    for message in history:
        for call in message.get("tool_calls") or []:
            if arguments_as == "object":
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return history


def test_a_tool_call_history_reads_the_same_with_arguments_as_text_or_as_an_object(server, builder):
    answers = {}
    for arguments_as in ("text", "object"):
        response = server.post("/v1/chat/completions", {"model": DENSE, "messages": tool_history(arguments_as),
                                                        "tools": [CLICK, TYPE], "max_tokens": 4, "temperature": 0})
        assert response.status_code == 200, response.text
        answers[arguments_as] = response.json()
    expected = builder.build(internal(HISTORY), tools=[CLICK, TYPE])
    assert [answer["usage"]["prompt_tokens"] for answer in answers.values()] == [len(expected.input_ids)] * 2
    assert answers["text"]["choices"] == answers["object"]["choices"]
    broken = tool_history("text")
    broken[2]["tool_calls"][0]["function"]["arguments"] = "[1, 2]"  # XML calls write an object's items
    response = server.post("/v1/chat/completions", {"model": DENSE, "messages": broken, "tools": [CLICK, TYPE]})
    assert response.status_code == 400 and "JSON object" in error_of(response)["message"]


# --- frameworks ------------------------------------------------------------------------------------

def test_langchain_bind_tools_calls_through_the_xml_format(server):
    # Holo3 thinks first: the budget leaves the reasoning room and still closes the call.
    langchain_required_clicks(server, model=DENSE, max_tokens=60)


def test_openai_agents_calls_a_function_tool_through_chat_completions(server):
    calls, _ = run_click_agent(agents_model(server, model=DENSE, chat_completions=True), max_tokens=60)
    assert all(0 <= value for call in calls for value in call)


# --- an agent's next turn --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cold_server(shared_server, holo3_checkpoint, holo3_moe_checkpoint):
    """`cold_server(name)`: that model without a prefix cache (every prompt prefilled from its first
    token), started on first use."""
    checkpoints = {DENSE: holo3_checkpoint, MOE: holo3_moe_checkpoint}
    return lambda name: shared_server("--model", str(checkpoints[name]), "--served-model-name", name,
                                      "--prefix-cache-mb", "0")


def test_the_next_turn_resumes_after_the_last_screenshot_and_answers_as_a_cold_server(served, cold_server, builder):
    server, model = served
    client = server.client()
    # Thinking off so the answer is content (the template drops past reasoning anyway); greedy.
    kwargs = dict(model=model, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3, extra_body=NO_THINKING)
    turn = [{"role": "system", "content": "You are Holo."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": screenshot(seed=1)}},
                                         {"type": "text", "text": "Open the settings."}]}]
    first = client.chat.completions.create(messages=turn, **kwargs)
    turn += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": [{"type": "image_url", "image_url": {"url": screenshot(300, 250, seed=2)}},
                                          {"type": "text", "text": "Now close it."}]}]
    warm = client.chat.completions.create(messages=turn, **kwargs)
    cold = cold_server(model).client().chat.completions.create(messages=turn, **kwargs)
    # The first turn's prompt without its generation prompt: the system turn, the screenshot and the text.
    opening = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    plain = builder.build([{"role": "user", "content": "x"}], template_kwargs=NO_THINKING["chat_template_kwargs"])
    assert builder.tokenizer.decode(plain.input_ids).endswith("x<|im_end|>\n" + opening)
    through_user = first.usage.prompt_tokens - len(builder.tokenizer.encode(opening))
    assert warm.usage.prompt_tokens_details.cached_tokens >= through_user
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert warm.choices[0].message.content == cold.choices[0].message.content
    for resumed, fresh in zip(warm.choices[0].logprobs.content, cold.choices[0].logprobs.content, strict=True):
        assert resumed.token == fresh.token and abs(resumed.logprob - fresh.logprob) < 1e-4
        assert [top.token for top in resumed.top_logprobs] == [top.token for top in fresh.top_logprobs]



def builder_messages(messages: list[dict]) -> list[dict]:
    """Chat messages as the prompt builder takes them: data URLs decoded to the image's bytes."""
    def part(item):
        if item["type"] == "image_url":
            return {"type": "image", "image": base64.b64decode(item["image_url"]["url"].partition(",")[2])}
        return item
    return [{**message, "content": [part(item) for item in message["content"]]}
            if isinstance(message["content"], list) else message for message in messages]


def test_an_agent_loop_keeping_three_screenshots_resumes_each_step_where_it_parts_from_the_last(client, builder):
    # Hcompany's loop keeps the 3 latest screenshots, so from the 4th step on each step's prompt parts
    # from the previous one inside an earlier observation: the turns before it are still cached.
    kwargs = dict(model=DENSE, max_tokens=2, temperature=0, extra_body=NO_THINKING)
    opening = builder.tokenizer.encode("<|im_start|>user\n")
    history, previous = [{"role": "system", "content": "You are Holo, a GUI agent. " * 8}], None
    for step in range(5):
        history.append({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": screenshot(96, 64, seed=step)}},
            {"type": "text", "text": f"Step {step}: what now?"}]})
        sent = evict_screenshots(history)
        response = client.chat.completions.create(messages=sent, **kwargs)
        assert len(response.model_extra["holo"]["images"]) == min(step + 1, 3)
        ids = builder.build(builder_messages(sent), template_kwargs=NO_THINKING["chat_template_kwargs"]).input_ids
        assert response.usage.prompt_tokens == len(ids) and sum(EVICTED in str(message) for message in sent) == \
            max(0, step - 2)
        if previous is not None:
            shared = common_prefix(previous, ids)
            # At least up to the content of the last user turn that opens within what the two share.
            opened = max(start + len(opening) for start in range(shared - len(opening) + 1)
                         if ids[start:start + len(opening)] == opening)
            assert response.usage.prompt_tokens_details.cached_tokens >= opened, step
        history.append({"role": "assistant", "content": response.choices[0].message.content})
        previous = ids

# --- the holo CLI's local mode ---------------------------------------------------------------------

def test_the_holo_cli_finds_the_server_by_the_name_it_sends(moe_server):
    # The runtime behind `holo run --base-url URL --model NAME` probes URL/health, then chats as NAME
    # (hcompai/holo-desktop-cli's local-mode contract test); NAME may hold a slash.
    assert httpx.get(f"{moe_server.url}/v1/health", timeout=30).json()["status"] == "ready"
    client = moe_server.client()
    assert [model.id for model in client.models.list().data] == [MOE] and client.models.retrieve(MOE).id == MOE
    response = client.chat.completions.create(model=MOE, messages=ASK, max_tokens=2)
    assert response.model == MOE


def test_hcompanys_documented_request_shapes_answer_on_a_holo3_server(moe_server):
    """Hcompany's agent-loop requests as its docs give them (hub.hcompany.ai/agent-loop): the step's
    schema in the system prompt's <output_format> and in `structured_outputs`, thinking on with
    `reasoning_effort: "medium"`, observations wrapped in <observation> with the 3 latest screenshots
    kept; then Holo3.1's other format, function calling with `tool_choice: "required"`. (A small
    reasoning budget keeps random weights' thinking short; it is not part of Hcompany's shape.)"""
    schema = bounded_schema(AgentStep.model_json_schema(), max_chars=16, max_coordinate=1000,
                            coordinates=NORMALIZED_1000)
    thinking = {"reasoning_effort": "medium", "chat_template_kwargs": {"enable_thinking": True},
                "thinking_token_budget": 8, "temperature": 0, "max_tokens": 300}
    messages = [{"role": "system", "content": f"You are a GUI agent.\n<output_format>\n{json.dumps(schema)}\n"
                                              "</output_format>"},
                {"role": "user", "content": "Task: open the settings page."}]
    for step in range(4):
        messages.append({"role": "user", "content": [
            {"type": "text", "text": "<observation>"},
            {"type": "image_url", "image_url": {"url": screenshot(96, 64, seed=step)}},
            {"type": "text", "text": "</observation>"}]})
        answer = moe_server.post("/v1/chat/completions", {"model": MOE, "messages": evict_screenshots(messages),
                                                          "structured_outputs": {"json": schema}, **thinking}).json()
        message = answer["choices"][0]["message"]
        assert message["reasoning_content"] and len(answer["holo"]["images"]) == min(step + 1, 3)
        step_taken = AgentStep.model_validate_json(message["content"])
        assert 0 <= getattr(step_taken.tool_call, "x", 0) <= 1000
        messages.append({"role": "assistant", "content": message["content"]})  # the answer, not its reasoning
    point = {"type": "integer", "minimum": 0, "maximum": 1000}
    tools = [{"type": "function", "function": {"name": "click", "parameters": {
                 "type": "object", "properties": {"element": {"type": "string", "maxLength": 16}, "x": point, "y": point},
                 "required": ["element", "x", "y"]}}},
             {"type": "function", "function": {"name": "answer", "parameters": {
                 "type": "object", "properties": {"content": {"type": "string", "maxLength": 16}},
                 "required": ["content"]}}}]
    answer = moe_server.post("/v1/chat/completions", {"model": MOE, "messages": evict_screenshots(messages),
                                                      "tools": tools, "tool_choice": "required", **thinking}).json()
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["tool_calls"]
    for call in choice["message"]["tool_calls"]:
        declared = next(tool["function"]["parameters"] for tool in tools if tool["function"]["name"] ==
                        call["function"]["name"])
        arguments = json.loads(call["function"]["arguments"])
        assert set(arguments) == set(declared["required"]), arguments  # every declared key, no other
