"""The Responses API's `truncation: "auto"`: a conversation too long for the context loses its oldest
messages until its prompt and the answer's budget fit.

OpenAI drops "items from the beginning of the conversation". Here images go first, since a
screenshot costs a thousand tokens where a turn's text costs tens: the oldest message that holds an
image, then (none left) the oldest message. System messages (instructions), the latest image and the
last user turn with everything after it are never dropped; when nothing else is left, the request
fails as with `"disabled"` (400 context_length_exceeded). The answer's budget is max_output_tokens
when given (else the prompt alone must fit), as sampling_fields checks it."""

from collections.abc import Awaitable, Callable

from .errors import APIError
from .protocol import TruncationInfo


def image_count(message: dict) -> int:
    content = message.get("content")
    return sum(part.get("type") == "image_url" for part in content) if isinstance(content, list) else 0


def last_index(conversation: list[dict], test: Callable[[dict], object]) -> int:
    """Index of the last message that passes `test`; the conversation's length when none does."""
    return max((index for index, message in enumerate(conversation) if test(message)), default=len(conversation))


def droppable(conversation: list[dict]) -> int | None:
    """Index of the message to drop next: the oldest holding an image, else the oldest; None when
    only the system messages, the latest image (the screen a computer-use turn acts on) and the last
    user turn (with what follows it) are left."""
    kept_from = min(last_index(conversation, lambda message: message["role"] == "user"),
                    last_index(conversation, image_count))
    candidates = [index for index in range(kept_from) if conversation[index]["role"] not in ("system", "developer")]
    with_images = [index for index in candidates if image_count(conversation[index])]
    return (with_images or candidates or [None])[0]


async def fitted(conversation: list[dict], start: Callable[[list[dict]], Awaitable], truncate: bool):
    """(start(conversation) of the conversation that fits, that conversation, what was dropped:
    None when truncation is off). `start` raises APIError context_length_exceeded when it does not fit."""
    dropped = TruncationInfo() if truncate else None
    while True:
        try:
            return await start(conversation), conversation, dropped
        except APIError as error:
            index = droppable(conversation) if dropped is not None and error.code == "context_length_exceeded" \
                else None
            if index is None:
                raise
        dropped.dropped_messages += 1
        dropped.dropped_images += image_count(conversation[index])
        conversation = conversation[:index] + conversation[index + 1:]
