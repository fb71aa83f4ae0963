"""Anthropic's Messages API through the real `anthropic` SDK and LangChain's ChatAnthropic, against a live
server: text whole and streamed (the exact event order), images, tools (auto, any, named; whole and
streamed) and their results, stop sequences, count_tokens, errors in Anthropic's envelope, a computer-use
loop on a recording fake computer (HiDPI too) and a computer turn on Holo3's agent loop, and thinking on
Holo2. Random weights: shapes, counts,
event order and schema validity are checked, never the text itself."""

import base64
import io
import json

import anthropic
import httpx
import jsonschema
import pytest

from holo_mlx.agent import AgentLoop, AgentStep, ComputerStep, SurferH
from holo_mlx.coordinates import NORMALIZED_1000, RESIZED_PIXELS, map_point
from holo_mlx.server import computer
from holo_mlx.testing import synthetic_screenshot
from test_tools import NOTE, grammars, tightest_budget  # noqa: F401 (grammars: a fixture)

MODEL, KEY = "holo-tiny", "sekret"
CLICK = {"name": "click", "description": "Click a point of the screen",
         "input_schema": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                          "required": ["x", "y"]}}
TYPE = {"name": "type_text", "description": "Type text",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string", "maxLength": 12}},
                         "required": ["text"]}}
SCHEMAS = {tool["name"]: tool["input_schema"] for tool in (CLICK, TYPE)}
HI = [{"role": "user", "content": "Click the OK button."}]
GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def server(shared_server, hf_root_checkpoint):
    """The tiny Holo1.5 checkpoint behind an API key, with a small body limit."""
    return shared_server("--model", str(hf_root_checkpoint), "--served-model-name", MODEL, "--api-key", KEY,
                         "--max-request-mb", "8")


@pytest.fixture(scope="module")
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


def png_base64(width: int, height: int, seed: int = 0) -> str:
    buffer = io.BytesIO()
    synthetic_screenshot(width, height, seed=seed).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image_block(width: int = 64, height: int = 64, seed: int = 0) -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                        "data": png_base64(width, height, seed)}}


def prompt_tokens(message) -> int:
    """The whole prompt: Anthropic counts the prefix cache's part apart."""
    return message.usage.input_tokens + message.usage.cache_read_input_tokens


def chat(server, **payload) -> dict:
    response = server.post("/v1/chat/completions", {"model": MODEL, **payload}, headers={"x-api-key": KEY})
    assert response.status_code == 200, response.text
    return response.json()


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind
    return body["error"]["message"]


# --- text ----------------------------------------------------------------------------------------------

