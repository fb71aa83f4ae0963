"""How generated chunks reach the client: collected whole, or as server-sent events."""

import json
import logging
from collections.abc import AsyncIterable, Callable

from fastapi import Request

from ..engine.stream import GenerationChunk
from .errors import APIError, as_api_error, envelope

log = logging.getLogger("holo_mlx.server")
DISCONNECT_POLL_TOKENS = 8  # non-streaming requests check for a gone client every few tokens


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


def openai_error_event(answer: APIError) -> str:
    return sse(envelope(answer.status, answer.message, answer.param, answer.code)) + SSE_DONE


async def ending_with_error_event(events: AsyncIterable[str],
                                  error_event: Callable[[APIError], str] = openai_error_event) -> AsyncIterable[str]:
    """SSE events; a failure after the 200 was sent ends the stream with an error event (OpenAI's
    envelope and [DONE], as vLLM does, unless `error_event` writes another) instead of a cut connection."""
    try:
        async for event in events:
            yield event
    except Exception as error:
        answer = as_api_error(error)
        if answer is None:
            log.exception("stream failed")
            answer = APIError(500, f"internal error: {type(error).__name__}")
        yield error_event(answer)
