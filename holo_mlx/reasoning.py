"""Thinking models (Holo2, a Qwen3-VL Thinking fine-tune): the reasoning their chat template opens,
and a grammar that holds only the answer after it.

Qwen3's convention: the generation prompt opens a think block (`<think>\\n`), the model writes its
reasoning, closes it with `</think>` and a blank line, then answers. With thinking off
(`enable_thinking: false`) the template writes the block already closed (`<think>\\n\\n</think>\\n\\n`),
so the answer comes at once. Whether a prompt opened a block is read from its tokens
(PromptBuilder), so a template that never writes `<think>` (Holo1.5's) has no reasoning.
"""

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

OPEN, CLOSE, SEPARATOR = "<think>", "</think>", "\n\n"


@dataclass(frozen=True)
class ThinkTokens:
    """A vocabulary's think-block tokens."""

    open: int
    close: int
    separator: tuple[int, ...]  # the blank line the model writes after `</think>`

    @classmethod
    def of(cls, tokenizer) -> "ThinkTokens | None":
        """None when the vocabulary has no think-block tokens."""
        ids = tokenizer.convert_tokens_to_ids([OPEN, CLOSE])
        if any(not isinstance(token, int) or token == tokenizer.unk_token_id for token in ids):
            return None
        return cls(*ids, tuple(tokenizer.encode(SEPARATOR, add_special_tokens=False)))

    def opened_by(self, input_ids: list[int], decode) -> bool:
        """Whether the prompt ends inside a think block: its last `<think>` is followed by whitespace
        only (a `<think>` quoted in a message is followed by the rest of the conversation)."""
        if self.open not in input_ids:
            return False
        last = len(input_ids) - 1 - input_ids[::-1].index(self.open)
        return not decode(input_ids[last + 1:]).strip()


class AfterThinking:
    """A grammar (a response schema, or tool calls) that holds the answer only, after the reasoning.

    The reasoning is free but for the end tokens (an answer must follow it). Then `</think>` and the
    blank line, then the grammar. The always-closing guarantee holds with the reasoning counted in
    max_tokens: once the budget left only just fits `</think>`, the blank line and the grammar's
    shortest answer, `</think>` is forced (and the answer ends with finish_reason "length")."""

    def __init__(self, grammar, think: ThinkTokens, end_tokens: list[int], vocab_size: int):
        self.grammar, self.think = grammar, think
        self.free = np.ones(vocab_size, dtype=bool)
        self.free[end_tokens] = False
        self.steps = (think.close, *think.separator)  # then written one by one

    def constraint(self) -> "ThinkingThenAnswer":
        return ThinkingThenAnswer(self)

    def shortest_answer_tokens(self) -> int | None:
        shortest = self.grammar.shortest_answer_tokens()
        return None if shortest is None else len(self.steps) + shortest


class ThinkingThenAnswer:
    """One request's state for AfterThinking."""

    def __init__(self, after: AfterThinking):
        self.after, self.answer = after, after.grammar.constraint()
        self.shortest = after.shortest_answer_tokens()
        self.written = 0  # tokens written of `</think>` and the blank line
        self.forced = False  # the budget closed the reasoning
        self.free: mx.array | None = None  # made on the engine's thread, where MLX runs

    @property
    def closed_early(self) -> bool:
        return self.forced or self.answer.closed_early

    def allowed(self, remaining: int | None = None) -> mx.array | None:
        steps = self.after.steps
        if self.written == len(steps):
            return self.answer.allowed(remaining)
        if not self.written and remaining is not None and self.shortest is not None and remaining <= self.shortest:
            self.forced = True
        if self.written or self.forced:
            return mx.arange(len(self.after.free)) == steps[self.written]
        if self.free is None:
            self.free = mx.array(self.after.free)
        return self.free

    def advance(self, token: int) -> None:
        if self.written == len(self.after.steps):
            self.answer.advance(token)
        elif self.written or token == self.after.think.close:
            self.written += 1
