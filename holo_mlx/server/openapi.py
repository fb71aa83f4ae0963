"""What each route declares in /openapi.json: its real 200 body and the OpenAI error envelope.

Documentation only (FastAPI's `responses=`): routes return `dump(...)` dicts, which keep OpenAI's
explicit nulls and drop an unset `holo`; a `response_model` would re-serialize them.
"""

from typing import Any

from pydantic import BaseModel

from .protocol import ErrorResponse

# Every /v1 POST route: bad input, API key, unknown model, body too large, schema validation,
# queue full, model not ready. The host check (400) and the API key (401) guard the GET routes too.
API_ERRORS = (400, 401, 404, 413, 422, 429, 503)


def responses(model: type[BaseModel], *errors: int, stream: type[BaseModel] | None = None,
              error: type[BaseModel] = ErrorResponse) -> dict:
    """`responses=` for a route answering `model` with 200 (and, with `stream`, SSE events carrying
    `stream` chunks as JSON, then `[DONE]`) and the error envelope (`error`: OpenAI's unless another
    API's) for each of `errors`.

    Declaring 422 replaces FastAPI's HTTPValidationError, which errors.py never sends.
    """
    declared: dict[int, dict[str, Any]] = {status: {"model": error} for status in errors}
    declared[200] = {"model": model}
    if stream is not None:
        # `schema` of an event stream describes one event in OpenAPI 3.1 (`itemSchema` is 3.2's).
        declared[200]["content"] = {"text/event-stream": {"schema": sse_event(stream, error)}}
    return declared


def text_responses(*errors: int) -> dict:
    """`responses=` for a plain-text route (`response_class=PlainTextResponse`): its errors are still
    JSON envelopes, which a `model=` entry would declare as text/plain like the route."""
    return {status: {"content": {"application/json": {"schema": inline_schema(ErrorResponse)}}} for status in errors}


def sse_event(chunk: type[BaseModel], error: type[BaseModel] = ErrorResponse) -> dict:
    """One server-sent event of a stream: `data:` holding a chunk as JSON, the error envelope (a
    failure after the stream started), or the closing `[DONE]` (OpenAI's streams; Anthropic's end
    with their message_stop event)."""
    return {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [
        {"const": "[DONE]"},
        {"type": "string", "contentMediaType": "application/json",
         "contentSchema": {"anyOf": [inline_schema(chunk), inline_schema(error)]}},
    ]}}}


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's output schema with its definitions inlined: FastAPI registers only the models of
    `model=` entries in the document's components, so a `$ref` to the chunk models would dangle."""
    schema = model.model_json_schema(mode="serialization")
    definitions = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)