def test_a_message_answers_as_the_chat_path_does_with_anthropics_shape(server, client):
    message = client.messages.create(
        model=MODEL, max_tokens=6, system=[{"type": "text", "text": "You are terse."}], messages=HI,
        metadata={"user_id": "someone"}, extra_body={**GREEDY, "top_k": 5, "top_p": 0.9},
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == MODEL and [block.type for block in message.content] == ["text"]
    assert message.stop_sequence is None and message.usage.cache_creation_input_tokens == 0
    # The same request on chat completions: same prompt, same greedy tokens, same ending.
    same = chat(server, max_tokens=6, temperature=0, top_k=5, top_p=0.9,
                messages=[{"role": "system", "content": "You are terse."}, *HI])
    assert message.content[0].text == same["choices"][0]["message"]["content"]
    assert prompt_tokens(message) == same["usage"]["prompt_tokens"]
    assert message.usage.output_tokens == same["usage"]["completion_tokens"]
    assert message.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[same["choices"][0]["finish_reason"]]


def sse_events(server, payload: dict) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event of a streamed request, as sent."""
    with httpx.stream("POST", f"{server.url}/v1/messages", json={**payload, "stream": True},
                      headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = []
    for raw in text.strip().split("\n\n"):
        (name_line, data_line) = raw.split("\n")
        name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append((name, data))
    return events


def assert_event_order(events: list[tuple[str, dict]]) -> list[dict]:
    """message_start, ping, then each block's start, deltas and stop (indices 0, 1, ...), message_delta,
    message_stop; the blocks as started."""
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    blocks, position = [], 2
    while names[position] == "content_block_start":
        start = events[position][1]
        assert start["index"] == len(blocks)
        blocks.append(start["content_block"])
        position += 1
        while names[position] == "content_block_delta":
            assert events[position][1]["index"] == start["index"]
            position += 1
        assert names[position] == "content_block_stop" and events[position][1]["index"] == start["index"]
        position += 1
    assert position == len(names) - 2 and blocks
    return blocks


def test_a_streamed_message_sends_anthropics_events_in_order_and_adds_up_to_the_whole(server, client):
    payload = {"model": MODEL, "max_tokens": 8, "messages": HI}
    events = sse_events(server, {**payload, **GREEDY})
    assert [block["type"] for block in assert_event_order(events)] == ["text"]
    start, delta = events[0][1]["message"], events[-2][1]
    assert start["content"] == [] and start["stop_reason"] is None and start["id"].startswith("msg_")
    whole = client.messages.create(**payload, extra_body=GREEDY)
    assert "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta") == \
        whole.content[0].text
    assert delta["delta"]["stop_reason"] == whole.stop_reason and delta["usage"]["output_tokens"] == \
        whole.usage.output_tokens
    with client.messages.stream(**payload, extra_body=GREEDY) as stream:  # the SDK's own accumulation
        final = stream.get_final_message()
    assert final.content[0].text == whole.content[0].text and final.stop_reason == whole.stop_reason


def test_stop_sequences_end_the_text_and_are_named(client):
    text = client.messages.create(model=MODEL, max_tokens=16, messages=HI, extra_body=GREEDY).content[0].text
    assert len(text) >= 4, "the greedy answer is too short to cut"
    stop = text[len(text) // 2:len(text) // 2 + 2]
    message = client.messages.create(model=MODEL, max_tokens=16, messages=HI, stop_sequences=["\x00never", stop],
                                     extra_body=GREEDY)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert message.content[0].text == text[:text.index(stop)]


def test_output_config_format_holds_the_text_to_its_schema(client):
    schema = {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99},
                                               "label": {"type": "string", "maxLength": 8}},
              "required": ["x", "label"], "additionalProperties": False}
    for _ in range(2):  # sampled: each answer held by the grammar
        message = client.messages.create(model=MODEL, max_tokens=40, messages=HI, extra_body={"temperature": 1.0},
                                         output_config={"format": {"type": "json_schema", "schema": schema}})
        assert message.stop_reason == "end_turn" and [block.type for block in message.content] == ["text"]
        jsonschema.validate(json.loads(message.content[0].text), schema)


# --- images, tools, count_tokens -------------------------------------------------------------------------

def test_image_blocks_reach_the_prompt_and_count_tokens_counts_what_runs(client):
    with_image = [{"role": "user", "content": [image_block(320, 200), {"type": "text", "text": "What is this?"}]}]
    text_only = [{"role": "user", "content": "What is this?"}]
    counted = client.messages.count_tokens(model=MODEL, messages=with_image, system="You see screenshots.")
    message = client.messages.create(model=MODEL, max_tokens=2, messages=with_image, system="You see screenshots.")
    assert counted.input_tokens == prompt_tokens(message)
    without = client.messages.count_tokens(model=MODEL, messages=text_only, system="You see screenshots.")
    # A token per 28x28 pixels of the resized image (320x200: some 80).
    assert counted.input_tokens - without.input_tokens >= 320 * 200 // 28**2 - 10


def test_a_url_image_is_refused_under_the_servers_image_policy_naming_the_block(server):
    """The block is named as the request has it, though the system prompt and the tool result before it
    are chat messages of their own on the chat path."""
    payload = {"model": MODEL, "max_tokens": 2, "system": "You click.", "tools": [CLICK], "messages": [
        {"role": "user", "content": "Look."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "click",
                                           "input": {"x": 1, "y": 2}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "clicked"},
                                     {"type": "text", "text": "This:"},
                                     {"type": "image", "source": {"type": "url",
                                                                  "url": "https://example.com/a.png"}}]}]}
    message = anthropic_error(server.post("/v1/messages", payload, headers={"x-api-key": KEY}), 400,
                              "invalid_request_error")
    assert message.startswith("messages.2.content.2:") and "remote image URLs are disabled" in message


def assert_valid_tool_uses(message, names=SCHEMAS) -> list:
    uses = [block for block in message.content if block.type == "tool_use"]
    for use in uses:
        assert use.id.startswith("toolu_") and use.name in names and isinstance(use.input, dict)
        jsonschema.validate(use.input, SCHEMAS[use.name])
    # "max_tokens" when the budget closed the calls (test_a_budget_ending_is_max_tokens_with_whole_tool_uses)
    assert message.stop_reason == "max_tokens" or (message.stop_reason == "tool_use") == bool(uses)
    return uses


def test_tool_choice_any_calls_tools_with_inputs_valid_against_their_schemas(client):
    for _ in range(2):  # sampled: two different answers, each held by the grammar
        message = client.messages.create(model=MODEL, max_tokens=60, messages=HI, tools=[CLICK, TYPE],
                                         tool_choice={"type": "any"}, extra_body={"temperature": 1.0})
        assert assert_valid_tool_uses(message)


def test_a_named_tool_is_the_one_called_once_without_parallel_use(client):
    message = client.messages.create(model=MODEL, max_tokens=60, messages=HI, tools=[CLICK, TYPE],
                                     tool_choice={"type": "tool", "name": "type_text",
                                                  "disable_parallel_tool_use": True})
    assert [use.name for use in assert_valid_tool_uses(message)] == ["type_text"]


def test_auto_answers_text_or_valid_calls_and_none_leaves_the_tools_out(client):
    auto = client.messages.create(model=MODEL, max_tokens=40, messages=HI, tools=[CLICK, TYPE],
                                  tool_choice={"type": "auto"})
    assert_valid_tool_uses(auto)
    assert {block.type for block in auto.content} <= {"text", "tool_use"}
    counted = {choice: client.messages.count_tokens(model=MODEL, messages=HI, tools=[CLICK, TYPE],
                                                    tool_choice={"type": choice}).input_tokens
               for choice in ("auto", "none")}
    assert counted["none"] == client.messages.count_tokens(model=MODEL, messages=HI).input_tokens < counted["auto"]


def test_streamed_tool_uses_arrive_as_input_json_deltas(server, client):
    payload = {"model": MODEL, "max_tokens": 60, "messages": HI, "tools": [CLICK], "tool_choice": {"type": "any"}}
    blocks = assert_event_order(events := sse_events(server, payload))
    assert [block["type"] for block in blocks][-1] == "tool_use" and all(
        block["input"] == {} and block["id"].startswith("toolu_") for block in blocks if block["type"] == "tool_use")
    assert events[-2][1]["delta"]["stop_reason"] in ("tool_use", "max_tokens")
    with client.messages.stream(**payload) as stream:
        final = stream.get_final_message()
    assert assert_valid_tool_uses(final)


def test_a_tool_result_turn_reads_into_the_prompt_as_a_tool_message(server, client):
    history = [*HI, {"role": "assistant", "content": [
        {"type": "text", "text": "Clicking."},
        {"type": "tool_use", "id": "toolu_1", "name": "click", "input": {"x": 3, "y": 4}}]}]
    results = [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "clicked"},
               {"type": "text", "text": "Now type."}]
    messages = [*history, {"role": "user", "content": results}]
    counted = client.messages.count_tokens(model=MODEL, messages=messages, tools=[CLICK, TYPE])
    # The chat messages it stands for, through /tokenize: the same prompt, token for token.
    chat_messages = [*HI, {"role": "assistant", "content": "Clicking.", "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "click", "arguments": '{"x": 3, "y": 4}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "clicked"},
        {"role": "user", "content": [{"type": "text", "text": "Now type."}]}]
    tools = [{"type": "function", "function": {"name": tool["name"], "description": tool["description"],
                                               "parameters": tool["input_schema"]}} for tool in (CLICK, TYPE)]
    tokenized = server.post("/tokenize", {"messages": chat_messages, "tools": tools}, headers={"x-api-key": KEY}).json()
    assert counted.input_tokens == tokenized["count"]
    message = client.messages.create(model=MODEL, max_tokens=40, messages=messages, tools=[CLICK, TYPE])
    assert prompt_tokens(message) == counted.input_tokens
    # A result of text and an image.
    results[0]["content"] = [{"type": "text", "text": "clicked; the screen now:"}, image_block(128, 96)]
    with_image = client.messages.count_tokens(model=MODEL, messages=[*history, {"role": "user", "content": results}],
                                              tools=[CLICK, TYPE])
    assert with_image.input_tokens > counted.input_tokens


# --- errors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("payload, status, kind, named", [
    ({"messages": HI}, 400, "invalid_request_error", "max_tokens"),
    ({"max_tokens": 2, "messages": [{"role": "system", "content": "x"}]}, 400, "invalid_request_error",
     "messages.0.role"),
    ({"max_tokens": "many", "messages": HI}, 400, "invalid_request_error", "max_tokens"),
    ({"max_tokens": 2, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, 400,
     "invalid_request_error", "messages.0.content.0"),
    ({"max_tokens": 2, "messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "not base64!"}}]}]}, 400, "invalid_request_error",
     "messages.0.content.0"),
    ({"max_tokens": 2, "messages": HI, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 400,
     "invalid_request_error", "tools.0.type"),
    ({"max_tokens": 2, "messages": HI, "tool_choice": {"type": "any"}}, 400, "invalid_request_error", "tool_choice"),
    ({"max_tokens": 2, "messages": HI, "tools": [CLICK], "tool_choice": {"type": "tool", "name": "nope"}}, 400,
     "invalid_request_error", "tool_choice"),
    ({"max_tokens": 8, "messages": HI, "thinking": {"type": "enabled", "budget_tokens": 8}}, 400,
     "invalid_request_error", "thinking.budget_tokens"),
    ({"max_tokens": 2, "messages": HI, "temperature": 1.5}, 400, "invalid_request_error", "temperature"),
    ({"max_tokens": 0, "messages": HI}, 400, "invalid_request_error", "max_tokens"),
    ({"model": "claude-sonnet-4-5", "max_tokens": 2, "messages": HI}, 404, "not_found_error", "model"),
    ({"max_tokens": 2, "messages": HI, "output_config": {"format": {"type": "json_schema", "schema": {}}},
      "tools": [{"type": "computer_20250124", "name": "computer", "display_width_px": 8, "display_height_px": 8}]},
     400, "invalid_request_error", "output_config.format"),
    ({"max_tokens": 2, "messages": HI, "output_config": {"format": {"type": "json_schema", "schema": {}}},
      "tools": [CLICK]}, 400, "invalid_request_error", "tools"),
])
def test_bad_requests_get_anthropics_envelope_naming_the_field(server, payload, status, kind, named):
    response = server.post("/v1/messages", {"model": MODEL, **payload}, headers={"x-api-key": KEY})
    assert anthropic_error(response, status, kind).startswith(named)


def test_the_sdk_raises_its_own_errors(server, client):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-opus-4-1", max_tokens=2, messages=HI)
    with pytest.raises(anthropic.BadRequestError, match="messages"):
        client.messages.create(model=MODEL, max_tokens=2, messages=[])
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=2, messages=HI)


def test_either_key_header_opens_every_keyed_path_and_none_is_anthropic_shaped_here(server):
    assert anthropic_error(server.post("/v1/messages", {"model": MODEL, "max_tokens": 2, "messages": HI}), 401,
                           "authentication_error")
    assert anthropic_error(server.post("/v1/messages/count_tokens", {"model": MODEL, "messages": HI},
                                       headers={"x-api-key": "wrong"}), 401, "authentication_error")
    assert server.post("/v1/messages/count_tokens", {"model": MODEL, "messages": HI},
                       headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    for path in ("/v1/models", "/metrics"):
        assert httpx.get(f"{server.url}{path}", headers={"x-api-key": KEY}).status_code == 200
    openai_shaped = httpx.get(f"{server.url}/v1/models", headers={"x-api-key": "wrong"})
    assert openai_shaped.status_code == 401 and openai_shaped.json()["error"]["type"] == "authentication_error"


def test_a_body_over_the_limit_is_request_too_large(server):
    payload = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "x" * (8 << 20)}]}
    anthropic_error(server.post("/v1/messages", payload, headers={"x-api-key": KEY}), 413, "request_too_large")


def test_the_mid_stream_error_event_is_anthropics():
    """The event a failure after the stream began is sent as (no request fails mid-stream on demand,
    so the route's formatter is asked directly)."""
    from holo_mlx.server.anthropic_chat import error_event
    from holo_mlx.server.errors import APIError

    name, data = error_event(APIError(503, "model is loading")).split("\n", 1)
    assert name == "event: error"
    assert json.loads(data.removeprefix("data: ")) == {"type": "error", "error": {
        "type": "overloaded_error", "message": "model is loading"}}


# --- computer use ----------------------------------------------------------------------------------------

class FakeComputer:
    """A display of width x height points whose screenshots have `scale` times as many pixels each
    way (2: a Retina screen); it records every action it is asked to perform."""

    def __init__(self, width: int, height: int, scale: int = 1):
        self.width, self.height, self.scale = width, height, scale
        self.actions: list[dict] = []

    def screenshot(self) -> dict:
        return image_block(self.width * self.scale, self.height * self.scale, seed=len(self.actions))

    def perform(self, action: dict) -> list[dict]:
        """A tool_result's content: the screenshot after the action."""
        self.actions.append(action)
        if "coordinate" in action:
            x, y = action["coordinate"]
            assert 0 <= x < self.width and 0 <= y < self.height, action
        return [self.screenshot()]


ACTIONS = {"screenshot", "left_click", "double_click", "right_click", "type", "key", "scroll", "mouse_move",
           "left_click_drag", "wait"}


@pytest.mark.parametrize("version, scale", [("computer_20250124", 1), ("computer_20251124", 2),
                                            ("computer_20241022", 1)])
def test_a_computer_use_loop_acts_inside_the_display(client, version, scale):
    screen = FakeComputer(320, 200, scale)
    tool = {"type": version, "name": "computer", "display_width_px": 320, "display_height_px": 200,
            "display_number": 1}
    messages = [{"role": "user", "content": "Open the settings."}]
    turns = []
    for _ in range(4):
        message = client.beta.messages.create(model=MODEL, max_tokens=400, tools=[tool], messages=messages,
                                              betas=["computer-use-2025-01-24"], extra_body={"temperature": 1.0})
        turns.append(message)
        messages.append({"role": "assistant", "content": [block.model_dump(exclude_none=True)
                                                          for block in message.content]})
        uses = [block for block in message.content if block.type == "tool_use"]
        assert (message.stop_reason == "tool_use") == bool(uses)
        if uses:
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": screen.perform(use.input)} for use in uses]})
        else:  # the model answered: the task goes on with a new look at the screen
            messages.append({"role": "user", "content": [screen.screenshot(), {"type": "text", "text": "Go on."}]})
    first = turns[0]
    assert [block.input for block in first.content] == [{"action": "screenshot"}] and first.usage.output_tokens == 0
    assert len(turns) == 4 and all(turn.usage.input_tokens + turn.usage.cache_read_input_tokens > 100
                                   for turn in turns[1:])
    assert all(action["action"] in ACTIONS for action in screen.actions)
    if version == "computer_20241022":  # no scroll and no wait in that version
        assert not {"scroll", "wait"} & {action["action"] for action in screen.actions}


def test_a_hidpi_click_lands_in_display_points_where_the_navigation_step_put_it(server, client):
    """The computer turn is Holo1.5's Surfer-H step (asked here through chat completions with the same
    prompt and seed) with its position moved from the resized screenshot onto the display: on a 2x
    screenshot, half the screenshot's pixels. Seeds are tried until the step is a click."""
    tool = {"type": "computer_20250124", "name": "computer", "display_width_px": 320, "display_height_px": 200}
    schema = computer.step_schema(SurferH, RESIZED_PIXELS)
    shot = image_block(640, 400)
    messages = [{"role": "user", "content": "Open the settings."},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "computer",
                                                   "input": {"action": "screenshot"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [shot]}]}]
    conversation = [{"role": "user", "content": "Open the settings."},
                    {"role": "assistant", "content": '{"action": "screenshot"}'},
                    {"role": "user", "content": [{"type": "image_url", "image_url": {
                        "url": f"data:image/png;base64,{shot['source']['data']}"}}]}]
    for seed in range(12):
        asked = chat(server, messages=SurferH.messages(conversation, schema), max_tokens=400,
                     temperature=1.0, seed=seed, response_format=computer.step_format(schema))
        step = ComputerStep.model_validate_json(asked["choices"][0]["message"]["content"]).action
        if step.action in ("click_element", "write_element"):
            break
    else:
        pytest.fail("no seed made the random weights click")
    resized = asked["holo"]["images"][0]["resized"]
    message = client.beta.messages.create(model=MODEL, max_tokens=400, tools=[tool], messages=messages,
                                          betas=["computer-use-2025-01-24"],
                                          extra_body={"temperature": 1.0, "seed": seed})
    assert prompt_tokens(message) == asked["usage"]["prompt_tokens"]
    expected = expected_input(step, (resized["width"], resized["height"]), (320, 200), RESIZED_PIXELS)
    x, y = expected[0]["coordinate"]
    assert [block.input for block in message.content] == expected and 0 <= x < 320 and 0 <= y < 200


