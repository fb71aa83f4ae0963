"""Every answer of the OpenAI-compatible API, valid against OpenAI's own published OpenAPI document
(../shared/reference/openai-openapi.json): bodies, stream chunks and Responses events of a broad set
of requests to a live server, and errors; random weights."""

import json
from collections import defaultdict
from functools import cache

import httpx
import jsonschema
import pytest
import referencing
import referencing.jsonschema

from holo_mlx.testing import REPOSITORY
from test_responses import data_url

OPENAPI_PATH = REPOSITORY.parent / "shared" / "reference" / "openai-openapi.json"
KEY = "sekret"
POINT = {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                          "y": {"type": "integer", "minimum": 0, "maximum": 9}},
         "required": ["x", "y"], "additionalProperties": False}
CHAT_TOOL = {"type": "function", "function": {"name": "click", "description": "Click a point", "parameters": POINT}}
RESPONSES_TOOL = {"type": "function", "name": "click", "description": "Click a point", "parameters": POINT}


@cache
def openai_document() -> dict:
    if not OPENAPI_PATH.exists():
        raise RuntimeError(f"{OPENAPI_PATH} is missing: the conformance tests read OpenAI's OpenAPI document from the "
                           "shared reference folder beside the repository")
    return json.loads(OPENAPI_PATH.read_text())


def nullable_optionals(node) -> None:
    """OpenAI's own answers send null for optional fields they have nothing for (a message's
    `tool_calls`, a chunk's `usage`, a choice's `logprobs`...) while the document types many of them
    non-null: every property an object schema does not require may also be null. Required properties
    keep their exact types, but for OpenAPI 3.0's `nullable: true`, which this 3.1 document still
    writes in places and JSON Schema does not read. Nothing else is loosened."""
    if isinstance(node, list):
        for item in node:
            nullable_optionals(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("nullable") is True:
        schema = {key: value for key, value in node.items() if key != "nullable"}
        node.clear()
        node["anyOf"] = [schema, {"type": "null"}]
        nullable_optionals(schema)
        return
    properties = node.get("properties")
    if isinstance(properties, dict) and all(isinstance(value, dict) for value in properties.values()):
        required = set(node.get("required", ()))
        for name, schema in properties.items():
            nullable_optionals(schema)
            if name not in required:
                properties[name] = {"anyOf": [schema, {"type": "null"}]}
    for key, value in node.items():
        if key != "properties":
            nullable_optionals(value)


# Where OpenAI's own answers stray from its document, by pointer into it: what they send there too.
OPENAI_ALSO_SENDS = {
    # a stream's chunks before its last: no finish_reason yet
    "/components/schemas/CreateChatCompletionStreamResponse/properties/choices/items/properties/finish_reason":
        {"type": "null"},
    "/components/schemas/CreateCompletionResponse/properties/choices/items/properties/finish_reason": {"type": "null"},
    # encoding_format "base64": the vector as base64 text
    "/components/schemas/Embedding/properties/embedding": {"type": "string"},
}


@cache
def registry() -> referencing.Registry:
    document = json.loads(json.dumps(openai_document()))  # a copy: the walk rewrites it
    for pointer, also in OPENAI_ALSO_SENDS.items():
        *path, name = pointer.strip("/").split("/")
        parent = document
        for part in path:
            parent = parent[part]
        parent[name] = {"anyOf": [parent[name], also]}
    nullable_optionals(document["components"])
    resource = referencing.Resource.from_contents(document, default_specification=referencing.jsonschema.DRAFT202012)
    return referencing.Registry().with_resource("openai", resource)


@cache
def validator(component: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"openai#/components/schemas/{component}"}, registry=registry())


@cache
def event_components() -> dict[str, str]:
    """Each Responses stream event type -> the component that describes it (ResponseStreamEvent's variants)."""
    schemas = openai_document()["components"]["schemas"]
    variants = {}
    for variant in schemas["ResponseStreamEvent"]["anyOf"]:
        name = variant["$ref"].rsplit("/", 1)[1]
        for kind in schemas[name]["properties"]["type"]["enum"]:
            variants[kind] = name
    return variants


