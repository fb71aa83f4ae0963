"""A request's sampling fields, validated into the engine's SamplingParams."""

import math
from collections.abc import Callable

from ..constrain import Grammar
from ..engine.sampling import SamplingParams
from ..reasoning import ThinkBlock
from .errors import APIError
from .protocol import SamplingFields
from .schemas import check_answer_fits


def sampling_params(body: SamplingFields, *, max_tokens: int | None, prompt_tokens: int, context: int,
                    logprobs: int | None, prompt_param: str, default_max_tokens: int,
                    grammar: Grammar | None = None, vocab_size: int | None = None,
                    reasoning: ThinkBlock | None = None) -> SamplingParams:
    """Validated sampling settings for one sequence; with a grammar or a reasoning budget, its own
    constraint. Without max_tokens a request gets the server's default, capped by what is left of
    the context. vocab_size bounds logit_bias's token ids: a caller whose body may carry logit_bias
    passes it. reasoning: the think block the prompt opened (the grammar then holds the answer only)."""
    if grammar is not None and (body.ignore_eos or body.min_tokens):
        # The grammar decides where the answer ends; holding back the end would break the JSON.
        raise APIError(400, "ignore_eos and min_tokens cannot be combined with a response schema",
                       param="ignore_eos" if body.ignore_eos else "min_tokens")
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
    decoding = grammar if reasoning is None else reasoning.holding(grammar)
    check_answer_fits(decoding, max_tokens)
    temperature = 1.0 if body.temperature is None else body.temperature
    if not 0 <= temperature <= 2:
        raise APIError(400, f"temperature must be in [0, 2], got {temperature}", param="temperature")
    top_p = 1.0 if body.top_p is None else body.top_p
    if not 0 < top_p <= 1:
        raise APIError(400, f"top_p must be in (0, 1], got {top_p}", param="top_p")
    top_k = body.top_k or 0
    if top_k < -1:
        raise APIError(400, f"top_k must be -1 (off), 0 (off) or positive, got {top_k}", param="top_k")
    min_p = body.min_p or 0.0
    if not 0 <= min_p <= 1:
        raise APIError(400, f"min_p must be in [0, 1] (0: off), got {min_p}", param="min_p")
    if body.min_tokens < 0 or body.min_tokens > max_tokens:
        raise APIError(400, f"min_tokens must be in [0, max_tokens={max_tokens}], got {body.min_tokens}",
                       param="min_tokens")
    seed = None if body.seed == -1 else body.seed  # -1: clients' usual "random"
    if seed is not None and not 0 <= seed < 2**64:
        raise APIError(400, f"seed must be in [0, 2^64) or -1 (random), got {seed}", param="seed")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(not s for s in stop):
        raise APIError(400, "stop strings must not be empty", param="stop")
    repetition_penalty = 1.0 if body.repetition_penalty is None else body.repetition_penalty
    if not (repetition_penalty > 0 and math.isfinite(repetition_penalty)):  # vLLM's rule
        raise APIError(400, f"repetition_penalty must be a finite number above 0 (1: off), got {repetition_penalty}",
                       param="repetition_penalty")
    return SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=max(top_k, 0), min_p=min_p, seed=seed,
        stop=stop, logprobs=logprobs, min_tokens=body.min_tokens, ignore_eos=body.ignore_eos,
        constraint=decoding.constraint() if decoding is not None else None,
        reasoning_end=reasoning.think.close if reasoning is not None else None,
        presence_penalty=_penalty(body.presence_penalty, "presence_penalty"),
        frequency_penalty=_penalty(body.frequency_penalty, "frequency_penalty"),
        repetition_penalty=repetition_penalty, logit_bias=_logit_bias(body.logit_bias or {}, vocab_size),
    )


def _penalty(value: float | None, param: str) -> float:
    value = 0.0 if value is None else value
    if not -2 <= value <= 2:
        raise APIError(400, f"{param} must be in [-2, 2], got {value}", param=param)
    return value


def _logit_bias(bias: dict[str, float], vocab_size: int | None) -> dict[int, float]:
    """OpenAI's rules: at most 300 token ids, as decimal strings, each biased by a value in [-100, 100]."""
    if len(bias) > 300:
        raise APIError(400, f"logit_bias may bias at most 300 tokens, got {len(bias)}", param="logit_bias")
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit() and int(key) < vocab_size):
            raise APIError(400, f"logit_bias keys must be token ids in [0, {vocab_size}), got {key!r}",
                           param="logit_bias")
        if not -100 <= value <= 100:
            raise APIError(400, f"logit_bias values must be in [-100, 100], got {value} for token {key}",
                           param="logit_bias")
    return {int(key): value for key, value in bias.items()}


def check_top_logprobs(value: int | None, param: str) -> None:
    if value is not None and not 0 <= value <= 20:
        raise APIError(400, f"{param} must be between 0 and 20, got {value}", param=param)


def choice_params(body: SamplingFields, params_of: Callable[[], SamplingParams], limit: int,
                  best_of: int | None = None) -> list[SamplingParams]:
    """Settings for each of a prompt's `n` choices (`best_of` when more are generated than returned):
    each with its own constraint and penalties and, when seeded, seeds seed, seed + 1, ... so the
    choices differ yet stay reproducible. At most `limit` (the batch's rows): the choices decode
    together, sharing the prompt's prefix cache."""
    count, param = (body.n, "n") if best_of is None else (best_of, "best_of")
    if not 1 <= count <= limit:
        raise APIError(400, f"{param} must be in [1, {limit}] (--max-num-seqs: the choices decode together in one "
                       f"batch), got {count}", param=param)
    copies = [params_of() for _ in range(count)]
    for index, params in enumerate(copies):
        if params.seed is not None:
            params.seed = (params.seed + index) % 2**64
    return copies
