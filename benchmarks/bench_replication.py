"""What keeping lm_head and the vision tower whole on every rank costs, against splitting them
(docs/scale-out.md weighs the choice): two tensor-parallel ranks launched by mlx.launch.

- lm_head: replicated, each rank computes all the logits of a decode step itself. Split by
  vocabulary rows, each would compute 1/N of them and then all-gather the rest, every step.
- The tower: replicated, each rank encodes a screenshot itself, all at once. On rank 0 alone, the
  others would wait for it and then for its features (an all-sum with zeros from the others).

The ranks talk over loopback on this one machine: the all-gather and all-sum times are a link with
no bandwidth limit and a shared CPU; the bytes are what a real link would carry. Two ranks also
share this machine's two cores and memory bandwidth, so "replicated" is timed once more in one
process alone: what each rank takes on a machine of its own.

    python benchmarks/bench_replication.py --preset 0.5b --screenshot 1280x720
"""

import argparse
import io
import json
import time
from pathlib import Path

from bench_distributed import REPO, on_ranks
from common import format_table

BATCHES = (1, 8)


def timed(work, repeats: int) -> float:
    """Mean seconds of `work()` evaluated, after one warm-up."""
    import mlx.core as mx

    mx.eval(work())
    started = time.perf_counter()
    for _ in range(repeats):
        mx.eval(work())
    return (time.perf_counter() - started) / repeats


def worker(model_path: str, screenshot: tuple[int, int], repeats: int) -> None:
    """One rank: time each side of both choices; rank 0 prints the rows as JSON. One process
    alone (no mlx.launch) times the replicated side only."""
    import mlx.core as mx

    from holo_mlx import load
    from holo_mlx.distributed import weight_bytes, world
    from holo_mlx.runtime import use_fast_blas
    from holo_mlx.testing import synthetic_screenshot

    use_fast_blas()
    group = world()
    model, prompts = load(model_path, group)
    rank, ranks = (group.rank(), group.size()) if group is not None else (0, 2)
    language = model.language_model
    head = language.lm_head.weight if hasattr(language, "lm_head") else language.model.embed_tokens.weight
    vocab, hidden = head.shape
    rows_per_rank = vocab // ranks
    own_rows = mx.array(head[rank * rows_per_rank:(rank + 1) * rows_per_rank])
    mx.eval(own_rows)
    rows = []
    for batch in BATCHES:
        states = mx.random.normal((batch, hidden)).astype(model.dtype)

        def split():
            gathered = mx.distributed.all_gather(states @ own_rows.T, group=group)
            return gathered.reshape(ranks, batch, rows_per_rank).transpose(1, 0, 2).reshape(batch, -1)

        rows.append({"choice": f"lm_head, decode batch {batch}",
                     "replicated_ms": 1e3 * timed(lambda: model.logits(states), repeats)})
        if group is None:
            continue
        rows[-1].update({"split_ms": 1e3 * timed(split, repeats),
                     "of_which_link_ms": 1e3 * timed(lambda: mx.distributed.all_gather(
                         mx.zeros((batch, rows_per_rank), model.dtype), group=group), repeats),
                     "bytes_per_rank": (ranks - 1) * batch * rows_per_rank * model.dtype.size,
                     "memory_saved_per_rank": int(head.nbytes * (ranks - 1) / ranks)})
    buffer = io.BytesIO()
    synthetic_screenshot(*screenshot, seed=1).save(buffer, format="PNG")
    prompt = prompts.build([{"role": "user", "content": [{"type": "image", "image": buffer.getvalue()},
                                                         {"type": "text", "text": "Click OK."}]}])
    (image,) = prompt.images
    encode = lambda: model.encode_images([image.pixel_values], [image.grid_thw])  # noqa: E731
    tower_s = timed(encode, max(1, repeats // 10))
    features = encode()
    mx.eval(features)
    rows.append({"choice": f"tower, {screenshot[0]}x{screenshot[1]} screenshot ({features.shape[0]} features)",
                 "replicated_ms": 1e3 * tower_s})
    if group is None:
        return print(json.dumps(rows), flush=True)
    own = features if rank == 0 else mx.zeros_like(features)
    broadcast_s = timed(lambda: mx.distributed.all_sum(own, group=group), max(1, repeats // 10))
    tower_bytes = weight_bytes(model.vision_tower.parameters())
    rows[-1].update({"split_ms": 1e3 * (tower_s + broadcast_s),
                 "of_which_link_ms": 1e3 * broadcast_s, "bytes_per_rank": features.nbytes,
                 "memory_saved_per_rank": tower_bytes})
    if rank == 0:
        print(json.dumps(rows), flush=True)


def measure(model: Path, screenshot: str, repeats: int) -> list[dict]:
    """The rows of two ranks, each with the one-process time beside it."""
    alone, ranked = (run(model, screenshot, repeats, ranks) for ranks in (1, 2))
    return [{**row, "alone_ms": one["replicated_ms"]} for one, row in zip(alone, ranked)]


def run(model: Path, screenshot: str, repeats: int, ranks: int) -> list[dict]:
    result = on_ranks(ranks, str(Path(__file__).resolve()), "--worker", str(model), "--screenshot", screenshot,
                      "--repeats", str(repeats))
    printed = [line for line in result.stdout.splitlines() if line.startswith("[")]
    if not printed:
        raise SystemExit(f"the ranks failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return json.loads(printed[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="0.5b", help="random weights of this Holo1.5 shape (bench_runtime's)")
    source.add_argument("--model", type=Path, help="a converted model folder instead")
    source.add_argument("--worker", help=argparse.SUPPRESS)  # one rank, run by mlx.launch
    parser.add_argument("--screenshot", default="1280x720", help="WIDTHxHEIGHT of the screenshot encoded")
    parser.add_argument("--repeats", type=int, default=50, help="timed repeats of each decode-step operation")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    width, height = (int(side) for side in args.screenshot.lower().split("x"))
    if args.worker:
        return worker(args.worker, (width, height), args.repeats)
    model = args.model
    if model is None:
        from bench_runtime import preset_folder

        model = preset_folder(args.preset, args.cache_dir)
    rows = measure(model, args.screenshot, args.repeats)
    if args.json:
        args.json.write_text(json.dumps({"model": str(model), "screenshot": args.screenshot, "rows": rows}, indent=2))
    print(f"\n{model}, 2 tensor-parallel ranks on 127.0.0.1 (loopback, one machine)")
    print(format_table(rows, [("choice", "choice"), ("alone_ms", "replicated, alone ms"),
                              ("replicated_ms", "replicated ms"), ("split_ms", "split ms"),
                              ("of_which_link_ms", "of which link ms"), ("bytes_per_rank", "bytes moved / rank"),
                              ("memory_saved_per_rank", "memory saved / rank (B)")]))


if __name__ == "__main__":
    main()