def telling(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """An anyOf / oneOf that no variant satisfied, as the errors of the variant the answer meant
    (the one whose type or `type` field it matches, with the fewest errors)."""
    if not error.context:
        return [error]
    variants = defaultdict(list)
    for inner in error.context:
        variants[inner.relative_schema_path[0]].append(inner)
    meant = [errors for errors in variants.values() if not any(
        inner.validator in ("type", "enum", "const") and list(inner.relative_path) in ([], ["type"]) for inner in errors)]
    return [deeper for inner in min(meant or variants.values(), key=len) for deeper in telling(inner)]


def check(component: str, body) -> None:
    errors = [inner for error in validator(component).iter_errors(body) for inner in telling(error)]
    assert not errors, f"{component}: " + "; ".join(
        f"{'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message[:200]}" for error in errors[:5])


def check_event(event: dict) -> None:
    assert event["type"] in event_components(), f"not an event type of OpenAI's: {event['type']}"
    check(event_components()[event["type"]], event)


@pytest.fixture(scope="module")
def server(shared_server, hf_root_checkpoint):
    """The tiny checkpoint behind an API key, so that the 401 is OpenAI's too."""
    return shared_server("--model", str(hf_root_checkpoint), "--served-model-name", "holo-tiny", "--api-key", KEY)


def call(server, method: str, path: str, payload=None, *, key: str | None = KEY, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{server.url}{path}", json=payload, headers=headers, timeout=120, **kwargs)


def posted(server, path: str, payload: dict) -> dict:
    response = call(server, "POST", path, payload)
    assert response.status_code == 200, response.text
    return response.json()


def streamed(server, path: str, payload: dict) -> list[dict]:
    """The JSON events of a streamed answer, [DONE] left out."""
    events = []
    with httpx.stream("POST", f"{server.url}{path}", json={**payload, "stream": True}, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: "):]))
    assert events
    return events


IMAGE = data_url(64, 48)
USER = [{"role": "user", "content": "Where is the button?"}]
CHAT_CASES = {
    "plain": {"messages": USER},
    "image": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}},
                                                        {"type": "text", "text": "Where?"}]}]},
    "logprobs": {"messages": USER, "logprobs": True, "top_logprobs": 2},
    "n2": {"messages": USER, "n": 2, "seed": 1},
    "tools_auto": {"messages": USER, "tools": [CHAT_TOOL], "tool_choice": "auto"},
    "tools_required": {"messages": USER, "tools": [CHAT_TOOL], "tool_choice": "required", "max_tokens": 60},
    "tools_named": {"messages": USER, "tools": [CHAT_TOOL], "max_tokens": 60,
                    "tool_choice": {"type": "function", "function": {"name": "click"}}},
    "json_schema": {"messages": USER, "max_tokens": 40,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "point", "schema": POINT}}},
}


@pytest.mark.parametrize("case", CHAT_CASES)
def test_chat_completions_answer_as_openai_documents(server, case):
    payload = {"model": "holo-tiny", "max_tokens": 8, **CHAT_CASES[case]}
    check("CreateChatCompletionResponse", posted(server, "/v1/chat/completions", payload))
    chunks = streamed(server, "/v1/chat/completions", {**payload, "stream_options": {"include_usage": True}})
    for chunk in chunks:
        check("CreateChatCompletionStreamResponse", chunk)
    assert chunks[-1]["usage"] is not None


COMPLETION_CASES = {
    "plain": {"prompt": "Hello"},
    "echo": {"prompt": ["Hello", "Bye"], "echo": True},
    "logprobs": {"prompt": "Hello", "logprobs": 2, "n": 2},
}


