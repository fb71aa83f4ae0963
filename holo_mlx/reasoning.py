"""Thinking models (Holo2, a Qwen3-VL Thinking fine-tune; Holo3, Qwen3.5): the reasoning their chat
template opens, its budget, and a grammar that holds only the answer after it.

Qwen3's convention: the generation prompt opens a think block (`<think>\\n`), the model writes its
reasoning, closes it with `</think>` and a blank line, then answers. With thinking off
(`enable_thinking: false`) the template writes the block already closed (`<think>\\n\\n</think>\\n\\n`),
so the answer comes at once. Whether a prompt opened a block is read from its tokens
(PromptBuilder), so a template that never writes `<think>` (Holo1.5's) has no reasoning.
"""

from dataclasses import dataclass, replace

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


@dataclass(frozen=True)
class ThinkBlock:
    """A prompt's open think block and what holds it: at most `budget` reasoning tokens (None: no
    limit), then the answer under `grammar` (None: free text).

    Once the budget is spent, `</think>` and the blank line are forced and the answer follows. With a
    grammar the reasoning is free but for the end tokens (an answer must follow it), and the
    always-closing guarantee holds with the reasoning counted in max_tokens: once the tokens left
    only just fit `</think>`, the blank line and the grammar's shortest answer, `</think>` is forced
    (and the answer ends with finish_reason "length")."""

    think: ThinkTokens
    end_tokens: tuple[int, ...]
    vocab_size: int
    budget: int | None = None
    grammar: object = None  # the answer's: a Grammar, or tool calls (a constraint factory)

    def holding(self, grammar) -> "ThinkBlock | None":
        """This block with the answer's grammar; None when it would hold nothing (no budget, free text)."""
        return None if grammar is None and self.budget is None else replace(self, grammar=grammar)

    @property
    def steps(self) -> tuple[int, ...]:
        """What closes the block: `</think>` and the blank line."""
        return (self.think.close, *self.think.separator)

    def constraint(self) -> "ThinkingThenAnswer":
        return ThinkingThenAnswer(self)

    def shortest_answer_tokens(self) -> int | None:
        shortest = None if self.grammar is None else self.grammar.shortest_answer_tokens()
        return None if shortest is None else len(self.steps) + shortest


class ThinkingThenAnswer:
    """One request's state for ThinkBlock."""

    def __init__(self, block: ThinkBlock):
        self.block = block
        self.answer = None if block.grammar is None else block.grammar.constraint()
        self.shortest = block.shortest_answer_tokens()
        self.reasoned = 0  # reasoning tokens, `</think>` not counted
        self.forcing: tuple[int, ...] | None = None  # the closing tokens still to write, once closing
        self.answering = False
        self.cut = False  # max_tokens closed the reasoning: the answer is cut short
        self.free: mx.array | None = None  # made on the engine's thread, where MLX runs

    @property
    def closed_early(self) -> bool:
        return self.cut or (self.answer is not None and self.answer.closed_early)

    def waits(self) -> bool:
        """Whether the next mask depends on the token still in flight. A grammar's always does; free
        reasoning and a free answer need no mask, so only the tokens around the budget's end wait."""
        if self.answer is not None:
            return True
        if self.answering or self.forcing is not None:
            return not self.answering
        return self.block.budget is not None and self.reasoned + 1 >= self.block.budget

    def allowed(self, remaining: int | None = None) -> mx.array | None:
        if self.answering:
            return None if self.answer is None else self.answer.allowed(remaining)
        if self.forcing is None and self._spent(remaining):
            self.forcing = self.block.steps
        if self.forcing:
            return mx.arange(self.block.vocab_size) == self.forcing[0]
        if self.answer is None:
            return None
        if self.free is None:
            free = np.ones(self.block.vocab_size, dtype=bool)
            free[list(self.block.end_tokens)] = False
            self.free = mx.array(free)
        return self.free

    def _spent(self, remaining: int | None) -> bool:
        """Whether the reasoning must close now: its budget is spent, or max_tokens only just fits the
        close and the grammar's shortest answer."""
        if self.block.budget is not None and self.reasoned >= self.block.budget:
            return True
        self.cut = remaining is not None and self.shortest is not None and remaining <= self.shortest
        return self.cut

    def advance(self, token: int) -> None:
        if self.answering:
            if self.answer is not None:
                self.answer.advance(token)
        elif self.forcing:
            self.forcing = self.forcing[1:]
            self.answering = not self.forcing
        elif token == self.block.think.close:
            # The model closed the block: a grammar would not allow its blank line, so it is forced;
            # free text takes the model's own.
            self.forcing = self.block.think.separator if self.answer is not None else ()
            self.answering = not self.forcing
        else:
            self.reasoned += 1
