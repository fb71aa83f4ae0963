"""The JSON schema a request's answer must follow, from whichever field carried it, compiled to a grammar."""

import asyncio

from ..constrain import Grammar, Grammars, SchemaError
from .errors import APIError
from .protocol import SamplingFields

ANY_OBJECT = {"type": "object"}  # json_object mode


def requested_schema(body: SamplingFields) -> tuple[str, dict | str] | None:
    """(field, JSON schema) the answer must follow, from whichever field the client used; None for free text."""
    asked = []
    response_format = body.response_format
    if response_format is not None and response_format.type == "json_object":
        asked.append(("response_format", ANY_OBJECT))
    elif response_format is not None and response_format.type == "json_schema":
        if response_format.json_schema is None or response_format.json_schema.schema_ is None:
            raise APIError(400, "response_format of type json_schema needs json_schema.schema",
                           param="response_format.json_schema")
        asked.append(("response_format", response_format.json_schema.schema_))
    structured = body.structured_outputs
    if structured is not None and structured.json_ is not None:
        asked.append(("structured_outputs", structured.json_))
    elif structured is not None and structured.json_object:
        asked.append(("structured_outputs", ANY_OBJECT))
    if body.guided_json is not None:
        asked.append(("guided_json", body.guided_json))
    if len(asked) > 1:
        raise APIError(400, "give the schema once: response_format, structured_outputs or guided_json",
                       param=asked[1][0])
    return asked[0] if asked else None


async def requested_grammar(grammars: Grammars, body: SamplingFields) -> Grammar | None:
    """The compiled grammar of the request's schema (off the event loop: the first one builds the
    tokenizer's token trie); 400 for a schema the grammar engine cannot use."""
    asked = requested_schema(body)
    if asked is None:
        return None
    param, schema = asked
    try:
        return await asyncio.to_thread(grammars.json_schema, schema)
    except SchemaError as error:
        raise APIError(400, f"invalid JSON schema: {error}", param=param, code="invalid_json_schema") from None


def check_answer_fits(grammar: Grammar | None, max_tokens: int) -> None:
    """400 when even the grammar's shortest answer needs more than max_tokens tokens: every answer
    would be cut off, and an answer that fits is what the constraint guarantees."""
    shortest = None if grammar is None else grammar.shortest_answer_tokens()
    if shortest is not None and shortest > max_tokens:
        raise APIError(400, f"max_tokens is {max_tokens}, but the shortest answer the response schema allows "
                       f"takes {shortest} tokens", param="max_tokens")