@pytest.mark.parametrize("case", COMPLETION_CASES)
def test_completions_answer_as_openai_documents(server, case):
    payload = {"model": "holo-tiny", "max_tokens": 5, **COMPLETION_CASES[case]}
    check("CreateCompletionResponse", posted(server, "/v1/completions", payload))
    # OpenAI documents no chunk of its own for completions: each is a CreateCompletionResponse.
    for chunk in streamed(server, "/v1/completions", {**payload, "stream_options": {"include_usage": True}}):
        check("CreateCompletionResponse", chunk)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_embeddings_answer_as_openai_documents(server, encoding_format):
    check("CreateEmbeddingResponse", posted(server, "/v1/embeddings", {
        "model": "holo-tiny", "input": ["Hello", "Bye"], "encoding_format": encoding_format}))


def test_models_answer_as_openai_documents(server):
    listing = call(server, "GET", "/v1/models")
    check("ListModelsResponse", listing.json())
    check("Model", call(server, "GET", f"/v1/models/{listing.json()['data'][0]['id']}").json())


RESPONSES_CASES = {
    "plain": {"input": "Hello", "instructions": "Be brief.", "metadata": {"run": "1"}},
    "tools": {"input": "Click it", "tools": [RESPONSES_TOOL], "tool_choice": "required", "max_output_tokens": 60},
    "image": {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": IMAGE},
                                                     {"type": "input_text", "text": "Where?"}]}]},
    "json_schema": {"input": "Where?", "max_output_tokens": 40,
                    "text": {"format": {"type": "json_schema", "name": "point", "schema": POINT}}},
    "logprobs": {"input": "Hello", "include": ["message.output_text.logprobs"], "top_logprobs": 2},
    "computer": {"input": "Open the settings", "tools": [{"type": "computer_use_preview", "display_width": 1280,
                                                          "display_height": 800, "environment": "browser"}]},
}


@pytest.mark.parametrize("case", RESPONSES_CASES)
def test_responses_answer_as_openai_documents(server, case):
    payload = {"model": "holo-tiny", "max_output_tokens": 8, **RESPONSES_CASES[case]}
    body = posted(server, "/v1/responses", payload)
    check("Response", body)
    check("Response", call(server, "GET", f"/v1/responses/{body['id']}").json())
    events = streamed(server, "/v1/responses", payload)
    for event in events:
        check_event(event)
    assert events[-1]["type"] in ("response.completed", "response.incomplete")


def test_a_thinking_model_answers_as_openai_documents(holo2_server):
    """Holo2 opens its reasoning: reasoning items and their events, reasoning_content in chat."""
    chat = {"messages": USER, "max_tokens": 8}
    check("CreateChatCompletionResponse", posted(holo2_server, "/v1/chat/completions", chat))
    for chunk in streamed(holo2_server, "/v1/chat/completions", chat):
        check("CreateChatCompletionStreamResponse", chunk)
    response = {"input": "Hello", "max_output_tokens": 8}
    body = posted(holo2_server, "/v1/responses", response)
    check("Response", body)
    assert body["output"][0]["type"] == "reasoning"
    events = streamed(holo2_server, "/v1/responses", response)
    for event in events:
        check_event(event)
    assert "response.reasoning_text.delta" in {event["type"] for event in events}


ERROR_CASES = {
    400: ("POST", "/v1/chat/completions", {"model": "holo-tiny", "messages": USER, "temperature": 5}, KEY),
    401: ("GET", "/v1/models", None, None),
    404: ("GET", "/v1/responses/resp-missing", None, KEY),
    422: ("POST", "/v1/chat/completions", {"model": "holo-tiny"}, KEY),
}


@pytest.mark.parametrize("status", ERROR_CASES)
def test_errors_answer_as_openai_documents(server, status):
    method, path, payload, key = ERROR_CASES[status]
    response = call(server, method, path, payload, key=key)
    assert response.status_code == status
    check("ErrorResponse", response.json())


# --- every request field's fate: the tables of docs/API.md, "OpenAI request fields" --------------------

