"""`python -m holo_mlx.generate`: one prompt through the engine's scheduler, as the server runs it.

stream_generate steps a scheduler of its own for one request, as vLLM's offline API drives the
same engine as its server: there is one generation path.
"""

import argparse
import secrets
import sys
from collections import deque
from collections.abc import Iterator

import mlx.core as mx

from .engine.prepare import PreparedPrompt
from .engine.sampling import SamplingParams
from .engine.requests import Sequence
from .engine.scheduler import Scheduler
from .engine.stream import GenerationChunk
from .models import VisionLanguageModel
from .runtime import prefill_chunk


def stream_generate(model: VisionLanguageModel, tokenizer, prompt, params: SamplingParams) -> Iterator[GenerationChunk]:
    """Decoded text as it is generated; stop strings are never emitted."""
    mx.reset_peak_memory()
    scheduler, outputs = Scheduler(model, tokenizer, max_num_seqs=1), deque()
    scheduler.add(Sequence(prompt, params, outputs.append))
    while True:
        while not outputs:
            scheduler.step()
        item = outputs.popleft()
        if item is None:
            return
        if isinstance(item, Exception):
            raise item
        yield item


def prompt_logits(model: VisionLanguageModel, prompt) -> mx.array:
    """Logits (vocab,) of the token after the prompt, prefilled chunk by chunk as generation does."""
    prepared, cache, chunk = PreparedPrompt(model, prompt), model.make_cache(), prefill_chunk()
    for start in range(0, prepared.length, chunk):
        hidden = model.hidden([prepared.span(start, min(start + chunk, prepared.length), cache)], last_only=True)[0]
    return model.logits(hidden[0, -1])


def main() -> None:
    from .runtime import use_fast_blas

    use_fast_blas()
    parser = argparse.ArgumentParser(description="Generate text with a Holo model (Holo1.5 or Holo2) in MLX")
    parser.add_argument("--model", required=True, help="converted model folder (python -m convert)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--image", action="append", default=[], help="image file; repeat for several")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temp", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--system", default=None, help="system message (default: the chat template's)")
    parser.add_argument("--pipeline", action="store_true",
                        help="under mlx.launch: give each rank whole layers (pipeline parallelism) instead of a "
                             "slice of every layer (tensor parallelism)")
    args = parser.parse_args()

    from . import load
    from .distributed import RanksMissing, world

    try:
        group = world()  # under mlx.launch: the decoder split across the ranks, rank 0 prints
    except RanksMissing as error:
        sys.exit(f"error: {error}")
    model, prompts = load(args.model, group, args.pipeline)
    leader = group is None or group.rank() == 0
    if group is not None and args.seed is None:
        # Every rank samples for itself and must draw the same tokens: rank 0's random seed, shared.
        seed = mx.array(secrets.randbelow(2**31) if leader else 0)
        args.seed = mx.distributed.all_sum(seed, group=group, stream=mx.cpu).item()
    content = [{"type": "image", "image": open(file, "rb").read()} for file in args.image]
    content.append({"type": "text", "text": args.prompt})
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": content}
    ]
    prompt = prompts.build(messages)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temp, top_p=args.top_p, seed=args.seed)
    for chunk in stream_generate(model, prompts.tokenizer, prompt, params):
        if leader:
            print(chunk.text, end="", flush=True)
    stats = chunk.stats
    if group is not None:
        # The scheduler has queued one more pass, collectives included: no rank leaves before all finish it.
        mx.eval(mx.distributed.all_sum(mx.array(1), group=group))
    if not leader:
        return
    print(
        f"\n==========\nPrompt: {stats.prompt_tokens} tokens, {stats.prompt_tps:.1f} tokens-per-sec\n"
        f"Generation: {stats.generation_tokens} tokens, {stats.generation_tps:.1f} tokens-per-sec\n"
        f"Peak memory: {stats.peak_memory_gb:.3f} GB"
    )


if __name__ == "__main__":
    main()