def test_count_tokens_of_a_computer_turn_counts_its_navigation_prompt(client):
    tool = {"type": "computer_20250124", "name": "computer", "display_width_px": 640, "display_height_px": 400}
    messages = [{"role": "user", "content": "Open the settings."}]
    assert client.beta.messages.count_tokens(model=MODEL, tools=[tool], messages=messages).input_tokens == 0
    messages += [{"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "computer",
                                                    "input": {"action": "screenshot"}}]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                               "content": [image_block(640, 400)]}]}]
    counted = client.beta.messages.count_tokens(model=MODEL, tools=[tool], messages=messages).input_tokens
    message = client.beta.messages.create(model=MODEL, max_tokens=400, tools=[tool], messages=messages)
    assert counted == message.usage.input_tokens + message.usage.cache_read_input_tokens > 300


def expected_input(action, resized: tuple[int, int], display: tuple[int, int], coordinates) -> list[dict]:
    """docs/API.md's table: a Surfer-H action as the computer tool's inputs (computer_20250124)."""
    if action.action in ("click_element", "write_element"):
        x, y = map_point(action.x, action.y, resized, display, coordinates)
        click = [{"action": "left_click", "coordinate": [x, y]}]
        return click + ([{"action": "type", "text": action.content}] if action.action == "write_element" else [])
    return {"scroll": [{"action": "scroll", "coordinate": [display[0] // 2, display[1] // 2],
                        "scroll_direction": getattr(action, "direction", None), "scroll_amount": 5}],
            "go_back": [{"action": "key", "text": "alt+Left"}], "refresh": [{"action": "key", "text": "F5"}],
            "wait": [{"action": "wait", "duration": 1}], "answer": []}[action.action]


@pytest.mark.slow
def test_holo3_answers_a_computer_turn_in_hcompanys_agent_loop(shared_server, holo3_checkpoint):
    """On Holo3 the turn is the agent loop's step over the whole conversation (each screenshot an
    observation): the same prompt asked through chat completions gives the step the tool_use blocks carry."""
    holo3 = shared_server("--model", str(holo3_checkpoint), "--served-model-name", "holo3-tiny")
    client = anthropic.Anthropic(base_url=holo3.url, api_key="none", max_retries=0, timeout=120)
    tool = {"type": "computer_20250124", "name": "computer", "display_width_px": 320, "display_height_px": 200}
    messages = [{"role": "user", "content": "Open the settings."}]
    conversation = [{"role": "user", "content": "Open the settings."}]
    for turn in range(2):
        shot = image_block(640, 400, seed=turn)
        messages += [{"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{turn}", "name": "computer",
                                                        "input": {"action": "screenshot"}}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{turn}",
                                                   "content": [shot]}]}]
        conversation += [{"role": "assistant", "content": '{"action": "screenshot"}'},
                         {"role": "user", "content": [{"type": "image_url", "image_url": {
                             "url": f"data:image/png;base64,{shot['source']['data']}"}}]}]
    schema = computer.step_schema(AgentLoop, NORMALIZED_1000)
    asked = holo3.post("/v1/chat/completions", {
        "model": "holo3-tiny", "messages": AgentLoop.messages(conversation, schema), "temperature": 0,
        "max_tokens": 300, "response_format": computer.step_format(schema),
        "chat_template_kwargs": {"enable_thinking": False}}).json()
    message = client.beta.messages.create(model="holo3-tiny", max_tokens=300, tools=[tool], messages=messages,
                                          thinking={"type": "disabled"}, betas=["computer-use-2025-01-24"])
    assert prompt_tokens(message) == asked["usage"]["prompt_tokens"]
    action = AgentLoop.action(AgentStep.model_validate_json(asked["choices"][0]["message"]["content"]))
    resized = asked["holo"]["images"][-1]["resized"]
    uses = [block.input for block in message.content if block.type == "tool_use"]
    assert uses == expected_input(action, (resized["width"], resized["height"]), (320, 200), NORMALIZED_1000)
    assert message.stop_reason == ("tool_use" if uses else "end_turn")


