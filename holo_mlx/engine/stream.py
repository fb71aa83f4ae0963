"""Sampled tokens -> text chunks for the requester: exact UTF-8, a thinking model's reasoning apart
from its answer, stop strings held back, the end."""

import time
from dataclasses import dataclass

import mlx.core as mx

from ..tokens import StreamingDecoder, held_back
from .sampling import SamplingParams, TokenLogprob


@dataclass
class GenerationStats:
    prompt_tokens: int
    generation_tokens: int
    prompt_tps: float
    generation_tps: float
    peak_memory_gb: float


@dataclass
class GenerationChunk:
    text: str  # new text; may be empty while a possible stop string is held back
    token: int | None
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None  # "stop" or "length" on the last chunk
    stats: GenerationStats | None = None  # on the last chunk
    reasoning: str | None = None  # the token is part of the reasoning (`</think>` included): its new text
    stop_sequence: str | None = None  # the stop string that ended the answer (Anthropic's API names it)


class TextStream:
    """Sampled tokens -> text chunks: detokenizes, splits the reasoning from the answer, holds back
    possible stop strings, decides the end.

    The reasoning (when the prompt opened a think block) is everything before `</think>`; stop
    strings apply to the answer only, which starts after it. Both lose their leading newlines, as
    Qwen3's template strips them when it writes an earlier turn back."""

    def __init__(self, tokenizer, params: SamplingParams, stop_ids: set[int], prompt_tokens: int):
        self.params = params
        self.decoder = StreamingDecoder(tokenizer)
        self.stop_ids = stop_ids
        self.prompt_tokens = prompt_tokens
        self.text, self.emitted, self.count = "", 0, 0  # the answer's
        self.reasoning = params.reasoning_end is not None  # inside the think block
        self.reasoned = False  # some reasoning text was given
        self.started = time.perf_counter()
        self.first_token_time: float | None = None

    def add(self, token: int, logprob: TokenLogprob | None) -> GenerationChunk:
        """The chunk for one more token; its finish_reason is set when generation must end."""
        params = self.params
        self.count += 1
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        finish = matched = None
        if token in self.stop_ids:
            # An answer a grammar closed early to fit max_tokens is complete but cut short: "length".
            finish = "length" if getattr(params.constraint, "closed_early", False) else "stop"
            piece = ""
        elif self.reasoning:
            return self._reason(token, logprob)
        else:
            added = self.decoder.add(token)
            if params.reasoning_end is not None and not self.text:
                added = added.lstrip("\n")  # the blank line after `</think>`
            self.text += added
            text, emitted = self.text, self.emitted
            hit, matched = min(((i, s) for s in params.stop if (i := text.find(s, max(0, emitted - len(s)))) >= 0),
                               default=(-1, None))
            if hit >= 0:
                finish, piece = "stop", text[emitted:hit]
            else:
                if self.count >= params.max_tokens:
                    self.text += self.decoder.finish()
                    finish = "length"
                safe = len(self.text) if finish else len(self.text) - held_back(self.text, params.stop)
                piece = self.text[emitted:safe]
            self.emitted += len(piece)
        return GenerationChunk(piece, token, logprob, finish, self.stats() if finish else None,
                               "" if self.reasoning else None, matched)

    def _reason(self, token: int, logprob: TokenLogprob | None) -> GenerationChunk:
        """A token of the reasoning; `</think>` ends it, and is text of neither part."""
        closing = token == self.params.reasoning_end
        piece = self.decoder.finish() if closing else self.decoder.add(token)
        finish = None
        if self.count >= self.params.max_tokens:
            piece += self.decoder.finish()
            finish = "length"
        if not self.reasoned:
            piece = piece.lstrip("\n")
        self.reasoned = self.reasoned or bool(piece)
        self.reasoning = not closing
        return GenerationChunk("", token, logprob, finish, self.stats() if finish else None, piece)

    def stats(self) -> GenerationStats:
        prompt_time = max(self.first_token_time - self.started, 1e-9)
        decode_time = max(time.perf_counter() - self.first_token_time, 1e-9)
        return GenerationStats(
            prompt_tokens=self.prompt_tokens,
            generation_tokens=self.count,
            prompt_tps=self.prompt_tokens / prompt_time,
            generation_tps=(self.count - 1) / decode_time if self.count > 1 else 0.0,
            peak_memory_gb=mx.get_peak_memory() / 1e9,
        )


