"""POST /v1/completions: raw prompts (text or token ids), no chat template."""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from .content import ImageReader
from .errors import APIError
from .inputs import input_prompts, reject_lone_surrogates, split_inputs
from .openapi import API_ERRORS, responses
from .protocol import (Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, PromptTokensDetails,
                       Usage, dump, new_id)
from .sampling_fields import check_top_logprobs, choice_params, sampling_params
from .schemas import requested_grammar
from .served import ready_model
from .streaming import SSE_DONE, collect, ending_with_error_event, sse

router = APIRouter()


@router.post("/v1/completions", responses=responses(Completion, *API_ERRORS, stream=Completion))
async def completions(body: CompletionRequest, request: Request):
    state = request.app.state
    config = state.config
    reject_lone_surrogates(body)
    served = ready_model(request, body.model)
    engine = served.engine
    check_top_logprobs(body.logprobs, "logprobs")
    if body.echo and body.logprobs is not None:
        raise APIError(400, "echo together with logprobs is not supported", param="echo")
    if body.best_of is not None and body.best_of < body.n:
        raise APIError(400, f"best_of must be at least n ({body.n}), got {body.best_of}", param="best_of")
    ranked = body.best_of is not None and body.best_of > body.n  # generate more choices than are returned
    if ranked and body.stream:
        raise APIError(400, "best_of above n cannot be streamed: the best choices are known only at the end",
                       param="best_of")
    generated = body.best_of or body.n  # choices per prompt
    tokenizer = engine.prompts.tokenizer
    grammar = await requested_grammar(served.grammars, body)
    inputs = split_inputs(body.prompt)
    if len(inputs) * generated > config.max_queue:  # could never all be queued: retrying would not help
        raise APIError(400, f"{len(inputs)} prompts x {generated} choices in one request; this server queues at most "
                       f"{config.max_queue} (--max-queue): split the request", param="prompt", code="too_many_prompts")
    # A text prompt has no image to resize: mm_processor_kwargs is only checked.
    prompts = await input_prompts(engine, body.prompt, state.image_policy, "prompt",
                                  ImageReader.of(engine.prompts, body.mm_processor_kwargs))
    # One constraint per choice: each sequence walks the grammar on its own. Choices are grouped
    # by prompt (prompt 0's n choices, then prompt 1's), as OpenAI orders them.
    params = [choice for p in prompts for choice in choice_params(body, lambda p=p: sampling_params(
        body, max_tokens=body.max_tokens, prompt_tokens=len(p.input_ids), context=engine.max_model_len,
        # Ranking reads the chosen tokens' logprobs.
        logprobs=0 if ranked and body.logprobs is None else body.logprobs, prompt_param="prompt",
        default_max_tokens=config.default_max_tokens, grammar=grammar,
        vocab_size=engine.model.config.text_config.vocab_size), config.max_num_seqs, body.best_of)]
    completion_id, model_name, strings = new_id("cmpl"), config.model_name, served.token_strings
    echoes = [(item if isinstance(item, str) else tokenizer.decode(item)) if body.echo else ""
              for item in inputs for _ in range(generated)]
    prompt_tokens = sum(len(p.input_ids) for p in prompts)
    prompts = [p for p in prompts for _ in range(generated)]

    def logprobs_of(chunks, offset: int) -> CompletionLogprobs | None:
        if body.logprobs is None:
            return None
        result = CompletionLogprobs()
        for chunk in chunks:
            result.tokens.append(strings.text(chunk.token))
            result.token_logprobs.append(chunk.logprob.logprob)
            result.top_logprobs.append({strings.text(t): lp for t, lp in chunk.logprob.top})
            result.text_offset.append(offset)
            offset += len(chunk.text)
        return result

    generations = served.generate_many(prompts, params)  # all prompts decode together in the batch

    def usage(completion_tokens: int) -> Usage:
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens,
                     prompt_tokens_details=PromptTokensDetails(
                         cached_tokens=sum(max(g.cached_tokens for g in generations[start:start + generated])
                                           for start in range(0, len(generations), generated))))

    if not body.stream:
        try:
            results = await asyncio.gather(*(collect(request, g) for g in generations))
        finally:
            for generation in generations:
                generation.cancel()
        kept = [number for start in range(0, len(results), generated)
                for number in best(results, range(start, start + generated), body.n)]
        choices = [CompletionChoice(index=index, text=echoes[number] + "".join(chunk.text for chunk in results[number]),
                                    logprobs=logprobs_of(results[number], len(echoes[number])),
                                    finish_reason=results[number][-1].finish_reason)
                   for index, number in enumerate(kept)]
        # Every generated choice is counted, as OpenAI bills best_of.
        return dump(Completion(id=completion_id, model=model_name, choices=choices,
                               usage=usage(sum(len(chunks) for chunks in results))))

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events():
        completion_tokens = 0
        try:
            for index, generation in enumerate(generations):
                offset = len(echoes[index])
                if echoes[index]:
                    yield sse(dump(Completion(id=completion_id, model=model_name,
                                              choices=[CompletionChoice(index=index, text=echoes[index])])))
                async for chunk in generation:
                    completion_tokens += 1
                    choice = CompletionChoice(index=index, text=chunk.text, logprobs=logprobs_of([chunk], offset),
                                              finish_reason=chunk.finish_reason)
                    offset += len(chunk.text)
                    yield sse(dump(Completion(id=completion_id, model=model_name, choices=[choice])))
        finally:  # a client gone mid-stream must not leave the later prompts generating
            for generation in generations:
                generation.cancel()
        if include_usage:
            yield sse(dump(Completion(id=completion_id, model=model_name, choices=[],
                                      usage=usage(completion_tokens))))
        yield SSE_DONE

    return StreamingResponse(ending_with_error_event(events()), media_type="text/event-stream")


def best(results: list, numbers: range, n: int) -> list[int]:
    """The n of a prompt's choices with the highest log probability per token (OpenAI's best_of), best
    first; all of them, in order, when no more were generated."""
    if len(numbers) == n:
        return list(numbers)
    return sorted(numbers, key=lambda number: -sum(chunk.logprob.logprob for chunk in results[number])
                  / len(results[number]))[:n]