# --- LangChain -------------------------------------------------------------------------------------------

def test_langchain_chat_anthropic_invokes_and_binds_tools(server):
    from langchain_anthropic import ChatAnthropic

    llm = ChatAnthropic(model=MODEL, base_url=server.url, api_key=KEY, max_tokens=8, max_retries=0, temperature=0)
    reply = llm.invoke("Hi")
    assert reply.response_metadata["stop_reason"] in ("end_turn", "max_tokens")
    assert reply.usage_metadata["output_tokens"] == reply.response_metadata["usage"]["output_tokens"] >= 1
    streamed = None
    for chunk in llm.stream("Hi"):  # greedy: the same answer, from the event stream
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.text == reply.text
    assert streamed.usage_metadata["output_tokens"] == reply.usage_metadata["output_tokens"]
    bound = ChatAnthropic(model=MODEL, base_url=server.url, api_key=KEY, max_tokens=60, max_retries=0).bind_tools(
        [CLICK], tool_choice="click")
    called = bound.invoke("Click the OK button")
    assert called.tool_calls and not called.invalid_tool_calls
    for call in called.tool_calls:
        assert call["name"] == "click" and call["id"].startswith("toolu_")
        jsonschema.validate(call["args"], CLICK["input_schema"])


# --- thinking (Holo2) --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def holo2(holo2_server) -> tuple[anthropic.Anthropic, str]:
    name = httpx.get(f"{holo2_server.url}/v1/models").json()["data"][0]["id"]
    return anthropic.Anthropic(base_url=holo2_server.url, api_key="none", max_retries=0, timeout=120), name


