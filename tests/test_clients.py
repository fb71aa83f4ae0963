"""What other clients' servers accept, served the same way here: several served names (vLLM's
--served-model-name a b c, for the names Hcompany's holo CLI sends), vLLM's /tokenize and
/detokenize, OpenAI's nulls where its OpenAPI document allows them, and vLLM's min_p."""

import json

import httpx
import mlx.core as mx
import numpy as np
import openai
import pytest

from holo_mlx.engine.sampling import SamplingParams, TokenChooser, choose
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


# --- min_p ------------------------------------------------------------------------------------------------

def min_p_reference(logits: np.ndarray, temperature: float, min_p: float) -> np.ndarray:
    """vLLM's min_p: the distribution at the temperature, tokens below min_p times the likeliest's
    probability dropped, the rest renormalized."""
    p = np.exp((logits - logits.max()) / temperature)
    p /= p.sum()
    p[p < min_p * p.max()] = 0
    return p / p.sum()


def test_min_p_draws_follow_the_filtered_distribution():
    # Gaps below the likeliest of 0, -0.5, -1.5, -2, -4, ...: at temperature 0.7 and min_p 0.1 the cut
    # is at a gap of 0.7 ln 0.1 = -1.61, so -2 is dropped (at temperature 1 it would be kept).
    logits = np.array([3.0, 2.5, 1.5, 1.0, -1.0, 0.0, 2.9, -3.0], dtype=np.float32)
    params, rows = SamplingParams(temperature=0.7, min_p=0.1), 6000
    choosers = [TokenChooser(params, set(), len(logits)) for _ in range(rows)]
    drawn = np.array(choose(mx.array(np.tile(logits, (rows, 1))), choosers, [None] * rows).tokens)
    frequency = np.bincount(drawn, minlength=len(logits)) / rows
    expected = min_p_reference(logits, 0.7, 0.1)
    assert (frequency[expected == 0] == 0).all() and (expected > 0).sum() == 4
    assert np.abs(frequency - expected).max() < 4 * np.sqrt(0.25 / rows)


def test_a_seeded_min_p_row_draws_alike_alone_and_beside_other_settings():
    # Beside a penalized row (float32 scores for the batch), a row of another min_p and a plain one:
    # each row is filtered by its own min_p and draws from its own key, in bfloat16 logits as a model's.
    vocab, rng = 2000, np.random.default_rng(0)
    own = [SamplingParams(temperature=0.9, min_p=0.05, seed=11), SamplingParams(frequency_penalty=0.5),
           SamplingParams(temperature=1.2, min_p=0.3, seed=12), SamplingParams(temperature=1.0, seed=13)]
    beside = [TokenChooser(params, set(), vocab) for params in own]
    alone = [TokenChooser(params, set(), vocab) for params in own]
    for _ in range(100):
        logits = mx.array(rng.standard_normal((4, vocab)) * 3).astype(mx.bfloat16)
        batched = choose(logits, beside, [None] * 4).tokens.tolist()
        assert [choose(logits[row:row + 1], [alone[row]], [None]).tokens.item() for row in range(4)] == batched


def test_min_p_one_keeps_only_the_likeliest_token(server):
    client, messages = server.client(), [{"role": "user", "content": "Count to three."}]
    greedy = client.chat.completions.create(model=NAMES[0], messages=messages, max_tokens=8, temperature=0)
    kept = client.chat.completions.create(model=NAMES[0], messages=messages, max_tokens=8, temperature=1.5,
                                          extra_body={"min_p": 1})
    assert kept.choices[0].message.content == greedy.choices[0].message.content
    text = client.completions.create(model=NAMES[0], prompt="Count", max_tokens=8, temperature=1.5,
                                     extra_body={"min_p": 1}).choices[0].text
    plain = client.completions.create(model=NAMES[0], prompt="Count", max_tokens=8, temperature=0)
    assert text == plain.choices[0].text


@pytest.mark.parametrize("value", [-0.1, 1.5])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_min_p_outside_0_1_is_400_naming_it(server, value, endpoint):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as raised:
        if endpoint == "chat":
            client.chat.completions.create(model=NAMES[0], messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=1, extra_body={"min_p": value})
        else:
            client.completions.create(model=NAMES[0], prompt="hi", max_tokens=1, extra_body={"min_p": value})
    assert raised.value.status_code == 400 and raised.value.param == "min_p"
