"""Request features on a server with a small context (--max-model-len), through the real openai client:
the Responses API's truncation "auto", per-request image resolution; random weights."""

import base64
import io
import json

import openai
import pytest

from holo_mlx.coordinates import RESIZED_PIXELS, map_point
from holo_mlx.testing import synthetic_screenshot
from test_server import error_of

CONTEXT = 600


@pytest.fixture(scope="module")
def server(shared_server, hf_root_checkpoint):
    return shared_server("--model", str(hf_root_checkpoint), "--served-model-name", "holo-tiny",
                         "--max-model-len", str(CONTEXT))


def data_url(width: int, height: int, seed: int = 0) -> str:
    buffer = io.BytesIO()
    synthetic_screenshot(width, height, seed=seed).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def screenshot_turn(width: int) -> dict:
    """A user message with one screenshot (about 80 tokens), told apart by its width."""
    return {"role": "user", "content": [{"type": "input_image", "image_url": data_url(width, 200)},
                                        {"type": "input_text", "text": "What changed?"}]}


def holo(response) -> dict:
    return response.model_extra["holo"]


# --- truncation "auto" -------------------------------------------------------------------------------

def test_truncation_auto_changes_nothing_when_the_conversation_fits(client):
    kwargs = dict(model="holo-tiny", input=[screenshot_turn(300)], instructions="Be brief.", temperature=0,
                  max_output_tokens=8, store=False)
    disabled = client.responses.create(**kwargs)
    auto = client.responses.create(**kwargs, truncation="auto")
    assert auto.truncation == "auto" and disabled.truncation == "disabled"
    assert auto.usage.input_tokens == disabled.usage.input_tokens and auto.output_text == disabled.output_text
    assert holo(auto)["truncation"] == {"dropped_messages": 0, "dropped_images": 0}
    assert "truncation" not in holo(disabled)


def test_truncation_auto_drops_the_oldest_screenshots_of_a_chain_until_it_fits(client):
    first = client.responses.create(model="holo-tiny", input=[screenshot_turn(300 + 10 * i) for i in range(3)],
                                    max_output_tokens=2)
    later = [screenshot_turn(400 + 10 * i) for i in range(3)]
    kwargs = dict(model="holo-tiny", previous_response_id=first.id, input=later, instructions="Be brief.",
                  max_output_tokens=100)
    with pytest.raises(openai.BadRequestError) as refused:  # truncation "disabled", the default
        client.responses.create(**kwargs)
    assert refused.value.code == "context_length_exceeded"
    response = client.responses.create(**kwargs, truncation="auto")
    assert response.status in ("completed", "incomplete") and response.truncation == "auto"
    assert response.usage.input_tokens + 100 <= CONTEXT
    dropped = holo(response)["truncation"]
    assert dropped["dropped_images"] >= 1 and dropped["dropped_messages"] >= dropped["dropped_images"]
    # The oldest went first: the screenshots left are the newest ones, in order.
    widths = [image["original"]["width"] for image in holo(response)["images"]]
    assert widths == [300, 310, 320, 400, 410, 420][dropped["dropped_images"]:]
    # The stored conversation is the one answered: its next turn starts from it.
    after = client.responses.create(model="holo-tiny", previous_response_id=response.id, input="And now?",
                                    max_output_tokens=2, truncation="auto")
    assert [image["original"]["width"] for image in holo(after)["images"]] == widths


def test_truncation_auto_drops_old_text_and_keeps_the_instructions_and_last_turn(client):
    story = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)
    turns = [{"role": role, "content": f"{index}: {story}"}
             for index, role in enumerate(["user", "assistant"] * 3)] + [{"role": "user", "content": "Sum up."}]
    response = client.responses.create(model="holo-tiny", input=turns, instructions="Answer in one word.",
                                       max_output_tokens=50, truncation="auto", store=False)
    dropped = holo(response)["truncation"]
    assert dropped["dropped_messages"] >= 1 and dropped["dropped_images"] == 0
    assert response.usage.input_tokens + 50 <= CONTEXT


def test_truncation_auto_cannot_drop_the_last_user_turn(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="holo-tiny", input="word " * CONTEXT, max_output_tokens=5, truncation="auto")
    assert refused.value.code == "context_length_exceeded"


# --- per-request image resolution ----------------------------------------------------------------------

POINT = {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 400},
                                          "y": {"type": "integer", "minimum": 0, "maximum": 240}},
         "required": ["x", "y"], "additionalProperties": False}
POINT_FORMAT = {"type": "json_schema", "json_schema": {"name": "point", "schema": POINT, "strict": True}}
SCREENSHOT = data_url(640, 400)
SMALL, LARGE = 28 * 28 * 64, 28 * 28 * 160  # pixel budgets: about 60 and 135 visual tokens


def image_part(budget: dict, on_part: bool) -> dict:
    """A 640x400 screenshot (one per way of asking: the other test's requests cached nothing of it),
    with Qwen's pixel keys beside its image_url when `on_part`."""
    return {"type": "image_url", "image_url": {"url": data_url(640, 400, seed=1 + on_part)},
            **(budget if on_part else {})}


