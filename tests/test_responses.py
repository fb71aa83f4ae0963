"""The Responses API through the real openai client: text, streaming events, function tools,
stored responses and previous_response_id, and computer use; random weights."""

import base64
import io
import json

import httpx
import jsonschema
import pytest

from holo_mlx.testing import synthetic_screenshot
from test_server import error_of

POINT = {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                          "y": {"type": "integer", "minimum": 0, "maximum": 9}},
         "required": ["x", "y"], "additionalProperties": False}
POINT_FORMAT = {"format": {"type": "json_schema", "name": "point", "schema": POINT, "strict": True}}
CLICK = {"type": "function", "name": "click", "description": "Click a point", "parameters": POINT}
DISPLAY = {"type": "computer_use_preview", "display_width": 1280, "display_height": 800, "environment": "browser"}


def data_url(width: int, height: int) -> str:
    buffer = io.BytesIO()
    synthetic_screenshot(width, height).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_text_answers_count_usage_and_say_when_cut(client):
    response = client.responses.create(model="holo-tiny", input="Hello", instructions="Be brief.",
                                       max_output_tokens=5)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 5 and response.output_text
    assert response.output[0].type == "message" and response.instructions == "Be brief."


def test_a_schema_answer_streams_through_the_sdk_helper(client):
    with client.responses.stream(model="holo-tiny", input="Where?", text=POINT_FORMAT, max_output_tokens=60) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    jsonschema.validate(json.loads(final.output_text), POINT)


@pytest.mark.parametrize("stream", [False, True])
def test_function_tools_answer_with_valid_function_calls(client, stream):
    kwargs = dict(model="holo-tiny", input="Click it", tools=[CLICK], tool_choice="required", max_output_tokens=80)
    if stream:
        with client.responses.stream(**kwargs) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(**kwargs)
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and response.status == "completed"
    for call in calls:
        assert call.name == "click" and call.call_id
        jsonschema.validate(json.loads(call.arguments), POINT)


def test_previous_response_id_continues_the_stored_conversation(client):
    first = client.responses.create(model="holo-tiny", input="Click it", tools=[CLICK], tool_choice="required",
                                    max_output_tokens=80, parallel_tool_calls=False)
    call = next(item for item in first.output if item.type == "function_call")
    second = client.responses.create(
        model="holo-tiny", previous_response_id=first.id, tools=[CLICK], max_output_tokens=3,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "clicked"}])
    # The same turn sent whole, without the store, is the same prompt.
    whole = client.responses.create(
        model="holo-tiny", tools=[CLICK], max_output_tokens=3, store=False,
        input=[{"role": "user", "content": "Click it"},
               {"type": "function_call", "call_id": call.call_id, "name": "click", "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "clicked"}])
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens == whole.usage.input_tokens > first.usage.input_tokens
    assert client.responses.retrieve(second.id).id == second.id


def test_an_assistant_message_then_its_function_call_is_read_into_the_prompt(client):
    # The message's content becomes parts, which come before the call in the assistant turn.
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    response = client.responses.create(model="holo-tiny", tools=tools, max_output_tokens=3, store=False, input=[
        {"role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "ok"}])
    chat = client.chat.completions.create(model="holo-tiny", max_tokens=1, messages=[
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert response.usage.input_tokens == chat.usage.prompt_tokens


def test_stored_responses_are_retrieved_and_deleted(client, server):
    response = client.responses.create(model="holo-tiny", input="Hi", max_output_tokens=2)
    assert client.responses.retrieve(response.id).output_text == response.output_text
    client.responses.delete(response.id)
    missing = httpx.get(f"{server.url}/v1/responses/{response.id}")
    assert missing.status_code == 404 and error_of(missing)["code"] == "response_not_found"
    unstored = client.responses.create(model="holo-tiny", input="Hi", max_output_tokens=2, store=False)
    assert httpx.get(f"{server.url}/v1/responses/{unstored.id}").status_code == 404


def test_an_image_input_is_read(client):
    response = client.responses.create(model="holo-tiny", max_output_tokens=2, input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": data_url(64, 64)}, {"type": "input_text", "text": "What is this?"}]}])
    text_only = client.responses.create(model="holo-tiny", input="What is this?", max_output_tokens=2)
    assert response.usage.input_tokens > text_only.usage.input_tokens


def test_computer_use_asks_for_a_screenshot_then_acts_inside_the_display(client):
    tools = [DISPLAY]
    first = client.responses.create(model="holo-tiny", input="Open the settings", tools=tools)
    (call,) = first.output
    assert call.type == "computer_call" and call.action.type == "screenshot" and call.pending_safety_checks == []
    # A HiDPI screenshot: twice the display's pixels each way.
    screenshot = {"type": "computer_screenshot", "image_url": data_url(2560, 1600)}
    for _ in range(3):
        response = client.responses.create(
            model="holo-tiny", previous_response_id=first.id, tools=tools, temperature=1.0, max_output_tokens=300,
            input=[{"type": "computer_call_output", "call_id": call.call_id, "output": screenshot}])
        assert response.status == "completed" and response.output
        for item in response.output:
            assert item.type in ("computer_call", "message")
            action = getattr(item, "action", None)
            if action is not None and hasattr(action, "x"):
                assert 0 <= action.x < 1280 and 0 <= action.y < 800


@pytest.mark.parametrize("payload, param", [
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input.0.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input.0.content.0"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"input": "hi", "tools": [{"type": "computer_use_preview", "environment": "browser"}]}, "tools.0"),
    ({"input": "hi", "previous_response_id": "resp-missing"}, "previous_response_id"),
    ({"input": "hi", "tools": [DISPLAY], "text": POINT_FORMAT}, "text.format"),
])
def test_bad_responses_requests_get_the_envelope_naming_the_field(server, payload, param):
    response = server.post("/v1/responses", payload)
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == param
