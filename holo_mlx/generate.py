"""Prefill, decode and text streaming for one request; `python -m holo_mlx.generate` CLI.

All per-request state (KV cache, M-RoPE delta, sampler key, stop strings) lives in the
generator's frame; the model stays stateless.
"""

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import mlx.core as mx
from mlx_lm.models.cache import KVCache
from mlx_lm.sample_utils import apply_top_k, apply_top_p

from .kernels import log_softmax
from .model import Model
from .rope import decode_positions, rope_index
from .tokens import StreamingDecoder

PREFILL_CHUNK = 512  # tokens per prefill step: bounds activation memory on long screenshots


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


def make_cache(model: Model) -> list[KVCache]:
    return [KVCache() for _ in model.language_model.model.layers]


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


def prefill(model: Model, prompt, cache: list[KVCache]) -> tuple[mx.array, int]:
    """Run the prompt through the model; returns the last position's logits (1, vocab) and the rope delta."""
    images = prompt.images
    grids = [image.grid_thw for image in images]
    features = model.encode_images([image.pixel_values for image in images], grids) if images else None
    embeds = model.embed(prompt.input_ids, features)
    positions, delta = rope_index(
        prompt.input_ids, grids, image_token_id=model.config.image_token_id,
        spatial_merge_size=model.config.vision_config.spatial_merge_size,
    )
    positions = mx.array(positions)[:, None, :]
    decoder = model.language_model.model
    for start in range(0, embeds.shape[1], PREFILL_CHUNK):
        end = start + PREFILL_CHUNK
        hidden = decoder(embeds[:, start:end], positions[:, :, start:end], cache, last_only=True)
        mx.eval([c.state for c in cache])
    return model.language_model.logits(hidden[:, -1]), delta


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


def generate_tokens(model: Model, prompt, chooser: TokenChooser) -> Iterator[tuple[int, mx.array]]:
    """Yield (token, log-probabilities) forever for one prompt."""
    cache = make_cache(model)
    logits, delta = prefill(model, prompt, cache)

    def forward(token: mx.array) -> mx.array:
        positions = mx.array(decode_positions(cache[0].offset, 1, delta))[:, None, :]
        embeds = model.language_model.model.embed_tokens(token.reshape(1, 1))
        hidden = model.language_model.model(embeds, positions, cache)
        return model.language_model.logits(hidden[:, -1])

    token, logprobs = chooser(logits)
    mx.async_eval(token, logprobs)
    while True:
        # Queue the next step before handing this token out, so the device never idles.
        next_token, next_logprobs = chooser(forward(token))
        mx.async_eval(next_token, next_logprobs)
        yield token.item(), logprobs[0]
        token, logprobs = next_token, next_logprobs


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string."""
    return max((n for stop in stops for n in range(min(len(stop) - 1, len(text)), 0, -1)
                if stop.startswith(text[-n:])), default=0)


class TextStream:
    """Sampled tokens -> text chunks: detokenizes, holds back possible stop strings, decides the end."""

    def __init__(self, tokenizer, params: SamplingParams, eos_token_ids: set[int], prompt_tokens: int):
        self.params = params
        self.decoder = StreamingDecoder(tokenizer)
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else eos_token_ids)
        self.prompt_tokens = prompt_tokens
        self.text, self.emitted, self.count = "", 0, 0
        self.started = time.perf_counter()
        self.first_token_time: float | None = None

    def add(self, token: int, logprobs: mx.array) -> GenerationChunk:
        """The chunk for one more token; its finish_reason is set when generation must end."""
        params = self.params
        self.count += 1
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        logprob = _token_logprob(token, logprobs, params.logprobs)
        finish = None
        if token in self.stop_ids:
            finish, piece = "stop", ""
        else:
            self.text += self.decoder.add(token)
            text, emitted = self.text, self.emitted
            hit = min((i for i in (text.find(s, max(0, emitted - len(s))) for s in params.stop) if i >= 0),
                      default=-1)
            if hit >= 0:
                finish, piece = "stop", text[emitted:hit]
            else:
                if self.count >= params.max_tokens:
                    self.text += self.decoder.finish()
                    finish = "length"
                safe = len(self.text) if finish else len(self.text) - _held_back(self.text, params.stop)
                piece = self.text[emitted:safe]
            self.emitted += len(piece)
        return GenerationChunk(piece, token, logprob, finish, self.stats() if finish else None)

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


def stream_generate(model: Model, tokenizer, prompt, params: SamplingParams,
                    eos_token_ids: set[int]) -> Iterator[GenerationChunk]:
    """Decoded text as it is generated; stop strings are never emitted."""
    mx.reset_peak_memory()
    stream = TextStream(tokenizer, params, eos_token_ids, len(prompt.input_ids))
    chooser = TokenChooser(params, eos_token_ids | set(params.stop_token_ids))
    for token, logprobs in generate_tokens(model, prompt, chooser):
        chunk = stream.add(token, logprobs)
        yield chunk
        if chunk.finish_reason:
            return


def _token_logprob(token: int, logprobs: mx.array, top: int | None) -> TokenLogprob | None:
    if top is None:
        return None
    alternatives = []
    if top > 0:
        best = mx.argpartition(-logprobs, kth=top - 1)[:top]
        values = logprobs[best]
        alternatives = sorted(zip(best.tolist(), values.tolist()), key=lambda pair: -pair[1])
    return TokenLogprob(token, logprobs[token].item(), alternatives)


def main() -> None:
    from .runtime import use_fast_blas

    use_fast_blas()
    parser = argparse.ArgumentParser(description="Generate text with a Holo1.5 model in MLX")
    parser.add_argument("--model", required=True, help="converted model folder (python -m convert)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--image", action="append", default=[], help="image file; repeat for several")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temp", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--system", default=None, help="system message (default: the chat template's)")
    args = parser.parse_args()

    from . import load

    model, prompts = load(args.model)
    content = [{"type": "image", "image": open(file, "rb").read()} for file in args.image]
    content.append({"type": "text", "text": args.prompt})
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": content}
    ]
    prompt = prompts.build(messages)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temp, top_p=args.top_p, seed=args.seed)
    for chunk in stream_generate(model, prompts.tokenizer, prompt, params, set(model.config.eos_token_id)):
        print(chunk.text, end="", flush=True)
    stats = chunk.stats
    print(
        f"\n==========\nPrompt: {stats.prompt_tokens} tokens, {stats.prompt_tps:.1f} tokens-per-sec\n"
        f"Generation: {stats.generation_tokens} tokens, {stats.generation_tps:.1f} tokens-per-sec\n"
        f"Peak memory: {stats.peak_memory_gb:.3f} GB"
    )


if __name__ == "__main__":
    main()
