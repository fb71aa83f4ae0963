"""POST /v1/localize and `holo.map_coordinates`: click positions inside the screenshot, in both pixel spaces,
for a family answering resized-image pixels (Holo1.5) and one answering 0-1000 (Holo2)."""

import base64
import dataclasses
import importlib.util
import io
import json
import re
import subprocess
import sys
from types import SimpleNamespace

import httpx
import pytest

from holo_mlx.agent import (ClickAbsoluteAction, ComputerStep, NavigationStep, SurferH, bounded_schema,
                            holo2_localization_prompt, holo2_localization_schema, localization_prompt,
                            localization_schema, navigation_prompt)
from holo_mlx.coordinates import NORMALIZED_1000, RESIZED_PIXELS, map_point
from holo_mlx.loading import read_config
from holo_mlx.models import families, family_for, register
from holo_mlx.prompt import PromptBuilder
from holo_mlx.server import computer
from holo_mlx.server.chat import in_original_pixels
from holo_mlx.testing import QWEN25_VL_CHAT_TEMPLATE, synthetic_screenshot
from test_families import InProcessServer
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
                                                       (width, height), RESIZED_PIXELS)


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
    assert (moved["x"], moved["y"]) == map_point(click["x"], click["y"], (1400, 700), (1710, 852), RESIZED_PIXELS)
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


@pytest.mark.server
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
    assert (moved["x"], moved["y"]) == map_point(click["x"], click["y"], (1400, 700), (1710, 852), RESIZED_PIXELS)


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


# --- a family answering 0-1000 (Holo2) -------------------------------------------------------------

# Hcompany's element-localization guide: VisualLocalizerOutput.model_json_schema().
THINKING_OFF = {"chat_template_kwargs": {"enable_thinking": False}}
HOLO2_SCHEMA = {
    "properties": {
        "x": {"description": "X coordinate as integer in [0, 1000]", "maximum": 1000, "minimum": 0, "title": "X",
              "type": "integer"},
        "y": {"description": "Y coordinate as integer in [0, 1000]", "maximum": 1000, "minimum": 0, "title": "Y",
              "type": "integer"}},
    "required": ["x", "y"], "title": "VisualLocalizerOutput", "type": "object"}
# Qwen2.5-VL's template with Qwen3's switch: the answer opens a think block unless enable_thinking is false.
THINKING_TEMPLATE = QWEN25_VL_CHAT_TEMPLATE.replace(
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}{% endif %}")


def test_the_holo2_prompt_is_hcompanys():
    assert holo2_localization_prompt("the 'Sign in' button") == (
        "Localize an element on the GUI image according to the provided target and output a click position.\n"
        f" * You must output a valid JSON following the format: {HOLO2_SCHEMA}\n"
        " Your target is:\nthe 'Sign in' button")


def test_the_holo2_schema_is_0_to_1000_whatever_the_image():
    expected = {**HOLO2_SCHEMA, "additionalProperties": False}
    assert holo2_localization_schema(1400, 700) == holo2_localization_schema(28, 56) == expected


def test_navigation_schemas_bound_and_describe_positions_in_the_familys_space():
    pixels, normalized = computer.step_schema(SurferH, RESIZED_PIXELS), computer.step_schema(SurferH, NORMALIZED_1000)
    for action in ("ClickElementAction", "WriteElementAction"):
        assert pixels["$defs"][action]["properties"]["x"] == {
            "description": "The x coordinate, number of pixels from the left edge.", "title": "X", "type": "integer",
            "minimum": 0, "maximum": 9999}
        assert normalized["$defs"][action]["properties"]["y"] == {
            "description": "Y coordinate as integer in [0, 1000]", "title": "Y", "type": "integer",
            "minimum": 0, "maximum": 1000}
    assert "X coordinate as integer in [0, 1000]" in navigation_prompt(normalized)
    # Holo1.5's own schema comes through with its descriptions as they were.
    step = NavigationStep.model_json_schema()
    assert bounded_schema(step, max_chars=8, max_coordinate=1400)["$defs"]["ClickElementAction"]["properties"]["y"][
        "description"] == step["$defs"]["ClickElementAction"]["properties"]["y"]["description"]


