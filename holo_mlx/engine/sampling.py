"""What a request asks of decoding (SamplingParams) and how a step chooses every row's next token."""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import mlx.core as mx
import numpy as np
from mlx_lm.sample_utils import apply_top_k, apply_top_p

from .. import kernels


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0  # vLLM's: drop tokens less likely than min_p times the likeliest (0: off)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None  # None: no logprobs; N: the chosen token's plus the top N
    min_tokens: int = 0
    ignore_eos: bool = False
    # Per-request decoding constraint (structured output, a reasoning budget); see Constraint below.
    constraint: "Constraint | None" = None
    # The token that closes the think block the prompt opened (a thinking model's `</think>`): the
    # text before it is reasoning, and stop strings apply to the answer after it. None: no reasoning.
    reasoning_end: int | None = None
    # Logit adjustments (OpenAI's bias and penalties, vLLM's repetition penalty); see Penalties below.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1: off
    logit_bias: dict[int, float] = field(default_factory=dict)

    def adjusts_logits(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1 or self.logit_bias)

    def stop_ids(self, eos_token_ids: set[int]) -> set[int]:
        """The tokens that end this request: its own stop ids, and the model's end tokens unless ignore_eos."""
        return set(self.stop_token_ids) | (set() if self.ignore_eos else set(eos_token_ids))


class Constraint(Protocol):
    """Limits which tokens may come next (e.g. a JSON-schema grammar). One instance per request."""

    # True once the budget closed the answer early (it then ends with finish_reason "length").
    closed_early: bool

    def allowed(self, remaining: int | None = None) -> mx.array | None:
        """Bool mask over the vocabulary (length vocab_size) for the next token, or None for any;
        `remaining`: the tokens the request may still generate, this one included (a grammar's
        answer closes within them)."""

    def advance(self, token: int) -> None:
        """Record the token that was sampled."""

    # Optional: `waits() -> bool`, whether the next mask depends on the token still in flight (the
    # scheduler then reads it before masking). A constraint without it always waits.


class Penalties:
    """One request's logit adjustments, in vLLM's order: its logit bias added; the repetition
    penalty on every token of the prompt or the output (a positive logit divided by it, a negative
    one multiplied); then frequency_penalty times each output token's count and presence_penalty
    once per distinct output token subtracted.

    The tokens they touch (bias keys, prompt tokens, output tokens) are few next to the vocabulary,
    so a step gathers and rewrites those logits only. The output is recorded on the device from each
    step's still-lazy token: the pipelined scheduler builds step N+1 before the host reads token N."""

    def __init__(self, params: SamplingParams, vocab_size: int, prompt_ids: Iterable[int]):
        self.params = params
        prompt_ids = sorted(set(prompt_ids)) if params.repetition_penalty != 1 else []
        self.in_prompt = None
        if prompt_ids:
            in_prompt = np.zeros(vocab_size, dtype=bool)
            in_prompt[prompt_ids] = True
            self.in_prompt = mx.array(in_prompt)
        self.bias = None
        if params.logit_bias:
            bias = np.zeros(vocab_size, dtype=np.float32)
            bias[list(params.logit_bias)] = list(params.logit_bias.values())
            self.bias = mx.array(bias)
        # Every token whose logit may change: bias keys and prompt tokens, then each output token
        # (repeats included: both copies get the same value).
        fixed = sorted(set(prompt_ids) | set(params.logit_bias))
        self.touched = mx.array(fixed, dtype=mx.int32)
        self.size = len(fixed)  # touched's length, known on the host
        self.counts = mx.zeros((vocab_size,), dtype=mx.float32)  # times each token was output

    def record(self, token: mx.array) -> None:
        """Count a step's chosen token (1,), still lazy."""
        self.counts = self.counts.at[token].add(1)
        self.touched = mx.concatenate([self.touched, token.astype(mx.int32)])
        self.size += 1


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]