def click_request(client, budget: dict, map_coordinates: bool, *, on_part: bool):
    """A click on the screenshot at the resolution `budget` sets: vLLM's mm_processor_kwargs, or Qwen's
    keys on the image part."""
    part = image_part(budget, on_part)
    extra = {"holo": {"map_coordinates": map_coordinates}, **({} if on_part else {"mm_processor_kwargs": budget})}
    return client.chat.completions.create(
        model="holo-tiny", messages=[{"role": "user", "content": [part, {"type": "text", "text": "Click Submit."}]}],
        response_format=POINT_FORMAT, temperature=0, max_tokens=30, extra_body=extra)


@pytest.mark.parametrize("on_part", [False, True], ids=["mm_processor_kwargs", "image_part"])
def test_two_resolutions_of_one_screenshot_resize_map_and_cache_apart(client, server, on_part):
    sizes = {}
    for budget in ({"max_pixels": SMALL}, {"min_pixels": LARGE, "max_pixels": LARGE}):
        raw, mapped = (click_request(client, budget, mapped, on_part=on_part) for mapped in (False, True))
        image = mapped.model_extra["holo"]["images"][0]
        resized = (image["resized"]["width"], image["resized"]["height"])
        assert image["original"] == {"width": 640, "height": 400}
        assert resized[0] * resized[1] <= budget["max_pixels"] and resized[0] % 28 == resized[1] % 28 == 0
        # The click is mapped from the pixels of this resize into the original's.
        point = json.loads(raw.choices[0].message.content)
        expected = map_point(point["x"], point["y"], resized, (640, 400), RESIZED_PIXELS)
        assert json.loads(mapped.choices[0].message.content) == {"x": expected[0], "y": expected[1]}
        # /tokenize counts the image at this resolution too.
        tokenized = server.post("/tokenize", {"messages": [{"role": "user", "content": [image_part(budget, on_part), {
            "type": "text", "text": "Click Submit."}]}], "return_token_strs": True,
            **({} if on_part else {"mm_processor_kwargs": budget})}).json()
        assert tokenized["count"] == raw.usage.prompt_tokens == mapped.usage.prompt_tokens
        image_start = tokenized["token_strs"].index("<|image_pad|>")
        # The same resolution again reuses the image's cached prefix; the other resolution never does.
        assert mapped.usage.prompt_tokens_details.cached_tokens > image_start
        if sizes:
            assert raw.usage.prompt_tokens_details.cached_tokens <= image_start
        sizes[budget["max_pixels"]] = (resized, raw.usage.prompt_tokens)
    (small, small_tokens), (large, large_tokens) = sizes[SMALL], sizes[LARGE]
    assert small[0] < large[0] and small[1] < large[1]
    assert large_tokens - small_tokens == (large[0] * large[1] - small[0] * small[1]) // (28 * 28)


def test_a_responses_image_part_and_request_take_their_resolution(client):
    image = {"type": "input_image", "image_url": SCREENSHOT}
    shapes = []
    for budget in ({"max_pixels": SMALL}, {"max_pixels": LARGE}):
        on_request = client.responses.create(model="holo-tiny", input=[{"role": "user", "content": [image]}],
                                             max_output_tokens=1, store=False,
                                             extra_body={"mm_processor_kwargs": budget})
        on_part = client.responses.create(model="holo-tiny", input=[{"role": "user", "content": [{**image, **budget}]}],
                                          max_output_tokens=1, store=False)
        assert holo(on_request)["images"] == holo(on_part)["images"]
        shapes.append(holo(on_part)["images"][0]["resized"])
    assert shapes[0] != shapes[1]


@pytest.mark.parametrize("path, payload, param", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {
        "type": "image_url", "image_url": {"url": SCREENSHOT}, "max_pixels": 10**9}]}]},
     "messages.0.content.1.max_pixels"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": SCREENSHOT}, "min_pixels": LARGE, "max_pixels": SMALL}]}]},
     "messages.0.content.0.min_pixels"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "mm_processor_kwargs": {"min_pixels": 100}}, "mm_processor_kwargs.min_pixels"),
    ("/v1/completions", {"prompt": "hi", "mm_processor_kwargs": {"max_pixels": 10**9}},
     "mm_processor_kwargs.max_pixels"),
    ("/v1/responses", {"input": "hi", "mm_processor_kwargs": {"max_pixels": 10}}, "mm_processor_kwargs.max_pixels"),
    ("/tokenize", {"messages": [{"role": "user", "content": "hi"}], "mm_processor_kwargs": {"max_pixels": 10**9}},
     "mm_processor_kwargs.max_pixels"),
])
def test_a_resolution_outside_the_servers_bounds_is_refused_naming_the_field(server, path, payload, param):
    response = server.post(path, {"model": "holo-tiny", "max_tokens": 1, **payload})
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == param
