"""POST /v1/chat/completions: validate, hand to the engine, shape the response."""

import asyncio
import json
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..coordinates import CoordinateSpace, map_answer
from ..engine.stream import GenerationChunk
from ..prompt import Prompt
from ..reasoning import ThinkBlock
from ..tool_format import ParsedCall
from .content import ImagePolicy, ImageReader, to_messages
from .errors import APIError
from .inputs import build_prompt, holo_info, reject_lone_surrogates
from .openapi import API_ERRORS, responses
from .protocol import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
                       ChatCompletionRequest, ChatDelta, ChoiceLogprobs, CompletionTokensDetails, HoloInfo,
                       PromptTokensDetails, Usage, dump, new_id)
from .reasoning_fields import reasoning_controls
from .sampling_fields import check_top_logprobs, choice_params, sampling_params
from .schemas import requested_grammar
from .served import MeteredGeneration, Served, ready_model
from .streaming import SSE_DONE, collect, ending_with_error_event, sse
from .tool_use import ToolUse, as_deltas, as_tool_calls, tool_use

router = APIRouter()


@dataclass
class ChatRun:
    """A chat request checked, its prompt built and its generation queued (chat completions and the
    Responses API both answer from one)."""

    body: ChatCompletionRequest
    served: Served
    prompt: Prompt
    tools: ToolUse | None
    generations: list[MeteredGeneration]  # one per choice (n)
    mapping: str | None  # why the answer's coordinates are not mapped; None when they are or nobody asked
    map_coordinates: bool

    def answer(self, text: str) -> tuple[str, list[ParsedCall]]:
        """The answer's content (coordinates mapped when asked and possible) and its tool calls."""
        if self.map_coordinates and self.mapping is None:
            text, self.mapping = in_original_pixels(text, self.prompt, self.served.engine.model.family.coordinates)
        return self.tools.parse(text) if self.tools is not None else (text, [])

    def reasoning(self, chunks: list[GenerationChunk]) -> str | None:
        """The reasoning before the answer; None when the prompt opened none."""
        return "".join(chunk.reasoning or "" for chunk in chunks) if self.prompt.thinking else None

    def holo(self) -> HoloInfo | None:
        info = holo_info(self.prompt)
        if not self.map_coordinates:
            return info
        info = info or HoloInfo(images=[])
        info.map_coordinates = self.mapping or MAPPED
        return info

    def usage(self, completion_tokens: int, reasoning_tokens: int) -> Usage:
        prompt_tokens = len(self.prompt.input_ids)
        cached = max(generation.cached_tokens for generation in self.generations)  # of the one prompt
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
                     completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning_tokens))


def finish_reason_of(called: bool, ended: str) -> str:
    """Why a choice ended: "length" whenever max_tokens did, tool calls or not, as OpenAI reports it
    (a grammar that closed the answer early to fit the budget cut its strings and lists short, and a
    whole call at the budget might have been followed by more); else "tool_calls" for calls."""
    return "tool_calls" if called and ended != "length" else ended


def reasoning_tokens(chunks: list[GenerationChunk]) -> int:
    return sum(chunk.reasoning is not None for chunk in chunks)


def chat_messages(body: ChatCompletionRequest, policy: ImagePolicy, images: ImageReader) -> list[dict]:
    """The request's messages for the prompt builder, each assistant turn with its reasoning."""
    messages = to_messages(body.messages, policy, images)
    for message, entry in zip(body.messages, messages):
        if message.reasoning_content is not None:
            entry["reasoning_content"] = message.reasoning_content
    return messages


async def chat_prompt(body: ChatCompletionRequest, request: Request, served: Served, *, has_schema: bool = False,
                      add_generation_prompt: bool = True,
                      decoded: dict | None = None) -> tuple[Prompt, ToolUse | None, int | None]:
    """The prompt of a chat request's messages, tools and template variables, with its tool use and
    reasoning budget: chat completions, the Responses API and /tokenize all count it from here.
    `decoded`: ImageReader's, for a request built more than once."""
    state = request.app.state
    kwargs, budget = reasoning_controls(body, state.config.reasoning_budget)
    prompts = served.engine.prompts
    tools = await tool_use(body, served.grammars, prompts.tool_format, has_schema=has_schema)
    images = ImageReader.of(prompts, body.mm_processor_kwargs, decoded)
    # Image fetching and decoding run in the worker thread with the rest of prompt building.
    prompt = await build_prompt(lambda: prompts.build(chat_messages(body, state.image_policy, images),
                                                      tools=tools.tools if tools else None, template_kwargs=kwargs,
                                                      add_generation_prompt=add_generation_prompt), "messages")
    return prompt, tools, budget


async def start_chat(body: ChatCompletionRequest, request: Request, decoded: dict | None = None) -> ChatRun:
    """The request checked, its prompt built (`decoded`: chat_prompt's) and its choices queued."""
    state = request.app.state
    reject_lone_surrogates(body)
    served = ready_model(request, body.model)
    engine = served.engine
    check_top_logprobs(body.top_logprobs, "top_logprobs")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    grammar = await requested_grammar(served.grammars, body)
    prompt, tools, budget = await chat_prompt(body, request, served, has_schema=grammar is not None, decoded=decoded)
    if tools is not None:
        grammar = tools.grammar
    prompts = engine.prompts
    # A prompt that opened a think block: the budget holds the reasoning, the grammar the answer only.
    reasoning = ThinkBlock(prompts.think_tokens, tuple(served.grammars.eos_token_ids), served.grammars.vocab_size,
                           budget) if prompt.thinking else None
    params = choice_params(body, lambda: sampling_params(
        body, max_tokens=body.max_tokens if body.max_completion_tokens is None else body.max_completion_tokens,
        prompt_tokens=len(prompt.input_ids), context=engine.max_model_len,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None, prompt_param="messages",
        default_max_tokens=state.config.default_max_tokens, grammar=grammar,
        vocab_size=engine.model.config.text_config.vocab_size,
        reasoning=reasoning), state.config.max_num_seqs)
    asked = body.holo.map_coordinates if body.holo and body.holo.map_coordinates is not None else None
    map_coordinates = state.config.map_coordinates if asked is None else asked
    mapping = why_not_mapped(body, prompt, grammar, tools) if map_coordinates else None
    generations = served.generate_many([prompt] * len(params), params)
    return ChatRun(body, served, prompt, tools, generations, mapping, map_coordinates)


