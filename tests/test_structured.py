"""Schema-constrained decoding through the real server: random weights, so only the constraint makes the JSON valid."""

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

from holo_mlx.agent import NavigationStep, bounded_schema
from test_server import error_of

# Every string and array bounded: a random-weight model then always reaches the end of the grammar.
FORM = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "maxLength": 8},
        "count": {"type": "integer", "minimum": 0, "maximum": 999},
        "kind": {"enum": ["button", "link", "field"]},
        "visible": {"type": "boolean"},
        "box": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100},
                "minItems": 4, "maxItems": 4},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
        "parent": {"anyOf": [{"type": "null"},
                             {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9}},
                              "required": ["id"], "additionalProperties": False}]},
    },
    "required": ["label", "count", "kind", "visible", "box", "tags", "parent"],
    "additionalProperties": False,
}
POINT = {"type": "object", "properties": {"x": {"type": "integer", "minimum": -5, "maximum": 5},
                                          "y": {"type": "integer", "minimum": -5, "maximum": 5}},
         "required": ["x", "y"], "additionalProperties": False}


def response_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def assert_valid(text: str, schema: dict) -> dict:
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


def test_chat_answers_validate_and_stop_at_the_end_of_the_grammar(client):
    for temperature in (0.0, 1.0):  # greedy, then sampled (more concurrent samples below)
        response = client.chat.completions.create(
            model="holo-tiny", messages=[{"role": "user", "content": "Describe the Submit button."}],
            max_tokens=200, temperature=temperature, seed=1, response_format=response_format(FORM))
        choice = response.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert_valid(choice.message.content, FORM)


def test_completions_batch_each_prompt_follows_the_schema(server):
    for field, prompts in (({"guided_json": FORM}, ["a", "The button"]),
                           ({"structured_outputs": {"json": FORM}}, ["b"])):
        body = server.post("/v1/completions", {"prompt": prompts, "max_tokens": 200, "temperature": 1.0, "seed": 5,
                                               **field}).json()
        assert [choice["finish_reason"] for choice in body["choices"]] == ["stop"] * len(prompts), body
        for choice in body["choices"]:
            assert_valid(choice["text"], FORM)


def test_streamed_answer_validates(client):
    chunks = list(client.chat.completions.create(
        model="holo-tiny", messages=[{"role": "user", "content": "Where?"}], max_tokens=200, temperature=0.8,
        seed=11, stream=True, response_format=response_format(FORM)))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert_valid("".join(chunk.choices[0].delta.content or "" for chunk in chunks), FORM)


def test_concurrent_requests_decode_together_and_each_validates(client):
    def ask(seed: int):
        schema = FORM if seed % 2 else POINT
        response = client.chat.completions.create(
            model="holo-tiny", messages=[{"role": "user", "content": f"Request {seed}"}], max_tokens=200,
            temperature=1.0, seed=seed, response_format=response_format(schema))
        return response.choices[0], schema

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(ask, range(4)))
    for choice, schema in results:
        assert choice.finish_reason == "stop"
        assert_valid(choice.message.content, schema)


def test_json_object_mode_gives_an_object(client, server):
    response = client.chat.completions.create(
        model="holo-tiny", messages=[{"role": "user", "content": "JSON please"}], max_tokens=24, temperature=0,
        response_format={"type": "json_object"})
    vllm_form = server.post("/v1/completions", {"prompt": "x", "max_tokens": 24, "temperature": 0,
                                                "structured_outputs": {"json_object": True}}).json()
    for content, finish in ((response.choices[0].message.content, response.choices[0].finish_reason),
                            (vllm_form["choices"][0]["text"], vllm_form["choices"][0]["finish_reason"])):
        assert content.startswith("{")
        if finish == "stop":  # an unbounded object may also run out of tokens
            assert isinstance(json.loads(content), dict)


def test_too_few_tokens_close_the_answer_early_and_end_with_length(client):
    def ask(max_tokens: int):
        return client.chat.completions.create(
            model="holo-tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=max_tokens, temperature=0,
            response_format=response_format(FORM))

    free = ask(200)  # the greedy answer, when it has room
    assert free.choices[0].finish_reason == "stop" and free.usage.completion_tokens > 60
    cut = ask(60)  # the shortest answer takes 49 tokens: the greedy answer again, closed within 60
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens <= 60
    assert assert_valid(cut.choices[0].message.content, FORM) != json.loads(free.choices[0].message.content)


def test_navigation_steps_parse_into_the_action_models(client):
    # Bounded strings and coordinates: random weights never stop writing a free string (or number).
    schema = bounded_schema(NavigationStep.model_json_schema(), max_chars=16, max_coordinate=1400)
    for seed in range(3):
        response = client.chat.completions.create(
            model="holo-tiny", messages=[{"role": "user", "content": "Book a flight."}], max_tokens=200,
            temperature=1.0, seed=seed, response_format=response_format(schema))
        assert response.choices[0].finish_reason == "stop"
        assert_valid(response.choices[0].message.content, NavigationStep.model_json_schema())
        NavigationStep.model_validate_json(response.choices[0].message.content)


CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("payload, status, param", [
    ({"response_format": response_format({"type": "shape"})}, 400, "response_format"),
    ({"response_format": response_format({"type": "string", "pattern": "(?<=a)b"})}, 400, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, 400, "response_format.json_schema"),
    ({"response_format": {"type": "xml"}}, 422, "response_format.type"),
    ({"guided_json": "{not json"}, 400, "guided_json"),
    ({"guided_json": POINT, "response_format": {"type": "json_object"}}, 400, "guided_json"),
    ({"structured_outputs": {"regex": "[a-z]+"}}, 422, "structured_outputs.regex"),
    ({"guided_json": POINT, "ignore_eos": True}, 400, "ignore_eos"),
    ({"guided_json": POINT, "min_tokens": 3}, 400, "min_tokens"),
])
def test_unusable_schemas_get_the_openai_envelope(server, payload, status, param):
    response = server.post(CHAT, {"messages": HI, "max_tokens": 8, **payload})
    assert response.status_code == status, response.text
    assert error_of(response)["param"] == param
