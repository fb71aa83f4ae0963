"""Property-based fuzzing of the live server against its own /openapi.json (schemathesis).

Every operation gets generated requests, valid and invalid; each answer must be no server error,
carry a documented status and content type, and match the schema documented for that status.
"""

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from holo_mlx.testing import synthetic_screenshot
from test_server import Server, data_url

MAX_TOKENS = 4  # generation per request; the fuzzer would otherwise ask for up to the whole context
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# Fixed seed, no example database: CI replays the same requests on every run.
CONFIG = schemathesis.Config.from_dict({
    "seed": 20240601,
    "generation": {"max-examples": 50, "deterministic": True, "database": "none"},
    "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
})


@pytest.fixture(scope="module")
def live(hf_root_checkpoint):
    running = Server("--model", str(hf_root_checkpoint), "--served-model-name", "holo-tiny", "--enable-docs",
                     "--default-max-tokens", str(MAX_TOKENS))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api(live):
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", config=CONFIG)
    # Random data is never an image and seldom a request that gets through: these examples reach the
    # 200 answers, the streamed ones included, so their documented shapes are checked too.
    screenshot = data_url(synthetic_screenshot(320, 200))
    image_chat = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": screenshot}},
                                               {"type": "text", "text": "Where is Submit?"}]}]
    text_chat = [{"role": "user", "content": "Hi"}]
    # A tool conversation whose assistant turn said something, as parts, before its call.
    tool_chat = [{"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": [{"type": "text", "text": "Checking."}], "tool_calls": [
                     {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                 {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    tool_items = [{"role": "user", "content": "Hi"},
                  {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                  {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
                  {"type": "function_call_output", "call_id": "call_1", "output": "ok"}]
    usage = {"stream": True, "stream_options": {"include_usage": True}}
    examples(schema, "/v1/localize", {"image": screenshot, "target": "the Submit button"})
    examples(schema, "/v1/chat/completions", {"messages": image_chat, "logprobs": True, "top_logprobs": 2},
             {"messages": image_chat, **usage}, {"messages": text_chat, "logprobs": True, **usage},
             {"messages": tool_chat, "tools": [{"type": "function", "function": {"name": "f"}}]})
    examples(schema, "/v1/responses", {"input": tool_items, "tools": [{"type": "function", "name": "f"}]})
    examples(schema, "/v1/messages", {"model": "holo-tiny", "max_tokens": 4, "messages": text_chat, "stream": True},
             {"model": "holo-tiny", "max_tokens": 4, "messages": [{"role": "user", "content": [
                 {"type": "text", "text": "Hi"}]}], "tools": [{"name": "f", "input_schema": {"type": "object"}}]})
    examples(schema, "/v1/completions", {"prompt": "Hello", "logprobs": 2, **usage},
             {"prompt": [9707, 11], "echo": True})
    return schema


def examples(schema, path: str, *bodies: dict) -> None:
    content = schema.raw_schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    content["examples"] = {f"example-{index}": {"value": body} for index, body in enumerate(bodies)}


def bounded(case) -> None:
    """Cap how much one request may generate, whatever the fuzzer chose."""
    if isinstance(case.body, dict):
        for field in ("max_tokens", "max_completion_tokens"):
            if type(case.body.get(field)) is int and case.body[field] > MAX_TOKENS:
                case.body[field] = MAX_TOKENS


fuzzed = schemathesis.pytest.from_fixture("api")


@pytest.fixture(autouse=True)
def node_id_for_schemathesis(request):
    """schemathesis 4.32's fixture-loaded tests read `node._nodeid`, which pytest 9.2 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@fuzzed.parametrize()
@pytest.mark.slow
def test_every_operation_answers_as_documented(case, live):
    bounded(case)
    case.call_and_validate(base_url=live.url, checks=CHECKS, timeout=120)


def test_the_document_declares_every_body(live):
    """Real 200 bodies and the OpenAI envelope for errors (Anthropic's on its routes), not FastAPI's `{}` and
    HTTPValidationError."""
    document = httpx.get(f"{live.url}/openapi.json").json()
    schemathesis.openapi.from_dict(document).validate()  # a valid OpenAPI 3.1 document
    for path, item in document["paths"].items():
        for method, operation in item.items():
            anthropic = path.startswith("/v1/messages")  # Anthropic's envelope
            if method == "post":
                assert {"400", "422"} <= set(operation["responses"]), path
            for status, response in operation["responses"].items():
                for media_type, content in response["content"].items():
                    where, schema = f"{method.upper()} {path} {status} {media_type}", content["schema"]
                    if status == "200":
                        assert schema, where  # FastAPI's `{}` says nothing
                    else:
                        expected = "Health" if path in ("/health", "/v1/health") and status == "503" else \
                            "AnthropicErrorResponse" if anthropic else "ErrorResponse"
                        assert schema.get("$ref", "").endswith(f"/{expected}") or schema.get("title") == expected, where
    assert "HTTPValidationError" not in document["components"]["schemas"]
