"""A request's sampling fields, validated into the engine's SamplingParams."""

from ..constrain import Grammar
from ..engine.sampling import SamplingParams
from .errors import APIError
from .protocol import SamplingFields


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
