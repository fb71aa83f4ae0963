"""Prefill, decode and text streaming for one request; `python -m holo_mlx.generate` CLI.

All per-request state (KV cache, M-RoPE delta, sampler key, stop strings) lives in the
generator's frame; the model stays stateless.
"""

import argparse
from collections.abc import Iterator

import mlx.core as mx

from .engine.sampling import SamplingParams, TokenChooser
from .engine.stream import GenerationChunk, TextStream
from .models import VisionLanguageModel as Model
from .models.base import Span
from .runtime import prefill_chunk


def prefill(model: Model, prompt, cache: list) -> tuple[mx.array, int]:
    """Run the prompt through the model; returns the last position's logits (1, vocab) and the rope delta."""
    images = prompt.images
    grids = [image.grid_thw for image in images]
    features = model.encode_images([image.pixel_values for image in images], grids) if images else None
    embeds = model.embed(prompt.input_ids, features)
    positions, delta = model.positions(prompt.input_ids, grids)
    positions = mx.array(positions)[:, None, :]
    chunk = prefill_chunk()
    for start in range(0, embeds.shape[1], chunk):
        end = start + chunk
        hidden = model.hidden([Span(embeds[:, start:end], positions[:, :, start:end], cache)], last_only=True)[0]
        mx.eval([c.state for c in cache])
    return model.logits(hidden[:, -1]), delta


def generate_tokens(model: Model, prompt, chooser: TokenChooser) -> Iterator[tuple[int, mx.array]]:
    """Yield (token, log-probabilities) forever for one prompt."""
    cache = model.make_cache()
    logits, delta = prefill(model, prompt, cache)

    def forward(token: mx.array) -> mx.array:
        positions = mx.broadcast_to(mx.array(cache[0].offset + delta), (3, 1, 1))
        embeds = model.embed_tokens(token.reshape(1, 1))
        hidden = model.hidden([Span(embeds, positions, cache)])[0]
        return model.logits(hidden[:, -1])

    token, logprobs = chooser(logits)
    mx.async_eval(token, logprobs)
    while True:
        # Queue the next step before handing this token out, so the device never idles.
        next_token, next_logprobs = chooser(forward(token))
        mx.async_eval(next_token, next_logprobs)
        yield token.item(), logprobs[0]
        token, logprobs = next_token, next_logprobs


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
