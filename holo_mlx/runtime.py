"""Where MLX runs and in which precision: Metal on a Mac, the CPU backend elsewhere.

On Linux the `mlx[cpu]` wheel bundles a reference BLAS (~60x slower float32 GEMM than OpenBLAS);
an installed OpenBLAS is preloaded by re-executing the process, since LD_PRELOAD only takes effect
at process start. bfloat16 and quantized matmuls with bfloat16 scales are slow on the CPU backend,
so weights are cast to float32 there.
"""

import os
import sys
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


def compute_dtype(stored: mx.Dtype) -> mx.Dtype:
    """Keep the stored float dtype on a GPU; float32 on the CPU backend."""
    return stored if on_gpu() else mx.float32


def device_name() -> str:
    return "gpu" if on_gpu() else "cpu"
