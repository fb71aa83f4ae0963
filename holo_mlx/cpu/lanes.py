"""Lanes: CPU streams that run independent parts of the work side by side.

MLX's CPU backend runs each stream's elementwise work on one thread, while OpenBLAS already uses
every core: two streams fed independent halves of the work run those passes side by side and
leave the GEMMs as fast as before (docs/benchmarks.md, Vision tower).
"""

import threading

import mlx.core as mx

CPU_LANES = 2
_thread_streams = threading.local()  # an MLX stream can only be used by the thread that made it


def lanes() -> list[mx.Stream]:
    """The default CPU stream, then this thread's other lanes."""
    if not hasattr(_thread_streams, "extra"):
        _thread_streams.extra = [mx.new_stream(mx.cpu) for _ in range(CPU_LANES - 1)]
    return [mx.default_stream(mx.cpu), *_thread_streams.extra]


def on_lanes(work, *per_part: list) -> list:
    """work(*args) for each part's args (one list per argument), each part on its own lane."""
    results = []
    for stream, args in zip(lanes(), zip(*per_part), strict=False):
        with mx.stream(stream):
            results.append(work(*args))
    return results


def joined(parts: list[mx.array], axis: int = 0) -> mx.array:
    """Parts concatenated along `axis`; a single part as it is, without a copy."""
    return mx.concatenate(parts, axis=axis) if len(parts) > 1 else parts[0]
