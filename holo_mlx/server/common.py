"""What the routes share: validation into SamplingParams, prompt building, SSE, token strings."""

import asyncio
import json
import logging
from collections.abc import AsyncIterable, Callable

from fastapi import Request
from pydantic import BaseModel

from ..constrain import Grammar, SchemaError
from ..engine.sampling import SamplingParams
from ..engine.stream import GenerationChunk
from ..prompt import Prompt
from ..tokens import token_bytes
from .content import ImagePolicy, to_parts
from .errors import APIError, envelope
from .protocol import HoloInfo, ImageResize, ImageSize, SamplingFields, TopLogprob

log = logging.getLogger("holo_mlx.server")
DISCONNECT_POLL_TOKENS = 8  # non-streaming requests check for a gone client every few tokens


def ready_engine(request: Request, model: str | None):
    """The engine, once it can take work and the request names the served model (or none)."""
    state = request.app.state
    state.engine.require_ready()
    if model is not None and model != state.served_model_name:
        raise APIError(404, f"model {model!r} is not served here; this server serves {state.served_model_name!r}",
                       param="model", code="model_not_found")
    return state.engine


def reject_lone_surrogates(value, param: str = "") -> None:
    """400 for text that cannot be UTF-8 (JSON's "\\ud800" escapes decode to lone surrogates): the
    tokenizer, the template and the response encoder would all fail on it."""
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise APIError(400, f"{param or 'body'} contains a lone UTF-16 surrogate at character {error.start}; "
                           "send text as valid Unicode", param=param or None, code="invalid_text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            reject_lone_surrogates(key, param)
            reject_lone_surrogates(item, f"{param}.{key}" if param else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            reject_lone_surrogates(item, f"{param}.{index}")


def split_inputs(value) -> list:
    """One entry per input: a string, a token-id list or a content-part list."""
    if isinstance(value, str) or (value and all(isinstance(item, int) for item in value)):
        return [value]
    if value and not isinstance(value[0], (str, list)):  # a single list of content parts
        return [value]
    return list(value)


async def input_prompts(engine, value, policy: ImagePolicy, param: str) -> list[Prompt]:
    """Prompts for raw inputs (no chat template): text as is, token ids as given, content parts in order."""
    inputs = split_inputs(value)
    if not inputs or any(len(item) == 0 for item in inputs):
        raise APIError(400, f"{param} must not be empty", param=param)
    single = len(inputs) == 1 and inputs[0] is value  # the field is one input, not a list of them
    vocab, image_token = engine.model.config.text_config.vocab_size, engine.model.config.image_token_id
    prompts = []
    for index, item in enumerate(inputs):
        where = param if single else f"{param}.{index}"
        if isinstance(item, str):
            prompts.append(await build_prompt(lambda text=item: engine.prompts.build_text(text), where))
        elif isinstance(item[0], int):
            if any(not 0 <= token < vocab for token in item):
                raise APIError(400, f"token ids must be in [0, {vocab})", param=where)
            if image_token in item:
                raise APIError(400, f"token id {image_token} (<|image_pad|>) stands for image features: send the "
                               "image as a content part instead", param=where)
            prompts.append(Prompt(input_ids=list(item), images=[]))
        else:
            prompts.append(await build_prompt(
                lambda item=item, where=where: engine.prompts.build_parts(to_parts(item, policy, where,
                                                                                   engine.prompts.process_image)),
                where))
        if not prompts[-1].input_ids:  # e.g. only empty text parts: nothing to pool or to continue
            raise APIError(400, f"{where} has no tokens", param=where)
    return prompts


async def build_prompt(build: Callable[[], Prompt], param: str) -> Prompt:
    """Run prompt building (image fetching, decoding, resizing) off the event loop; bad input -> 400.
    Image errors are raised per content part (content.to_part), with the part's own param."""
    try:
        return await asyncio.to_thread(build)
    except ValueError as error:
        raise APIError(400, str(error), param=param) from None


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


async def requested_grammar(engine, body: SamplingFields) -> Grammar | None:
    """The compiled grammar of the request's schema (off the event loop: the first one builds the
    tokenizer's token trie); 400 for a schema the grammar engine cannot use."""
    asked = requested_schema(body)
    if asked is None:
        return None
    param, schema = asked
    try:
        return await asyncio.to_thread(engine.grammars.json_schema, schema)
    except SchemaError as error:
        raise APIError(400, f"invalid JSON schema: {error}", param=param, code="invalid_json_schema") from None


def sampling_params(body: SamplingFields, *, max_tokens: int | None, prompt_tokens: int, context: int,
                    logprobs: int | None, prompt_param: str, default_max_tokens: int,
                    grammar: Grammar | None = None) -> SamplingParams:
    """Validated sampling settings for one sequence; with a grammar, its own constraint. Without
    max_tokens a request gets the server's default, capped by what is left of the context."""
    if (body.model_extra or {}).get("tools"):
        raise APIError(400, "tools (function calling) are not supported by this server", param="tools")
    if grammar is not None and (body.ignore_eos or body.min_tokens):
        # The grammar decides where the answer ends; holding back the end would break the JSON.
        raise APIError(400, "ignore_eos and min_tokens cannot be combined with a response schema",
                       param="ignore_eos" if body.ignore_eos else "min_tokens")
    if body.n != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    if prompt_tokens == 0:
        raise APIError(400, "the prompt is empty", param=prompt_param)
    if prompt_tokens >= context:
        raise APIError(400, f"the prompt has {prompt_tokens} tokens; this model's context is {context} tokens",
                       param=prompt_param, code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = min(default_max_tokens, context - prompt_tokens)
    elif max_tokens <= 0:
        raise APIError(400, f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
    elif prompt_tokens + max_tokens > context:
        raise APIError(400, f"this model's context is {context} tokens; you asked for {prompt_tokens + max_tokens} "
                       f"({prompt_tokens} in the prompt, {max_tokens} to generate)", param="max_tokens",
                       code="context_length_exceeded")
    temperature = 1.0 if body.temperature is None else body.temperature
    if not 0 <= temperature <= 2:
        raise APIError(400, f"temperature must be in [0, 2], got {temperature}", param="temperature")
    top_p = 1.0 if body.top_p is None else body.top_p
    if not 0 < top_p <= 1:
        raise APIError(400, f"top_p must be in (0, 1], got {top_p}", param="top_p")
    top_k = body.top_k or 0
    if top_k < -1:
        raise APIError(400, f"top_k must be -1 (off), 0 (off) or positive, got {top_k}", param="top_k")
    if body.min_tokens < 0 or body.min_tokens > max_tokens:
        raise APIError(400, f"min_tokens must be in [0, max_tokens={max_tokens}], got {body.min_tokens}",
                       param="min_tokens")
    seed = None if body.seed == -1 else body.seed  # -1: clients' usual "random"
    if seed is not None and not 0 <= seed < 2**64:
        raise APIError(400, f"seed must be in [0, 2^64) or -1 (random), got {seed}", param="seed")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(not s for s in stop):
        raise APIError(400, "stop strings must not be empty", param="stop")
    return SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=max(top_k, 0), seed=seed,
        stop=stop, logprobs=logprobs, min_tokens=body.min_tokens, ignore_eos=body.ignore_eos,
        constraint=grammar.constraint() if grammar is not None else None,
    )


def check_top_logprobs(value: int | None, param: str) -> None:
    if value is not None and not 0 <= value <= 20:
        raise APIError(400, f"{param} must be between 0 and 20, got {value}", param=param)


def holo_info(prompt: Prompt) -> HoloInfo | None:
    if not prompt.images:
        return None
    return HoloInfo(images=[
        ImageResize(original=ImageSize(width=image.original_size[0], height=image.original_size[1]),
                    resized=ImageSize(width=image.resized_size[0], height=image.resized_size[1]))
        for image in prompt.images
    ])


async def collect(request: Request, generation: AsyncIterable[GenerationChunk]) -> list[GenerationChunk]:
    """All chunks of a non-streaming generation; stops early (freeing the slot) if the client left."""
    collected, chunks = [], aiter(generation)
    async for chunk in chunks:
        collected.append(chunk)
        if len(collected) % DISCONNECT_POLL_TOKENS == 0 and await request.is_disconnected():
            await chunks.aclose()
            break
    return collected


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def ending_with_error_event(events: AsyncIterable[str]) -> AsyncIterable[str]:
    """SSE events; a failure after the 200 was sent ends the stream with an error event and [DONE]
    (as vLLM does) instead of a cut connection."""
    try:
        async for event in events:
            yield event
    except APIError as error:
        yield sse(envelope(error.status, error.message, error.param, error.code))
        yield SSE_DONE
    except Exception as error:
        log.exception("stream failed")
        yield sse(envelope(500, f"internal error: {type(error).__name__}"))
        yield SSE_DONE


class TokenStrings:
    """Per-token text and raw bytes for OpenAI logprobs."""

    def __init__(self, tokenizer):
        self.table = token_bytes(tokenizer)

    def text(self, token: int) -> str:
        return self.table.text(token)

    def top(self, token: int, logprob: float) -> TopLogprob:
        return TopLogprob(token=self.text(token), logprob=logprob, bytes=list(self.table.bytes_of(token)))