class TokenChooser:
    """One request's sampling state: its random key, the min_tokens ban on its stop ids, its
    constraint, its penalties (the prompt's ids are needed for the repetition penalty only)."""

    def __init__(self, params: SamplingParams, stop_ids: set[int], vocab_size: int, prompt_ids: Iterable[int] = ()):
        self.params = params
        self.penalties = Penalties(params, vocab_size, prompt_ids) if params.adjusts_logits() else None
        self.key = mx.random.key(params.seed) if params.seed is not None else None
        self.ban = None
        if params.min_tokens and stop_ids:
            ban = np.ones(vocab_size, dtype=bool)
            ban[sorted(stop_ids)] = False
            self.ban = mx.array(ban)
        self.step = 0

    def allowed(self) -> mx.array | None:
        """Bool mask over the vocabulary for the next token, None when every token may come."""
        banned = self.ban is not None and self.step < self.params.min_tokens
        constraint = self.params.constraint
        allowed = None if constraint is None else constraint.allowed(self.params.max_tokens - self.step)
        if allowed is None:
            return self.ban if banned else None
        return allowed & self.ban if banned else allowed

    def waits(self) -> bool:
        """Whether this row's next mask needs its previous token on the host (Constraint.waits)."""
        constraint = self.params.constraint
        if constraint is None:
            return False
        waits = getattr(constraint, "waits", None)
        return waits is None or waits()

    def next_key(self) -> mx.array | None:
        if self.key is None:
            return None
        self.key, key = mx.random.split(self.key)
        return key


@dataclass
class Choice:
    """One step's choices for its rows, still lazy until the step is read."""

    tokens: mx.array  # (rows,)
    asking: list[int]  # rows that asked for log-probabilities
    chosen: mx.array | None = None  # (asking,) the chosen token's log-probability
    top_ids: mx.array | None = None  # (asking, k) the k most likely tokens, k the largest asked for
    top_values: mx.array | None = None

    def arrays(self) -> list[mx.array]:
        return [a for a in (self.tokens, self.chosen, self.top_ids, self.top_values) if a is not None]

    def read(self, choosers: list[TokenChooser]) -> list[tuple[int, "TokenLogprob | None"]]:
        """(token, log-probability) per row on the host; waits for the step if it is still running."""
        tokens = self.tokens.tolist()
        logprobs: list[TokenLogprob | None] = [None] * len(tokens)
        if self.asking:
            chosen = self.chosen.tolist()
            ids = self.top_ids.tolist() if self.top_ids is not None else [[]] * len(self.asking)
            values = self.top_values.tolist() if self.top_values is not None else [[]] * len(self.asking)
            for number, row in enumerate(self.asking):
                top = sorted(zip(ids[number], values[number]), key=lambda pair: -pair[1])
                logprobs[row] = TokenLogprob(tokens[row], chosen[number], top[:choosers[row].params.logprobs])
        return list(zip(tokens, logprobs))


def choose(logits: mx.array, choosers: list[TokenChooser], masks: list[mx.array | None]) -> Choice:
    """The next token of every row of `logits` (rows, vocab) in a few batched operations: penalties
    then masks applied at once, one argmax for the greedy rows, one filter-and-draw per group of
    rows with the same top-p/top-k. Choices need no normalization (argmax and Gumbel-max are unchanged by a
    row's shift), so log-softmax runs for the rows that report log-probabilities only."""
    scores = _penalized(logits, choosers)
    if any(mask is not None for mask in masks):
        everything = mx.ones((logits.shape[-1],), dtype=mx.bool_)
        allowed = mx.stack([everything if mask is None else mask[: logits.shape[-1]] for mask in masks])
        scores = mx.where(allowed, scores, -mx.inf)
    tokens = mx.argmax(scores, axis=-1)
    groups: dict[tuple[float, int, float], list[int]] = {}
    for row, chooser in enumerate(choosers):
        if chooser.params.temperature > 0:
            groups.setdefault((chooser.params.top_p, chooser.params.top_k, chooser.params.min_p), []).append(row)
    for (top_p, top_k, min_p), rows in groups.items():
        tokens[mx.array(rows)] = _draw(scores[mx.array(rows)], [choosers[row] for row in rows], top_p, top_k, min_p)
    choice = Choice(tokens, [row for row, chooser in enumerate(choosers) if chooser.params.logprobs is not None])
    if choice.asking:
        asking = mx.array(choice.asking)
        asked = kernels.log_softmax(logits[asking])  # the model's, as vLLM reports: before penalties, masks, filters
        choice.chosen = mx.take_along_axis(asked, tokens[asking][:, None], axis=-1)[:, 0]
        k = max(choosers[row].params.logprobs for row in choice.asking)
        if k > 0:
            choice.top_ids = mx.argpartition(-asked, kth=k - 1, axis=-1)[:, :k]
            choice.top_values = mx.take_along_axis(asked, choice.top_ids, axis=-1)
    for row, chooser in enumerate(choosers):
        chooser.step += 1
        if chooser.penalties is not None:
            chooser.penalties.record(tokens[row:row + 1])
    return choice


