"""Where MLX runs and in which precision: Metal on a Mac, the CPU backend elsewhere.

On Linux the `mlx[cpu]` wheel bundles a reference BLAS (~60x slower float32 GEMM than OpenBLAS);
an installed OpenBLAS is preloaded by re-executing the process, since LD_PRELOAD only takes effect
at process start. bfloat16 and quantized matmuls with bfloat16 scales are slow on the CPU backend,
so weights are cast to float32 there. glibc's allocator is tuned so the CPU backend reuses freed
buffers while it works and returns them when the server idles.
"""

import ctypes
import ctypes.util
import os
import sys
import threading
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import mlx.core as mx

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
_REEXEC_MARK = "HOLO_MLX_BLAS_REEXEC"


def find_openblas() -> str | None:
    return next((p for p in OPENBLAS_CANDIDATES if Path(p).exists()), None)


def blas_reexec_pending() -> bool:
    """True when use_fast_blas() would re-exec: Linux, OpenBLAS installed, not yet preloaded."""
    return (sys.platform == "linux" and not os.environ.get("HOLO_MLX_NO_BLAS_REEXEC")
            and not os.environ.get(_REEXEC_MARK) and find_openblas() is not None
            and "openblas" not in os.environ.get("LD_PRELOAD", ""))


def use_fast_blas() -> None:
    """Re-exec this process with OpenBLAS preloaded when on Linux and it is installed.

    Call first thing in an entry point. Set HOLO_MLX_NO_BLAS_REEXEC=1 to opt out.
    """
    if not blas_reexec_pending():
        return
    library = find_openblas()
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(filter(None, [library, env.get("LD_PRELOAD")]))
    env[_REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def on_gpu() -> bool:
    return mx.default_device() == mx.gpu


def prefill_chunk() -> int:
    """Prompt tokens per decoder pass: bounds activation memory on long screenshots; a GPU keeps
    busy on longer chunks (mlx-lm's prefill step is 2048)."""
    return 2048 if on_gpu() else 512


def compute_dtype(stored: mx.Dtype) -> mx.Dtype:
    """Keep the stored float dtype on a GPU; float32 on the CPU backend."""
    return stored if on_gpu() else mx.float32


# MLX's CPU backend runs each stream's elementwise work on one thread, while OpenBLAS already
# uses every core: two streams fed independent halves of the work run those passes side by side
# (measured here on 2 cores: exp 31 -> 20 ms, GEMMs unchanged).
CPU_LANES = 2
_thread_streams = threading.local()  # an MLX stream can only be used by the thread that made it


def lanes() -> list[mx.Stream]:
    """Streams to spread independent work over: the default one, plus more on the CPU backend."""
    if on_gpu():  # Metal spreads every kernel over the GPU itself
        return [mx.default_stream(mx.gpu)]
    if not hasattr(_thread_streams, "cpu"):
        _thread_streams.cpu = [mx.new_stream(mx.cpu) for _ in range(CPU_LANES - 1)]
    return [mx.default_stream(mx.cpu), *_thread_streams.cpu]


def on_lanes(work, *per_part: list) -> list:
    """work(*args) for each part's args (one list per argument), each part on its own lane."""
    results = []
    for stream, args in zip(lanes(), zip(*per_part)):
        with mx.stream(stream):
            results.append(work(*args))
    return results


def joined(parts: list[mx.array], axis: int = 0) -> mx.array:
    """Parts concatenated along `axis`; a single part as it is, without a copy."""
    return mx.concatenate(parts, axis=axis) if len(parts) > 1 else parts[0]


@cache
def _openblas_threads():
    """OpenBLAS's thread count getter and setter when it is the BLAS in this process, else None."""
    process = ctypes.CDLL(None)  # the global scope: a preloaded OpenBLAS is in it
    if not hasattr(process, "openblas_set_num_threads"):
        return None
    return process.openblas_get_num_threads, process.openblas_set_num_threads


@contextmanager
def blas_threads_shared_by_lanes():
    """Within: OpenBLAS's threads are shared out among lanes() instead of each GEMM taking all.

    For work already split over the lanes, where a lane's elementwise work then runs beside the
    other lane's GEMM instead of competing with it (a 7B vision window block: 1.10 -> 1.03 s).
    """
    controls = None if on_gpu() else _openblas_threads()
    if controls is None:
        yield
        return
    get_threads, set_threads = controls
    threads = get_threads()
    set_threads(max(1, threads // len(lanes())))
    try:
        yield
    finally:
        set_threads(threads)


def device_name() -> str:
    return "gpu" if on_gpu() else "cpu"


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@cache
def _glibc():
    """The C library when it is glibc (it has malloc_trim), else None (macOS, musl)."""
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return libc if hasattr(libc, "malloc_trim") else None


def keep_freed_buffers() -> None:
    """Let the CPU backend reuse freed buffers instead of page-faulting fresh ones.

    MLX's CPU backend gets every array from malloc, and glibc serves large blocks with a fresh mmap
    each time: a 64 MB elementwise op then spends 80 % of its time faulting pages in (measured here:
    59 ms against 11 ms). Serving them from the heap makes freed memory reusable; the engine hands it
    back to the OS with release_freed_memory() when it goes idle.
    """
    if (libc := _glibc()) is not None and not on_gpu():
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)


def release_freed_memory() -> None:
    """Hand memory freed by finished work back to the OS: the server calls this when it goes idle."""
    if on_gpu():
        mx.clear_cache()
    elif (libc := _glibc()) is not None:
        libc.malloc_trim(0)