FATES = ("implemented", "hint", "refused")
ENDPOINTS = {  # the document's request component -> the route and a minimal request to it
    "CreateChatCompletionRequest": ("/v1/chat/completions", {"model": "holo-tiny", "messages": USER, "max_tokens": 1}),
    "CreateCompletionRequest": ("/v1/completions", {"model": "holo-tiny", "prompt": "Hello", "max_tokens": 1}),
    "CreateResponse": ("/v1/responses", {"model": "holo-tiny", "input": "Hello", "max_output_tokens": 1,
                                         "store": False}),
}


def request_fields(component: str) -> set[str]:
    """The top-level fields of a request component, through its allOf parts."""
    schemas = openai_document()["components"]["schemas"]

    def fields(schema: dict) -> set[str]:
        if "$ref" in schema:
            return fields(schemas[schema["$ref"].rsplit("/", 1)[1]])
        return set(schema.get("properties", ())).union(*(fields(part) for part in schema.get("allOf", ())))

    return fields(schemas[component])


def fate_table(component: str) -> dict[str, tuple[str, object]]:
    """field -> (fate, example value) from the table docs/API.md marks with the component's name."""
    lines = (REPOSITORY / "docs" / "API.md").read_text().splitlines()
    start = lines.index(f"<!-- openai-fields: {component} -->") + 3  # past the header and its rule
    table = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        field, fate, example = (cell.strip().strip("`") for cell in line.strip("|").split("|")[:3])
        assert fate in FATES, f"{component}.{field}: fate {fate!r}"
        assert (fate == "implemented") == (example == ""), f"{component}.{field}: a hint or refusal needs an example"
        table[field] = (fate, json.loads(example) if example else None)
    return table


@pytest.mark.parametrize("component", ENDPOINTS)
def test_every_request_field_of_openai_has_a_fate(component):
    table = fate_table(component)
    assert not request_fields(component) - set(table), "OpenAI fields without a fate in docs/API.md"
    assert not set(table) - request_fields(component), "rows for fields OpenAI's document does not have"


def fates(wanted: str) -> list[tuple[str, str, object]]:
    return [(component, field, example) for component in ENDPOINTS
            for field, (fate, example) in fate_table(component).items() if fate == wanted]


@pytest.mark.parametrize("component, field, example", fates("hint"))
def test_a_hint_is_accepted(server, component, field, example):
    path, minimal = ENDPOINTS[component]
    response = call(server, "POST", path, {**minimal, field: example})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("component, field, example", fates("refused"))
def test_a_refused_field_is_a_400_naming_it(server, component, field, example):
    path, minimal = ENDPOINTS[component]
    response = call(server, "POST", path, {**minimal, field: example})
    assert response.status_code == 400, response.text
    check("ErrorResponse", response.json())
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"] and error["code"] == "unsupported_parameter"


# --- the OpenAI fields implemented with their fates ----------------------------------------------------

LEGACY = {"model": "holo-tiny", "messages": USER, "max_tokens": 60, "functions": [CHAT_TOOL["function"]],
          "function_call": {"name": "click"}}


