"""What a request asks of decoding (SamplingParams) and how a step chooses every row's next token."""

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
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None  # None: no logprobs; N: the chosen token's plus the top N
    min_tokens: int = 0
    ignore_eos: bool = False
    # Per-request decoding constraint (structured output); see Constraint below.
    constraint: "Constraint | None" = None

    def stop_ids(self, eos_token_ids: set[int]) -> set[int]:
        """The tokens that end this request: its own stop ids, and the model's end tokens unless ignore_eos."""
        return set(self.stop_token_ids) | (set() if self.ignore_eos else set(eos_token_ids))


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


class TokenChooser:
    """One request's sampling state: its random key, the min_tokens ban on its stop ids, its constraint."""

    def __init__(self, params: SamplingParams, stop_ids: set[int], vocab_size: int):
        self.params = params
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
        if constraint is None:
            return self.ban if banned else None
        allowed = constraint.allowed()
        return allowed & self.ban if banned else allowed

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
    """The next token of every row of `logits` (rows, vocab) in a few batched operations: masks
    applied at once, one argmax for the greedy rows, one filter-and-draw per group of rows with
    the same top-p/top-k. Choices need no normalization (argmax and Gumbel-max are unchanged by a
    row's shift), so log-softmax runs for the rows that report log-probabilities only: the model's,
    before masks and filters."""
    scores = logits
    if any(mask is not None for mask in masks):
        everything = mx.ones((logits.shape[-1],), dtype=mx.bool_)
        allowed = mx.stack([everything if mask is None else mask[: logits.shape[-1]] for mask in masks])
        scores = mx.where(allowed, logits, -mx.inf)
    tokens = mx.argmax(scores, axis=-1)
    groups: dict[tuple[float, int], list[int]] = {}
    for row, chooser in enumerate(choosers):
        if chooser.params.temperature > 0:
            groups.setdefault((chooser.params.top_p, chooser.params.top_k), []).append(row)
    for (top_p, top_k), rows in groups.items():
        tokens[mx.array(rows)] = _draw(scores[mx.array(rows)], [choosers[row] for row in rows], top_p, top_k)
    choice = Choice(tokens, [row for row, chooser in enumerate(choosers) if chooser.params.logprobs is not None])
    if choice.asking:
        asking = mx.array(choice.asking)
        asked = kernels.log_softmax(logits[asking])
        choice.chosen = mx.take_along_axis(asked, tokens[asking][:, None], axis=-1)[:, 0]
        k = max(choosers[row].params.logprobs for row in choice.asking)
        if k > 0:
            choice.top_ids = mx.argpartition(-asked, kth=k - 1, axis=-1)[:, :k]
            choice.top_values = mx.take_along_axis(asked, choice.top_ids, axis=-1)
    for chooser in choosers:
        chooser.step += 1
    return choice


def _draw(scores: mx.array, choosers: list[TokenChooser], top_p: float, top_k: int) -> mx.array:
    """Categorical draws at each row's temperature (Gumbel-max, as mx.random.categorical does), a
    seeded row with noise from its own key so its tokens do not depend on its batch-mates."""
    if 0 < top_p < 1:  # normalized first: mlx-lm exponentiates, and raw logits could overflow
        scores = apply_top_p(scores - mx.logsumexp(scores, axis=-1, keepdims=True), top_p)
    if 0 < top_k < scores.shape[-1]:
        scores = apply_top_k(scores, top_k)
    inverse_temperature = mx.array([1 / chooser.params.temperature for chooser in choosers])[:, None]
    keys = [chooser.next_key() for chooser in choosers]
    if all(key is None for key in keys):
        noise = mx.random.gumbel(scores.shape)
    else:
        noise = mx.stack([mx.random.gumbel(scores.shape[-1:], key=key) for key in keys])
    return mx.argmax(scores * inverse_temperature + noise, axis=-1)