def test_computer_use_clicks_convert_from_the_familys_space():
    screen = computer.Screen((1280, 800))
    step = ComputerStep.model_validate(
        {"thought": "", "notes": "", "action": {"action": "click_element", "element": "OK", "x": 500, "y": 1000}})
    # 0-1000: half of the display's width, and its bottom edge (its last row); pixels: 500 of 1400 resized.
    assert computer.computer_calls(step.action, screen, (1400, 700), (2560, 1600), NORMALIZED_1000) == (
        [{"type": "click", "button": "left", "x": 640, "y": 799}], None)
    assert computer.computer_calls(step.action, screen, (1400, 700), (2560, 1600), RESIZED_PIXELS) == (
        [{"type": "click", "button": "left", "x": 457, "y": 799}], None)


def test_chat_mapping_converts_from_the_familys_space():
    prompt = SimpleNamespace(images=[SimpleNamespace(resized_size=(1400, 700), original_size=(1917, 1079))])
    text, note = in_original_pixels('{"x": 500, "y": 250, "box": [0, 0, 1000, 1000]}', prompt, NORMALIZED_1000)
    assert (json.loads(text), note) == ({"x": 959, "y": 270, "box": [0, 0, 1916, 1078]}, None)
    text, note = in_original_pixels('{"x": 500, "y": 250}', prompt, RESIZED_PIXELS)
    assert (json.loads(text), note) == ({"x": 685, "y": 385}, None)  # 684.6, 385.4


def prompt_tokens_counted(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^holo_prompt_tokens_total (\S+)$", metrics, re.M).group(1))


def localization_messages(image, prompt: str) -> list[dict]:
    """What /v1/localize asks the model: the screenshot, then the family's instruction."""
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]


@pytest.fixture(scope="module")
def normalized_family():
    """Holo1.5's family declaring 0-1000 positions with Holo2's prompt and schema, for this module only."""
    holo15 = next(family for family in families() if family.name == "qwen2_5_vl")
    yield register(dataclasses.replace(holo15, coordinates=NORMALIZED_1000,
                                       localization_prompt=holo2_localization_prompt,
                                       localization_schema=holo2_localization_schema))
    register(holo15)  # the registry replaces by name: other modules get Holo1.5 back


@pytest.fixture(scope="module")
def thinking_checkpoint(hf_root_checkpoint, module_tmp_factory):
    """The tiny checkpoint with a chat template that thinks unless told not to, as Qwen3's does."""
    path = module_tmp_factory("thinking") / "holo-tiny"
    path.mkdir()
    for file in hf_root_checkpoint.iterdir():
        if file.name not in ("tokenizer_config.json", "chat_template.json"):
            (path / file.name).symlink_to(file)
    tokenizer_config = json.loads((hf_root_checkpoint / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "chat_template": THINKING_TEMPLATE}))
    return path


@pytest.fixture(scope="module")
def normalized_server(normalized_family, thinking_checkpoint):
    running = InProcessServer(thinking_checkpoint)  # in this process: it sees the family registered here
    yield running
    running.stop()


