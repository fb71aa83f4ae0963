"""What a request asks of decoding (SamplingParams) and how the next token is chosen."""

from dataclasses import dataclass, field
from typing import Protocol

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_k, apply_top_p

from ..kernels import log_softmax


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None  # None: no logprobs; N: the chosen token's plus the top N
    min_tokens: int = 0
    ignore_eos: bool = False
    # Per-request decoding constraint (structured output); see Constraint below.
    constraint: "Constraint | None" = None


class Constraint(Protocol):
    """Limits which tokens may come next (e.g. a JSON-schema grammar). One instance per request."""

    def allowed(self) -> mx.array:
        """Bool mask over the vocabulary (length vocab_size) for the next token."""

    def advance(self, token: int) -> None:
        """Record the token that was sampled."""


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]


class Sampler:
    """Temperature / top-p / top-k with mlx-lm's filters and a per-request random key."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.key = mx.random.key(params.seed) if params.seed is not None else None

    def __call__(self, logprobs: mx.array) -> mx.array:
        params = self.params
        if params.temperature == 0:
            return mx.argmax(logprobs, axis=-1)
        if 0 < params.top_p < 1:
            logprobs = apply_top_p(logprobs, params.top_p)
        if 0 < params.top_k < logprobs.shape[-1]:
            logprobs = apply_top_k(logprobs, params.top_k)
        key = None
        if self.key is not None:
            self.key, key = mx.random.split(self.key)
        return mx.random.categorical(logprobs * (1 / params.temperature), key=key)


class TokenChooser:
    """Per-request sampling state: sampler and key, the min_tokens ban on stop ids, the constraint."""

    def __init__(self, params: SamplingParams, stop_ids: set[int]):
        self.params = params
        self.sampler = Sampler(params)
        self.suppress = mx.array(sorted(stop_ids)) if params.min_tokens and stop_ids else None
        self.step = 0

    def __call__(self, logits: mx.array) -> tuple[mx.array, mx.array]:
        """(token, log-probabilities) from logits of shape (1, vocab)."""
        logprobs = log_softmax(logits)
        if self.suppress is not None and self.step < self.params.min_tokens:
            logprobs[..., self.suppress] = -mx.inf
        self.step += 1
        constraint = self.params.constraint
        if constraint is None:
            return self.sampler(logprobs), logprobs
        allowed = constraint.allowed()
        token = self.sampler(mx.where(allowed[: logprobs.shape[-1]], logprobs, -mx.inf))
        constraint.advance(token.item())  # the next mask depends on this token: no pipelining here
        return token, logprobs


def token_logprob(token: int, logprobs: mx.array, top: int | None) -> TokenLogprob | None:
    if top is None:
        return None
    alternatives = []
    if top > 0:
        best = mx.argpartition(-logprobs, kth=top - 1)[:top]
        values = logprobs[best]
        alternatives = sorted(zip(best.tolist(), values.tolist()), key=lambda pair: -pair[1])
    return TokenLogprob(token, logprobs[token].item(), alternatives)