def test_thinking_comes_first_as_a_thinking_block_within_its_budget(holo2):
    client, name = holo2
    thinking = client.messages.create(model=name, max_tokens=16, messages=HI,
                                      thinking={"type": "enabled", "budget_tokens": 6})
    assert [block.type for block in thinking.content][:1] == ["thinking"]
    assert {block.type for block in thinking.content[1:]} <= {"text"} and thinking.content[0].signature == ""
    plain = client.messages.create(model=name, max_tokens=4, messages=HI, thinking={"type": "disabled"})
    assert [block.type for block in plain.content] == ["text"]


def test_streamed_thinking_opens_the_first_block_with_thinking_deltas(holo2_server, holo2):
    _, name = holo2
    with httpx.stream("POST", f"{holo2_server.url}/v1/messages", timeout=120, json={
            "model": name, "max_tokens": 16, "messages": HI, "stream": True,
            "thinking": {"type": "enabled", "budget_tokens": 6}}) as response:
        events = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines()
                  if line.startswith("data: ")]
    blocks = assert_event_order([(event["type"], event) for event in events])
    assert blocks[0] == {"type": "thinking", "thinking": "", "signature": ""}
    kinds = [event["delta"]["type"] for event in events if event["type"] == "content_block_delta"]
    assert kinds[0] == "thinking_delta" and set(kinds) <= {"thinking_delta", "text_delta"}
    assert "thinking_delta" not in kinds[kinds.index("text_delta"):] if "text_delta" in kinds else True