@pytest.mark.parametrize("width, height", [(1917, 1079), (300, 200)])
def test_localize_in_a_0_1000_family(normalized_server, thinking_checkpoint, width, height):
    image = synthetic_screenshot(width, height, seed=width)
    counted = prompt_tokens_counted(normalized_server.url)
    response = httpx.post(f"{normalized_server.url}/v1/localize", json={"image": png_base64(image),
                                                                        "target": "the Submit button"}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    resized, original = body["resized"], body["original"]
    assert 0 <= body["x"] <= 1000 and 0 <= body["y"] <= 1000
    assert (original["x"], original["y"]) == map_point(body["x"], body["y"], (resized["width"], resized["height"]),
                                                       (width, height), NORMALIZED_1000)
    # The family's own instruction, with thinking off: the prompt the server ran is that one exactly.
    builder = PromptBuilder.from_pretrained(thinking_checkpoint)
    messages = localization_messages(image, holo2_localization_prompt("the Submit button"))
    thinking_off = builder.build(messages, template_kwargs={"enable_thinking": False})
    assert prompt_tokens_counted(normalized_server.url) - counted == len(thinking_off.input_ids)
    assert len(thinking_off.input_ids) != len(builder.build(messages).input_ids)


def test_map_coordinates_in_a_0_1000_family(normalized_server):
    messages = image_message(data_url(synthetic_screenshot(1917, 1079)), holo2_localization_prompt("the OK button"))
    request = {"messages": messages, "max_tokens": 40, "temperature": 0,
               "chat_template_kwargs": {"enable_thinking": False},  # as Hcompany's guide sends it
               "response_format": {"type": "json_schema",
                                   "json_schema": {"name": "click", "schema": holo2_localization_schema(0, 0)}}}
    raw = httpx.post(f"{normalized_server.url}/v1/chat/completions", json=request, timeout=120).json()
    mapped = httpx.post(f"{normalized_server.url}/v1/chat/completions", timeout=120,
                        json={**request, "holo": {"map_coordinates": True}}).json()
    resized = raw["holo"]["images"][0]["resized"]
    click, moved = (json.loads(body["choices"][0]["message"]["content"]) for body in (raw, mapped))
    assert (moved["x"], moved["y"]) == map_point(click["x"], click["y"], (resized["width"], resized["height"]),
                                                 (1917, 1079), NORMALIZED_1000)


def test_localize_on_holo2(holo2_root_checkpoint, holo2_server):
    assert family_for(read_config(holo2_root_checkpoint)).coordinates is NORMALIZED_1000
    image = synthetic_screenshot(1917, 1079, seed=7)
    before = prompt_tokens_counted(holo2_server.url)  # the shared server may have counted others' prompts
    response = holo2_server.post("/v1/localize", {"image": png_base64(image), "target": "the Submit button"})
    counted = prompt_tokens_counted(holo2_server.url) - before
    assert response.status_code == 200, response.text
    body = response.json()
    resized, original = body["resized"], body["original"]
    assert 0 <= body["x"] <= 1000 and 0 <= body["y"] <= 1000
    assert (original["x"], original["y"]) == map_point(body["x"], body["y"], (resized["width"], resized["height"]),
                                                       (1917, 1079), NORMALIZED_1000)
    # Hcompany's instruction, with Holo2's thinking switched off in its template.
    builder = PromptBuilder.from_pretrained(holo2_root_checkpoint)
    messages = localization_messages(image, holo2_localization_prompt("the Submit button"))
    thinking_off = builder.build(messages, template_kwargs={"enable_thinking": False})
    assert counted == len(thinking_off.input_ids) != len(builder.build(messages).input_ids)


def test_computer_use_in_a_0_1000_family_asks_for_its_step(normalized_server):
    """A computer turn runs the family's step schema (x, y described and bounded as 0-1000): the same
    navigation prompt asked through chat completions has its token count and gives the step it
    acted on. (The random weights answer rather than click: test_computer_use_clicks_convert_from_the_familys_space
    maps a click; the turn takes both from the one family.)"""
    shot = data_url(synthetic_screenshot(1917, 1079, seed=3))
    items = [{"role": "user", "content": "Open the settings"},
             {"type": "computer_call", "call_id": "call_0", "action": {"type": "screenshot"}},
             {"type": "computer_call_output", "call_id": "call_0", "output": {"type": "computer_screenshot", "image_url": shot}}]
    conversation = [{"role": "user", "content": "Open the settings"}, {"role": "assistant", "content": '{"type": "screenshot"}'},
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": shot}}]}]

    def asked(coordinates):
        schema = computer.step_schema(SurferH, coordinates)
        return httpx.post(f"{normalized_server.url}/v1/chat/completions", timeout=120, json={
            "messages": SurferH.messages(conversation, schema), "temperature": 0, "max_tokens": 400,
            "response_format": computer.step_format(schema), **THINKING_OFF}).json()

    normalized, pixels = asked(NORMALIZED_1000), asked(RESIZED_PIXELS)
    response = httpx.post(f"{normalized_server.url}/v1/responses", timeout=120, json={
        "input": items, "tools": [{"type": "computer_use_preview", "display_width": 1280, "display_height": 800,
                                   "environment": "browser"}], "max_output_tokens": 400, "store": False, **THINKING_OFF}).json()
    assert response["usage"]["input_tokens"] == normalized["usage"]["prompt_tokens"] != pixels["usage"]["prompt_tokens"]
    step = ComputerStep.model_validate_json(normalized["choices"][0]["message"]["content"])
    expected, answer = computer.computer_calls(step.action, computer.Screen(None), (1, 1), (1, 1),
                                               NORMALIZED_1000)
    output = [item["action"]["type"] if item["type"] == "computer_call" else item["content"][0]["text"]
              for item in response["output"]]
    assert output == [action["type"] for action in expected] + ([answer] if answer is not None else [])