def _penalized(logits: mx.array, choosers: list[TokenChooser]) -> mx.array:
    """`logits` with each row's Penalties applied: one gather and one scatter over the tokens
    they touch, in float32 (bfloat16 would round a small penalty away). No work when no row has any."""
    rows = [row for row, chooser in enumerate(choosers) if chooser.penalties is not None and chooser.penalties.size]
    if not rows:
        return logits
    penalties = [choosers[row].penalties for row in rows]
    width = max(p.size for p in penalties)
    # Padding repeats a row's last touched token: a duplicate gets the same value.
    touched = [mx.pad(p.touched, (0, width - p.size), mode="edge") for p in penalties]
    index = (mx.array(rows)[:, None], mx.stack(touched))
    values = logits[index].astype(mx.float32)
    if any(p.bias is not None for p in penalties):
        no_bias = mx.zeros((width,), dtype=mx.float32)
        values = values + mx.stack([no_bias if p.bias is None else p.bias[t] for p, t in zip(penalties, touched)])
    counts = mx.stack([p.counts[t] for p, t in zip(penalties, touched)])
    output = counts > 0
    if any(p.params.repetition_penalty != 1 for p in penalties):
        repeated = output
        if any(p.in_prompt is not None for p in penalties):
            not_in_prompt = mx.zeros((width,), dtype=mx.bool_)
            repeated = repeated | mx.stack([not_in_prompt if p.in_prompt is None else p.in_prompt[t]
                                            for p, t in zip(penalties, touched)])
        repetition = mx.array([p.params.repetition_penalty for p in penalties], dtype=mx.float32)[:, None]
        penalty = mx.where(repeated, repetition, 1)  # dividing or multiplying by 1 leaves a logit as it is
        values = mx.where(values > 0, values / penalty, values * penalty)
    if any(p.params.frequency_penalty or p.params.presence_penalty for p in penalties):
        frequency = mx.array([p.params.frequency_penalty for p in penalties], dtype=mx.float32)[:, None]
        presence = mx.array([p.params.presence_penalty for p in penalties], dtype=mx.float32)[:, None]
        values = values - frequency * counts - presence * output
    scores = logits.astype(mx.float32)
    scores[index] = values
    return scores


def _draw(scores: mx.array, choosers: list[TokenChooser], top_p: float, top_k: int, min_p: float) -> mx.array:
    """Categorical draws at each row's temperature (Gumbel-max, as mx.random.categorical does), a
    seeded row with noise from its own key so its tokens do not depend on its batch-mates. Filters
    in vLLM's order: min_p, then top-p and top-k."""
    inverse_temperature = mx.array([1 / chooser.params.temperature for chooser in choosers])[:, None]
    if min_p > 0:
        # As vLLM: p / p_max at the row's temperature, in float32 (as top-p, below) whatever the batch.
        scores = scores.astype(mx.float32)
        gap = (scores - mx.max(scores, axis=-1, keepdims=True)) * inverse_temperature
        scores = mx.where(gap < math.log(min_p), -mx.inf, scores)
    if 0 < top_p < 1:  # normalized first: mlx-lm exponentiates, and raw logits could overflow
        # In float32 whatever the model's dtype, so a penalized batch-mate (float32 scores) changes nothing.
        scores = scores.astype(mx.float32)
        scores = apply_top_p(scores - mx.logsumexp(scores, axis=-1, keepdims=True), top_p)
    if 0 < top_k < scores.shape[-1]:
        scores = apply_top_k(scores, top_k)
    keys = [chooser.next_key() for chooser in choosers]
    if all(key is None for key in keys):
        noise = mx.random.gumbel(scores.shape)
    else:
        noise = mx.stack([mx.random.gumbel(scores.shape[-1:], key=key) for key in keys])
    return mx.argmax(scores * inverse_temperature + noise, axis=-1)
