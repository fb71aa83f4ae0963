"""One Gated DeltaNet recurrence over a prompt on MLX's CPU backend: mlx-lm's token-by-token
`gated_delta_ops` against holo_mlx/cpu/gated_delta.py's chunked form, at Holo3-35B-A3B's shapes
(16 key heads, 32 value heads, 128-wide heads) by default.

    python benchmarks/bench_gated_delta.py [--tokens 1024] [--runs 5] [--chunk 32]

Prints each one's median time over the runs (min, max), the ratio and their largest difference.
"""

import argparse
import statistics
import time

from holo_mlx.runtime import keep_freed_buffers, use_fast_blas


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--key-heads", type=int, default=16)
    parser.add_argument("--value-heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128, help="key and value head width")
    parser.add_argument("--chunk", type=int, help="tokens per chunk (default cpu/gated_delta.py's CHUNK)")
    parser.add_argument("--runs", type=int, default=5)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    use_fast_blas()
    keep_freed_buffers()  # as holo_mlx.load does
    import mlx.core as mx
    from mlx_lm.models.gated_delta import compute_g, gated_delta_ops, normalize_qk

    from holo_mlx.cpu import gated_delta as cpu_gated_delta

    if args.chunk:
        cpu_gated_delta.CHUNK = args.chunk
    mx.set_default_device(mx.cpu)
    shape, dim = (args.batch, args.tokens), args.head_dim
    q, k = normalize_qk(mx.random.normal((*shape, args.key_heads, dim)), mx.random.normal((*shape, args.key_heads, dim)),
                        inv_scale=dim**-0.5, eps=1e-6)
    v = mx.random.normal((*shape, args.value_heads, dim))
    heads = (args.value_heads,)
    g = compute_g(mx.random.normal(heads), mx.random.normal((*shape, *heads)), mx.random.normal(heads))
    beta = mx.sigmoid(mx.random.normal((*shape, *heads)))
    state = mx.zeros((args.batch, args.value_heads, dim, dim))
    mx.eval(q, k, v, g, beta, state)

    results = {}
    for name, function in (("token by token (mlx-lm gated_delta_ops)", gated_delta_ops),
                           (f"chunked by {cpu_gated_delta.CHUNK} (holo_mlx/cpu)", cpu_gated_delta.gated_delta_rule)):
        mx.eval(function(q, k, v, g, beta, state))  # warm-up: compiled kernels are built on first use
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            out = function(q, k, v, g, beta, state)
            mx.eval(out)
            times.append(time.perf_counter() - start)
        results[name] = (statistics.median(times), out)
        print(f"{name:42s} {statistics.median(times) * 1e3:8.1f} ms median "
              f"({min(times) * 1e3:.1f}, {max(times) * 1e3:.1f}), {args.runs} runs")
    (slow, (y_ref, s_ref)), (fast, (y, s)) = results.values()
    print(f"B {args.batch}, T {args.tokens}, Hk {args.key_heads}, Hv {args.value_heads}, Dk = Dv = {dim}: "
          f"token by token / chunked = {slow / fast:.1f}x")
    print(f"max |diff|: out {mx.abs(y - y_ref).max().item():.2e}, state {mx.abs(s - s_ref).max().item():.2e}")


if __name__ == "__main__":
    main()
