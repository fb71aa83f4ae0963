"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, translated onto the chat
path by server/anthropic_chat.py (errors in Anthropic's envelope: server/errors.py)."""

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..engine.stream import GenerationChunk

from . import computer
from .anthropic_chat import (Conversation, Tools, chat_request, computer_message, conversation_of, error_event,
                             live_events, message_of, navigation_of, navigation_request, sampling_fields,
                             screenshot_message, tools_of, whole_message_events)
from .anthropic_protocol import (AnthropicErrorResponse, CountTokensRequest, Message, MessagesRequest, StreamEvent,
                                 TokenCount)
from .chat import ChatRun, chat_prompt, start_chat
from .errors import APIError
from .inputs import reject_lone_surrogates
from .openapi import responses
from .protocol import ChatCompletionRequest
from .served import ready_model
from .streaming import collect, ending_with_error_event

router = APIRouter()
# Anthropic's statuses: bad input, API key, unknown model, body too large, queue full, model not ready. 422 is
# never sent (a schema violation is a 400 here): declared only so that FastAPI documents no HTTPValidationError.
ANTHROPIC_ERRORS = (400, 401, 404, 413, 422, 429, 529)
EVENT_STREAM = "text/event-stream"


@router.post("/v1/messages",
             responses=responses(Message, *ANTHROPIC_ERRORS, stream=StreamEvent, error=AnthropicErrorResponse))
async def create_message(body: MessagesRequest, request: Request):
    reject_lone_surrogates(body)
    conversation, tools = conversation_of(body), tools_of(body)
    model = request.app.state.config.model_name
    if tools.computer is not None:
        message = await computer_turn(body, request, conversation, tools, model)
        return StreamingResponse(whole_message_events(message), media_type=EVENT_STREAM) if body.stream \
            else message.model_dump()
    run = await started(chat_request(body, conversation.messages, tools.functions, **sampling_fields(body)),
                        conversation, request)
    if body.stream:
        return StreamingResponse(ending_with_error_event(live_events(run, model), error_event), media_type=EVENT_STREAM)
    return message_of(run, model, await whole(run, request)).model_dump()


async def started(chat: ChatCompletionRequest, conversation: Conversation, request: Request) -> ChatRun:
    """The chat request queued; an error it meets names the request's own field."""
    try:
        return await start_chat(chat, request)
    except APIError as error:
        raise conversation.renamed(error) from None


async def whole(run: ChatRun, request: Request) -> list[GenerationChunk]:
    """The answer's chunks; a client gone before the end frees the sequence."""
    try:
        return await collect(request, run.generations[0])
    finally:
        run.generations[0].cancel()


async def computer_turn(body: MessagesRequest, request: Request, conversation: Conversation, tools: Tools,
                        model: str) -> Message:
    """One computer-use turn: a screenshot action until there is a screenshot, then one step of the
    family's harness (greedy unless the request sets a temperature)."""
    if body.output_config and body.output_config.format:
        raise APIError(400, "a computer tool answers with its actions: leave output_config.format out",
                       param="output_config.format")
    served = ready_model(request, body.model)
    if not computer.screenshots(conversation.messages):
        return screenshot_message(tools.computer, model)
    family = served.engine.model.family
    navigation = navigation_of(conversation, family)
    sampling = {**sampling_fields(body), "stream": False, "stop": None,
                "temperature": 0.0 if body.temperature is None else body.temperature}
    run = await started(navigation_request(body, navigation, family, **sampling), navigation, request)
    return computer_message(run, tools, model, await whole(run, request))


@router.post("/v1/messages/count_tokens",
             responses=responses(TokenCount, *ANTHROPIC_ERRORS, error=AnthropicErrorResponse))
async def count_tokens(body: CountTokensRequest, request: Request):
    """The prompt's tokens, as /v1/messages would build it (a computer turn: its harness's prompt; none
    before the first screenshot, when the model does not run)."""
    reject_lone_surrogates(body)
    served = ready_model(request, body.model)
    conversation, tools = conversation_of(body), tools_of(body)
    if tools.computer is None:
        chat = chat_request(body, conversation.messages, tools.functions)
    elif not computer.screenshots(conversation.messages):
        return TokenCount(input_tokens=0).model_dump()
    else:
        family = served.engine.model.family
        conversation = navigation_of(conversation, family)
        chat = navigation_request(body, conversation, family)
    try:
        prompt, _, _ = await chat_prompt(chat, request, served)
    except APIError as error:
        raise conversation.renamed(error) from None
    return TokenCount(input_tokens=len(prompt.input_ids)).model_dump()