@router.post("/v1/chat/completions", responses=responses(ChatCompletion, *API_ERRORS, stream=ChatCompletionChunk))
async def chat_completions(body: ChatCompletionRequest, request: Request):
    run = await start_chat(body, request)
    completion_id, model_name = new_id("chatcmpl"), request.app.state.config.model_name
    strings = run.served.token_strings

    def logprobs_of(chunks) -> ChoiceLogprobs | None:
        if not body.logprobs:
            return None
        return ChoiceLogprobs(content=strings.entries(chunks))

    if not body.stream:
        try:
            results = await asyncio.gather(*(collect(request, generation) for generation in run.generations))
        finally:
            for generation in run.generations:
                generation.cancel()
        answers = []
        for index, chunks in enumerate(results):
            content, calls = run.answer("".join(chunk.text for chunk in chunks))
            message = AssistantMessage(content=content or None if calls else content,
                                       reasoning_content=run.reasoning(chunks),
                                       tool_calls=as_tool_calls(calls) if calls else None)
            finish_reason = in_legacy_form(body, message, finish_reason_of(bool(calls), chunks[-1].finish_reason))
            answers.append(ChatChoice(index=index, message=message, logprobs=logprobs_of(chunks),
                                      finish_reason=finish_reason))
        usage = run.usage(sum(map(len, results)), sum(map(reasoning_tokens, results)))
        return dump(ChatCompletion(id=completion_id, model=model_name, choices=answers, usage=usage, holo=run.holo()))

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    holo = run.holo()

    async def events():
        def chunk_event(delta: ChatDelta, **choice) -> str:
            return sse(dump(ChatCompletionChunk(id=completion_id, model=model_name, holo=holo,
                                                choices=[ChatChunkChoice(delta=delta, **choice)])))

        count = reasoned = 0
        try:
            # Choice by choice; the others decode meanwhile in the batch and wait in their queues.
            for index, generation in enumerate(run.generations):
                yield chunk_event(ChatDelta(role="assistant", content=""), index=index)
                calls_sent, split = 0, run.tools.stream() if run.tools is not None else None
                async for chunk in generation:
                    count, reasoned = count + 1, reasoned + (chunk.reasoning is not None)
                    text, calls = (chunk.text, []) if split is None else split.add(chunk.text)
                    if chunk.finish_reason and split is not None:
                        text += split.finish()
                    # A token of the reasoning has no content: its text goes as reasoning_content.
                    delta = ChatDelta(content=text if chunk.reasoning is None else None,
                                      reasoning_content=chunk.reasoning or None,
                                      tool_calls=as_deltas(calls, calls_sent) if calls else None)
                    calls_sent += len(calls)
                    ended = finish_reason_of(calls_sent > 0, chunk.finish_reason) if chunk.finish_reason else None
                    yield chunk_event(delta, index=index, logprobs=logprobs_of([chunk]),
                                      finish_reason=in_legacy_form(body, delta, ended))
        finally:  # a client gone mid-stream must not leave the later choices generating
            for generation in run.generations:
                generation.cancel()
        if include_usage:
            yield sse(dump(ChatCompletionChunk(id=completion_id, model=model_name, choices=[],
                                               usage=run.usage(count, reasoned))))
        yield SSE_DONE

    return StreamingResponse(ending_with_error_event(events()), media_type="text/event-stream")


def in_legacy_form(body: ChatCompletionRequest, answer: AssistantMessage | ChatDelta, finish_reason: str | None):
    """An answer to the legacy `functions` in their form: its call (one at most) as `function_call`,
    finish_reason "function_call"; the finish_reason to send."""
    if body.functions is None:
        return finish_reason
    if answer.tool_calls:
        answer.function_call, answer.tool_calls = answer.tool_calls[0].function, None
    return "function_call" if finish_reason == "tool_calls" else finish_reason


MAPPED = "mapped into the original image's pixels"


def why_not_mapped(body: ChatCompletionRequest, prompt: Prompt, grammar, tools) -> str | None:
    """Coordinate mapping rewrites a complete JSON answer about an image: why it cannot here, if so."""
    if not prompt.images:
        return "not mapped: the messages have no image"
    if grammar is None or tools is not None:
        return "not mapped: the answer is not constrained JSON (set response_format)"
    if body.stream:
        return "not mapped: a streamed answer is sent as it is generated"
    return None


def in_original_pixels(content: str, prompt: Prompt, coordinates: CoordinateSpace) -> tuple[str, str | None]:
    """The JSON answer with its positions moved from the family's coordinate space on the last image
    as resized to that image as sent, and why not when the answer is not complete JSON."""
    try:
        answer = json.loads(content)
    except json.JSONDecodeError:
        return content, "not mapped: the answer is not complete JSON"
    image = prompt.images[-1]
    return json.dumps(map_answer(answer, image.resized_size, image.original_size, coordinates),
                      ensure_ascii=False), None
