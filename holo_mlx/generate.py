"""Prefill, decode and text streaming for one request; `python -m holo_mlx.generate` CLI.

All per-request state (KV cache, M-RoPE delta, sampler key, stop strings) lives in the
generator's frame; the model stays stateless.
"""

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import mlx.core as mx
from mlx_lm.models.cache import KVCache
from mlx_lm.sample_utils import apply_top_k, apply_top_p
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

from .model import Model
from .rope import decode_positions, rope_index

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
        hidden = decoder(embeds[:, start:end], positions[:, :, start:end], cache)
        mx.eval([c.state for c in cache])
    return model.language_model.logits(hidden[:, -1]), delta


def generate_tokens(model: Model, prompt, params: SamplingParams, suppress: list[int]) -> Iterator[tuple[int, mx.array]]:
    """Yield (token, log-probabilities) forever; `suppress` ids are banned for the first min_tokens."""
    cache = make_cache(model)
    sampler = Sampler(params)
    suppress_ids = mx.array(suppress) if suppress else None
    logits, delta = prefill(model, prompt, cache)

    def sample(logits: mx.array, step: int) -> tuple[mx.array, mx.array]:
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if suppress_ids is not None and step < params.min_tokens:
            logprobs[..., suppress_ids] = -mx.inf
        return sampler(logprobs), logprobs

    def forward(token: mx.array) -> mx.array:
        positions = mx.array(decode_positions(cache[0].offset, 1, delta))[:, None, :]
        embeds = model.language_model.model.embed_tokens(token.reshape(1, 1))
        hidden = model.language_model.model(embeds, positions, cache)
        return model.language_model.logits(hidden[:, -1])

    token, logprobs = sample(logits, 0)
    mx.async_eval(token, logprobs)
    step = 0
    while True:
        # Queue the next step before handing this token out, so the device never idles.
        next_token, next_logprobs = sample(forward(token), step + 1)
        mx.async_eval(next_token, next_logprobs)
        yield token.item(), logprobs[0]
        token, logprobs, step = next_token, next_logprobs, step + 1


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string."""
    return max((n for stop in stops for n in range(min(len(stop) - 1, len(text)), 0, -1)
                if stop.startswith(text[-n:])), default=0)


def stream_generate(model: Model, tokenizer, prompt, params: SamplingParams,
                    eos_token_ids: set[int]) -> Iterator[GenerationChunk]:
    """Decoded text as it is generated; stop strings are never emitted."""
    detokenizer = BPEStreamingDetokenizer(tokenizer)
    stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else eos_token_ids)
    text, emitted = "", 0
    started = time.perf_counter()
    prompt_time = None
    mx.reset_peak_memory()
    tokens = generate_tokens(model, prompt, params, sorted(eos_token_ids | set(params.stop_token_ids)))
    for count, (token, logprobs) in enumerate(tokens, start=1):
        if prompt_time is None:
            prompt_time = time.perf_counter() - started
        finish = None
        logprob = _token_logprob(token, logprobs, params.logprobs)
        if token in stop_ids:
            finish, piece = "stop", ""
        else:
            detokenizer.add_token(token)
            text += detokenizer.last_segment
            hit = min((i for i in (text.find(s, max(0, emitted - len(s))) for s in params.stop) if i >= 0),
                      default=-1)
            if hit >= 0:
                finish, piece = "stop", text[emitted:hit]
            else:
                if count >= params.max_tokens:
                    detokenizer.finalize()
                    text += detokenizer.last_segment
                    finish = "length"
                safe = len(text) if finish else len(text) - _held_back(text, params.stop)
                piece = text[emitted:safe]
            emitted += len(piece)
        if finish:
            decode_time = max(time.perf_counter() - started - prompt_time, 1e-9)
            stats = GenerationStats(
                prompt_tokens=len(prompt.input_ids),
                generation_tokens=count,
                prompt_tps=len(prompt.input_ids) / prompt_time,
                generation_tps=(count - 1) / decode_time if count > 1 else 0.0,
                peak_memory_gb=mx.get_peak_memory() / 1e9,
            )
            yield GenerationChunk(piece, token, logprob, finish, stats)
            return
        yield GenerationChunk(piece, token, logprob)


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
