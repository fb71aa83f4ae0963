"""POST /v1/chat/completions: validate, hand to the engine, shape the response."""

import json

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..coordinates import map_answer
from .content import to_messages
from .errors import APIError
from .inputs import build_prompt, holo_info, reject_lone_surrogates
from .openapi import API_ERRORS, responses
from .protocol import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
                       ChatCompletionRequest, ChatDelta, ChoiceLogprobs, PromptTokensDetails, TokenLogprobEntry, Usage, dump,
                       new_id)
from .sampling import check_top_logprobs, sampling_params
from .schemas import requested_grammar
from .served import ready_model
from .streaming import SSE_DONE, collect, ending_with_error_event, sse

router = APIRouter()


@router.post("/v1/chat/completions", responses=responses(ChatCompletion, *API_ERRORS, stream=ChatCompletionChunk))
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = request.app.state
    reject_lone_surrogates(body)
    served = ready_model(request, body.model)
    engine = served.engine
    check_top_logprobs(body.top_logprobs, "top_logprobs")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    grammar = await requested_grammar(served.grammars, body)
    # Image fetching and decoding run in the worker thread with the rest of prompt building.
    prompts = engine.prompts
    prompt = await build_prompt(lambda: prompts.build(to_messages(body.messages, state.image_policy,
                                                                  prompts.process_image)), "messages")
    params = sampling_params(
        body, max_tokens=body.max_tokens if body.max_completion_tokens is None else body.max_completion_tokens,
        prompt_tokens=len(prompt.input_ids), context=engine.max_model_len,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None, prompt_param="messages",
        default_max_tokens=state.config.default_max_tokens, grammar=grammar)
    map_coordinates = body.holo is not None and body.holo.map_coordinates
    if map_coordinates:
        check_coordinate_mapping(body, prompt, grammar)
    completion_id, model_name, holo = new_id("chatcmpl"), state.config.model_name, holo_info(prompt)
    strings = served.token_strings

    def logprobs_of(chunks) -> ChoiceLogprobs | None:
        if not body.logprobs:
            return None
        return ChoiceLogprobs(content=[
            TokenLogprobEntry(**strings.top(c.logprob.token, c.logprob.logprob).model_dump(),
                              top_logprobs=[strings.top(t, lp) for t, lp in c.logprob.top])
            for c in chunks])

    generation = served.generate(prompt, params)

    def usage(completion_tokens: int) -> Usage:
        return Usage(prompt_tokens=len(prompt.input_ids), completion_tokens=completion_tokens,
                     total_tokens=len(prompt.input_ids) + completion_tokens,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=generation.cached_tokens))

    if not body.stream:
        chunks = await collect(request, generation)
        content = "".join(chunk.text for chunk in chunks)
        if map_coordinates:
            content = in_original_pixels(content, prompt)
        message = AssistantMessage(content=content)
        choice = ChatChoice(message=message, logprobs=logprobs_of(chunks), finish_reason=chunks[-1].finish_reason)
        return dump(ChatCompletion(id=completion_id, model=model_name, choices=[choice],
                                   usage=usage(len(chunks)), holo=holo))

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events():
        def chunk_event(delta: ChatDelta, **choice) -> str:
            return sse(dump(ChatCompletionChunk(id=completion_id, model=model_name, holo=holo,
                                                choices=[ChatChunkChoice(delta=delta, **choice)])))

        yield chunk_event(ChatDelta(role="assistant", content=""))
        count = 0
        async for chunk in generation:
            count += 1
            yield chunk_event(ChatDelta(content=chunk.text), logprobs=logprobs_of([chunk]),
                              finish_reason=chunk.finish_reason)
        if include_usage:
            yield sse(dump(ChatCompletionChunk(id=completion_id, model=model_name, choices=[], usage=usage(count))))
        yield SSE_DONE

    return StreamingResponse(ending_with_error_event(events()), media_type="text/event-stream")


def check_coordinate_mapping(body: ChatCompletionRequest, prompt, grammar) -> None:
    """`holo.map_coordinates` rewrites a complete JSON answer about an image: say so when it cannot."""
    if not prompt.images:
        raise APIError(400, "map_coordinates needs an image in the messages", param="holo.map_coordinates")
    if grammar is None:
        raise APIError(400, "map_coordinates needs a JSON answer: set response_format", param="holo.map_coordinates")
    if body.stream:
        raise APIError(400, "map_coordinates needs the whole answer: it does not work with stream",
                       param="holo.map_coordinates")


def in_original_pixels(content: str, prompt) -> str:
    """The JSON answer with its positions moved from the last image as resized to that image as sent."""
    try:
        answer = json.loads(content)
    except json.JSONDecodeError:  # cut short by max_tokens or a stop string: left as it is
        return content
    image = prompt.images[-1]
    return json.dumps(map_answer(answer, image.resized_size, image.original_size), ensure_ascii=False)
