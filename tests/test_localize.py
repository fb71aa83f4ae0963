"""POST /v1/localize and `holo.map_coordinates`: click positions inside the screenshot, in both pixel spaces."""

import base64
import importlib.util
import io
import json
import subprocess
import sys

import httpx
import pytest

from holo_mlx.agent import ClickAbsoluteAction, NavigationStep, localization_prompt, localization_schema
from holo_mlx.coordinates import map_point
from holo_mlx.testing import synthetic_screenshot
from test_server import ROOT, Server, data_url, error_of, image_message

AGENT_STEP = ROOT / "docs" / "agent_step.py"


def png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_prompt_is_the_model_cards():
    prompt = localization_prompt("the Submit button")
    assert prompt.startswith("Localize an element on the GUI image according to the provided target and output a "
                             "click position.\n * You must output a valid JSON following the format: {")
    assert str(ClickAbsoluteAction.model_json_schema()) in prompt
    assert prompt.endswith(" Your target is:\nthe Submit button")


@pytest.mark.parametrize("width, height, as_data_url", [(1710, 852, False), (390, 844, True), (300, 200, False)])
def test_localize_answers_a_position_inside_the_screenshot(server, width, height, as_data_url):
    image = synthetic_screenshot(width, height, seed=width)
    sent = data_url(image) if as_data_url else png_base64(image)
    response = server.post("/v1/localize", {"image": sent, "target": "the Submit button", "model": "holo-tiny"})
    assert response.status_code == 200, response.text
    body = response.json()
    resized, original = body["resized"], body["original"]
    assert (original["width"], original["height"]) == (width, height)
    assert 0 <= body["x"] < resized["width"] and 0 <= body["y"] < resized["height"]
    assert 0 <= original["x"] < width and 0 <= original["y"] < height
    assert (original["x"], original["y"]) == map_point(body["x"], body["y"], (resized["width"], resized["height"]),
                                                       (width, height))


def test_map_coordinates_rewrites_the_chat_answer_into_original_pixels(server):
    messages = image_message(data_url(synthetic_screenshot(1710, 852)), localization_prompt("the OK button"))
    schema = localization_schema(1400, 700)  # 1710x852 is resized to 1400x700
    request = {"messages": messages, "max_tokens": 40, "temperature": 0,
               "response_format": {"type": "json_schema", "json_schema": {"name": "click", "schema": schema}}}
    raw = server.post("/v1/chat/completions", request).json()
    mapped = server.post("/v1/chat/completions", {**request, "holo": {"map_coordinates": True}}).json()
    images = [{"original": {"width": 1710, "height": 852}, "resized": {"width": 1400, "height": 700}}]
    assert raw["holo"] == {"images": images, "map_coordinates": None}
    assert mapped["holo"] == {"images": images, "map_coordinates": "mapped into the original image's pixels"}
    click, moved = json.loads(raw["choices"][0]["message"]["content"]), json.loads(mapped["choices"][0]["message"]["content"])
    assert (moved["x"], moved["y"]) == map_point(click["x"], click["y"], (1400, 700), (1710, 852))
    assert moved["action"] == click["action"] == "click_absolute"


@pytest.mark.parametrize("payload, note", [
    ({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}},
     "not mapped: the messages have no image"),
    ({"messages": image_message(data_url(synthetic_screenshot(64, 64)))},
     "not mapped: the answer is not constrained JSON (set response_format)"),
])
def test_map_coordinates_where_it_cannot_apply_is_a_noted_no_op(server, payload, note):
    # A client sets holo.map_coordinates once for every turn: text-only turns and free text still answer.
    body = server.post("/v1/chat/completions", {**payload, "max_tokens": 4, "holo": {"map_coordinates": True}}).json()
    assert body["holo"]["map_coordinates"] == note and body["choices"][0]["message"]["content"] is not None


def test_a_streamed_answer_notes_that_it_is_not_mapped(server):
    payload = {"messages": image_message(data_url(synthetic_screenshot(64, 64))), "max_tokens": 4, "stream": True,
               "response_format": {"type": "json_object"}, "holo": {"map_coordinates": True}}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=payload, timeout=60) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert response.status_code == 200
    assert events[0]["holo"]["map_coordinates"] == "not mapped: a streamed answer is sent as it is generated"


def test_the_server_flag_maps_coordinates_for_clients_that_cannot_ask(hf_root_checkpoint):
    mapping = Server("--model", str(hf_root_checkpoint), "--map-coordinates")
    try:
        messages = image_message(data_url(synthetic_screenshot(1710, 852)), localization_prompt("the OK button"))
        request = {"messages": messages, "max_tokens": 40, "temperature": 0,
                   "response_format": {"type": "json_schema",
                                       "json_schema": {"name": "click", "schema": localization_schema(1400, 700)}}}
        body = mapping.post("/v1/chat/completions", request).json()
        opted_out = mapping.post("/v1/chat/completions", {**request, "holo": {"map_coordinates": False}}).json()
    finally:
        mapping.stop()
    click, moved = (json.loads(b["choices"][0]["message"]["content"]) for b in (opted_out, body))
    assert body["holo"]["map_coordinates"] == "mapped into the original image's pixels"
    assert (moved["x"], moved["y"]) == map_point(click["x"], click["y"], (1400, 700), (1710, 852))


def test_the_agent_step_example_runs(server, tmp_path):
    screenshot = tmp_path / "screen.png"
    synthetic_screenshot(480, 300).save(screenshot)
    # Short strings: random weights would otherwise fill the 400-character default.
    run = subprocess.run([sys.executable, str(AGENT_STEP), str(screenshot), "Open the settings",
                          "--base-url", f"{server.url}/v1", "--max-chars", "12"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    step = NavigationStep.model_validate_json(run.stdout)
    if hasattr(step.action, "x"):
        assert 0 <= step.action.x < 480 and 0 <= step.action.y < 300
    # Random weights choose which action; the localization half is checked on its own.
    spec = importlib.util.spec_from_file_location("agent_step", AGENT_STEP)
    agent_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent_step)
    x, y = agent_step.localize(server.client(), data_url(synthetic_screenshot(480, 300)), "the OK button")
    assert 0 <= x < 480 and 0 <= y < 300


@pytest.mark.parametrize("path, payload, status, param", [
    ("/v1/localize", {"image": "@@not base64@@", "target": "OK"}, 400, "image"),
    ("/v1/localize", {"image": png_base64(synthetic_screenshot(64, 64)), "target": "  "}, 400, "target"),
    ("/v1/localize", {"image": png_base64(synthetic_screenshot(64, 64))}, 422, "target"),
    ("/v1/localize", {"image": "https://example.com/a.png", "target": "OK"}, 400, "image"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "holo": {"map_coords": True}},
     422, "holo.map_coords"),
])
def test_bad_requests_get_the_openai_envelope(server, path, payload, status, param):
    response = server.post(path, payload)
    assert response.status_code == status, response.text
    assert error_of(response)["param"] == param