def test_legacy_functions_are_answered_as_a_function_call(server):
    body = posted(server, "/v1/chat/completions", LEGACY)
    check("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "function_call" and choice["message"].get("tool_calls") is None
    assert choice["message"]["function_call"]["name"] == "click"
    jsonschema.validate(json.loads(choice["message"]["function_call"]["arguments"]), POINT)
    chunks = streamed(server, "/v1/chat/completions", LEGACY)
    calls = [chunk["choices"][0]["delta"]["function_call"] for chunk in chunks
             if chunk["choices"][0]["delta"].get("function_call")]
    assert len(calls) == 1 and calls[0]["name"] == "click"
    assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"
    both = call(server, "POST", "/v1/chat/completions", {**LEGACY, "tools": [CHAT_TOOL]})
    assert both.status_code == 422 and both.json()["error"]["param"] == "functions"


def mean_logprob(choice: dict) -> float:
    return sum(choice["logprobs"]["token_logprobs"]) / len(choice["logprobs"]["token_logprobs"])


def test_best_of_returns_the_choice_with_the_highest_logprob_per_token(server):
    payload = {"model": "holo-tiny", "prompt": "Hello", "max_tokens": 6, "seed": 7, "logprobs": 0}
    # Choice i of a seeded request is the request alone with seed + i: best_of draws these three.
    drawn = posted(server, "/v1/completions", {**payload, "n": 3})["choices"]
    body = posted(server, "/v1/completions", {**payload, "best_of": 3})
    check("CreateCompletionResponse", body)
    assert [choice["text"] for choice in body["choices"]] == [max(drawn, key=mean_logprob)["text"]]
    assert body["usage"]["completion_tokens"] == sum(len(choice["logprobs"]["tokens"]) for choice in drawn)
    for wrong in ({"best_of": 1, "n": 2}, {"best_of": 2, "stream": True}):
        response = call(server, "POST", "/v1/completions", {**payload, **wrong})
        assert response.status_code == 400 and response.json()["error"]["param"] == "best_of"


def test_responses_include_the_answer_logprobs(server):
    payload = {"model": "holo-tiny", "input": "Hello", "max_output_tokens": 6, "temperature": 0,
               "include": ["message.output_text.logprobs"], "top_logprobs": 2}
    body = posted(server, "/v1/responses", payload)
    part = body["output"][0]["content"][0]
    assert len(part["logprobs"]) == body["usage"]["output_tokens"]
    assert all(len(entry["top_logprobs"]) == 2 for entry in part["logprobs"])
    assert b"".join(bytes(entry["bytes"]) for entry in part["logprobs"]).decode() == part["text"]
    deltas = [entry for event in streamed(server, "/v1/responses", payload)
              if event["type"] == "response.output_text.delta" for entry in event["logprobs"]]
    # Greedy: the same tokens, each sent with its delta (the logprobs equal to float error: another batch).
    assert [entry["token"] for entry in deltas] == [entry["token"] for entry in part["logprobs"]]
    assert [entry["logprob"] for entry in deltas] == pytest.approx([entry["logprob"] for entry in part["logprobs"]],
                                                                    abs=1e-3)
    without = posted(server, "/v1/responses", {**payload, "include": None, "top_logprobs": None})
    assert without["output"][0]["content"][0]["logprobs"] == []


def test_max_tool_calls_caps_the_calls_of_the_answer(server):
    # Greedy on these weights, this request gets three calls: the cap below has calls to cut.
    undescribed = {key: value for key, value in RESPONSES_TOOL.items() if key != "description"}
    payload = {"model": "holo-tiny", "input": "Go", "tools": [undescribed], "max_output_tokens": 200,
               "tool_choice": "required", "temperature": 0}

    def calls(body: dict) -> list[tuple[str, str]]:
        assert all(item["type"] == "function_call" for item in body["output"])
        return [(item["name"], item["arguments"]) for item in body["output"]]

    free = calls(posted(server, "/v1/responses", payload))
    assert len(free) == 3
    # Streamed, the same three calls and nothing else: the whitespace between calls opens no message.
    done = streamed(server, "/v1/responses", payload)[-1]["response"]
    assert [(item["type"], item.get("arguments")) for item in done["output"]] == \
        [("function_call", arguments) for _, arguments in free]
    # The same greedy answer (the grammar allows as many calls), cut after two.
    assert calls(posted(server, "/v1/responses", {**payload, "max_tool_calls": 2})) == free[:2]
    events = streamed(server, "/v1/responses", {**payload, "max_tool_calls": 2})
    assert [event["item"]["arguments"] for event in events if event["type"] == "response.output_item.done"
            and event["item"]["type"] == "function_call"] == [arguments for _, arguments in free[:2]]
    one = posted(server, "/v1/responses", {**payload, "max_tool_calls": 1})
    assert len(calls(one)) == 1 and one["max_tool_calls"] == 1
    none = posted(server, "/v1/responses", {**payload, "tool_choice": "auto", "max_tool_calls": 0,
                                            "max_output_tokens": 8})
    assert [item["type"] for item in none["output"]] == ["message"]
    refused = call(server, "POST", "/v1/responses", {**payload, "max_tool_calls": 0})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tool_calls"