def test_thinking_sent_back_is_the_turns_reasoning(holo2_server, holo2):
    """An assistant turn of thinking and a call, then its result: Qwen3's template keeps the reasoning
    of the turns after the last user query, so the prompt holds it exactly as chat's reasoning_content."""
    client, name = holo2
    reasoning = "The OK button is at the bottom."
    turn = [{"type": "thinking", "thinking": reasoning, "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "click", "input": {"x": 3, "y": 4}}]
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "clicked"}]}
    counted = client.messages.count_tokens(model=name, tools=[CLICK],
                                           messages=[*HI, {"role": "assistant", "content": turn}, result]).input_tokens
    without = client.messages.count_tokens(model=name, tools=[CLICK],
                                           messages=[*HI, {"role": "assistant", "content": turn[1:]},
                                                     result]).input_tokens
    chat_messages = [*HI, {"role": "assistant", "content": "", "reasoning_content": reasoning, "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "click", "arguments": {"x": 3, "y": 4}}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "clicked"}]
    tools = [{"type": "function", "function": {"name": "click", "description": CLICK["description"],
                                               "parameters": CLICK["input_schema"]}}]
    tokenized = holo2_server.post("/tokenize", {"messages": chat_messages, "tools": tools}).json()
    assert counted == tokenized["count"] > without


@pytest.mark.parametrize("stream", [False, True])
def test_a_budget_ending_is_max_tokens_with_whole_tool_uses(client, grammars, stream):
    """As chat says "length" (server/chat.finish_reason_of): a budget one token above the shortest
    call closes it, whole, and the turn says the budget ended it."""
    note = {"name": "note", "input_schema": NOTE["function"]["parameters"]}
    kwargs = dict(model=MODEL, max_tokens=tightest_budget(grammars, "tools"), messages=HI, tools=[note],
                  tool_choice={"type": "any"}, extra_body={"temperature": 1.0, "seed": 0})
    if stream:
        with client.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    assert message.stop_reason == "max_tokens"
    assert [isinstance(use.input["text"], str) for use in message.content if use.type == "tool_use"] == [True]
