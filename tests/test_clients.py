"""What other clients' servers accept, served the same way here: several served names (vLLM's
--served-model-name a b c, for the names Hcompany's holo CLI sends), vLLM's /tokenize and
/detokenize, OpenAI's nulls where its OpenAPI document allows them, and vLLM's min_p."""

import json

import httpx
import pytest

from holo_mlx.testing import synthetic_screenshot
from test_server import data_url, error_of, image_message

NAMES = ("holo4-35b-a3b", "holo4-27b", "Hcompany/Holo-3.1-35B-A3B")


@pytest.fixture(scope="module")
def server(shared_server, hf_root_checkpoint):
    return shared_server("--model", str(hf_root_checkpoint), "--served-model-name", *NAMES)


# --- several served names ------------------------------------------------------------------------------

def test_every_served_name_is_listed_and_served_and_answers_report_the_first(server):
    client = server.client()
    assert [model.id for model in client.models.list().data] == list(NAMES)
    for name in NAMES:
        assert client.models.retrieve(name).id == name
        reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert reply.model == NAMES[0]
    assert httpx.get(f"{server.url}/health").json()["model"] == NAMES[0]


def test_a_name_not_served_is_404_listing_the_served_ones(server):
    response = server.post("/v1/chat/completions", {"model": "holo3-35b-a3b", "max_tokens": 2,
                                                    "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert all(repr(name) in error["message"] for name in NAMES)
    assert httpx.get(f"{server.url}/v1/models/holo3-35b-a3b").status_code == 404


# --- /tokenize and /detokenize ---------------------------------------------------------------------------

def test_text_goes_to_tokens_and_back_with_the_tokenizers_strings(server, hf_root_checkpoint):
    text = "Click the Submit button, then type «héllo» 🙂."
    body = server.post("/tokenize", {"model": NAMES[1], "prompt": text, "return_token_strs": True}).json()
    assert body["count"] == len(body["tokens"]) > 5
    config = json.loads((hf_root_checkpoint / "config.json").read_text())
    assert body["max_model_len"] == config["max_position_embeddings"]
    assert len(body["token_strs"]) == body["count"] and body["token_strs"][:2] == ["Click", "Ġthe"]
    assert server.post("/detokenize", {"tokens": body["tokens"]}).json() == {"prompt": text}
    assert server.post("/tokenize", {"prompt": text}).json()["token_strs"] is None


def test_chat_messages_with_a_screenshot_count_what_the_chat_request_is_charged(server, hf_root_checkpoint):
    image_token = json.loads((hf_root_checkpoint / "config.json").read_text())["image_token_id"]
    screenshot = data_url(synthetic_screenshot(1280, 720))
    tools = [{"type": "function", "function": {"name": "click", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}]
    for extra in ({}, {"tools": tools}):
        messages = [{"role": "system", "content": "You are a GUI agent."}, *image_message(screenshot)]
        counted = server.post("/tokenize", {"messages": messages, **extra}).json()
        chat = server.post("/v1/chat/completions", {"messages": messages, "max_tokens": 1, **extra}).json()
        assert counted["count"] == len(counted["tokens"]) == chat["usage"]["prompt_tokens"]
        # At the resolution the server resizes to: a token per 28x28 pixels (14-pixel patches merged 2x2).
        resized = chat["holo"]["images"][0]["resized"]
        assert counted["tokens"].count(image_token) == resized["width"] * resized["height"] // 28**2 > 100
    opened = server.post("/tokenize", {"messages": messages}).json()
    closed = server.post("/tokenize", {"messages": messages, "add_generation_prompt": False}).json()
    assert opened["tokens"][:closed["count"]] == closed["tokens"]
    assert server.post("/detokenize", {"tokens": opened["tokens"][closed["count"]:]}).json()["prompt"] == \
        "<|im_start|>assistant\n"


@pytest.mark.parametrize("path, payload, status, param", [
    ("/detokenize", {"tokens": [9707, 10**7]}, 400, "tokens"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
    ("/detokenize", {"tokens": "9707"}, 422, "tokens"),
    ("/tokenize", {"prompt": 5}, 422, "prompt"),
    ("/tokenize", {"messages": [{"role": "robot", "content": "Hi"}]}, 422, "messages.0.role"),
    ("/tokenize", {"messages": [{"role": "user", "content": "Hi"}], "chat_template_kwargs": "x"}, 400,
     "chat_template_kwargs"),
    ("/tokenize", {"model": "holo3-35b-a3b", "prompt": "Hi"}, 404, "model"),
    ("/tokenize", {}, 400, "prompt"),
    ("/tokenize", {"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}, 400, "prompt"),
])
def test_bad_input_is_an_openai_error_naming_the_field(server, path, payload, status, param):
    response = server.post(path, payload)
    assert response.status_code == status and error_of(response)["param"] == param, response.text


# --- null where OpenAI's OpenAPI document allows it: the field's default -----------------------------------

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
COMPLETION = {"prompt": "Hi", "max_tokens": 2, "temperature": 0}
RESPONSE = {"input": "Hi", "max_output_tokens": 2}


@pytest.mark.parametrize("path, payload, field", [
    ("/v1/chat/completions", CHAT, "stream"), ("/v1/chat/completions", CHAT, "n"),
    ("/v1/chat/completions", CHAT, "logprobs"), ("/v1/chat/completions", CHAT, "store"),
    ("/v1/completions", COMPLETION, "stream"), ("/v1/completions", COMPLETION, "n"),
    ("/v1/completions", COMPLETION, "logprobs"), ("/v1/completions", COMPLETION, "echo"),
    ("/v1/responses", RESPONSE, "stream"), ("/v1/responses", RESPONSE, "store"),
])
def test_null_means_the_default(server, path, payload, field):
    response = server.post(path, {**payload, field: None})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"  # not streamed
    body = response.json()
    if path == "/v1/responses":
        assert server.client().responses.retrieve(body["id"]).id == body["id"]  # stored, the default
        return
    assert len(body["choices"]) == 1 and body["choices"][0]["logprobs"] is None
    if path == "/v1/completions":  # greedy: the very text of the request without the field (no echo)
        assert body["choices"][0]["text"] == server.post(path, payload).json()["choices"][0]["text"]
        echoed = server.post(path, {**payload, "echo": True}).json()["choices"][0]["text"]
        assert echoed == "Hi" + body["choices"][0]["text"]
