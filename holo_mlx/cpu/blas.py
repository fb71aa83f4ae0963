"""OpenBLAS for MLX's CPU backend on Linux: preloaded in place of the wheel's BLAS, its threads
shared by the lanes while they split the work.

The `mlx[cpu]` wheel bundles a reference BLAS whose float32 GEMM is far slower than OpenBLAS's
(docs/benchmarks.md). MLX resolves its BLAS symbols when it loads, so an installed OpenBLAS goes
into LD_PRELOAD, which only takes effect at process start: the process re-executes itself.
"""

import ctypes
import os
import sys
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from .lanes import lanes

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
_REEXEC_MARK = "HOLO_MLX_BLAS_REEXEC"


def find_openblas() -> str | None:
    return next((p for p in OPENBLAS_CANDIDATES if Path(p).exists()), None)


def reexec_pending() -> bool:
    """True when reexec_with_openblas() would re-exec: Linux, OpenBLAS installed, not yet preloaded,
    and HOLO_MLX_NO_BLAS_REEXEC unset."""
    return (sys.platform == "linux" and not os.environ.get("HOLO_MLX_NO_BLAS_REEXEC")
            and not os.environ.get(_REEXEC_MARK) and find_openblas() is not None
            and "openblas" not in os.environ.get("LD_PRELOAD", ""))


def reexec_with_openblas() -> None:
    """Re-exec this process, same arguments, with OpenBLAS preloaded (when reexec_pending())."""
    if not reexec_pending():
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(filter(None, [find_openblas(), env.get("LD_PRELOAD")]))
    env[_REEXEC_MARK] = "1"  # once: the new process must not re-exec again
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


@cache
def _openblas_threads():
    """OpenBLAS's thread count getter and setter when it is the BLAS in this process, else None."""
    process = ctypes.CDLL(None)  # the global scope: a preloaded OpenBLAS is in it
    if not hasattr(process, "openblas_set_num_threads"):
        return None
    return process.openblas_get_num_threads, process.openblas_set_num_threads


@contextmanager
def threads_shared_by_lanes():
    """Within: OpenBLAS's threads are shared out among the lanes instead of each GEMM taking all.

    For work already split over the lanes: a lane's elementwise work then runs beside the other
    lane's GEMM instead of competing with it for the cores.
    """
    controls = _openblas_threads()
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
