"""Where MLX runs and in which precision: Metal on a Mac, the CPU backend elsewhere.

The device policy lives here; what only the CPU backend needs (OpenBLAS, the allocator's tuning,
its kernels) is in holo_mlx/cpu, reached through these entry points. bfloat16 and quantized
matmuls with bfloat16 scales are slow on the CPU backend, so weights are cast to float32 there.
"""

import logging

import mlx.core as mx

from .cpu import allocator, blas

log = logging.getLogger(__name__)


def on_gpu() -> bool:
    return mx.default_device() == mx.gpu


def device_name() -> str:
    return "gpu" if on_gpu() else "cpu"


def prefill_chunk() -> int:
    """Prompt tokens per decoder pass: bounds activation memory on long screenshots; a GPU keeps
    busy on longer chunks (mlx-lm's prefill step is 2048)."""
    return 2048 if on_gpu() else 512


def compute_dtype(stored: mx.Dtype) -> mx.Dtype:
    """Keep the stored float dtype on a GPU; float32 on the CPU backend."""
    return stored if on_gpu() else mx.float32


def blas_reexec_pending() -> bool:
    """True when use_fast_blas() would re-exec the process (the CPU backend on Linux, OpenBLAS
    installed and not yet preloaded)."""
    return not on_gpu() and blas.reexec_pending()


def use_fast_blas() -> None:
    """Re-exec this process with OpenBLAS preloaded when blas_reexec_pending().

    Call first thing in an entry point. Set HOLO_MLX_NO_BLAS_REEXEC=1 to opt out.
    """
    if blas_reexec_pending():
        blas.reexec_with_openblas()


def keep_freed_buffers() -> None:
    """On the CPU backend, let malloc reuse freed buffers instead of mapping fresh ones; the
    engine hands them back with release_freed_memory() when it goes idle."""
    if not on_gpu():
        allocator.keep_freed_buffers()


def release_freed_memory() -> None:
    """Hand memory freed by finished work back to the OS: the server calls this when it goes idle."""
    if on_gpu():
        mx.clear_cache()
    else:
        allocator.trim()


def wire_weights(weight_bytes: int) -> None:
    """On Metal, let MLX keep up to the recommended working set wired, as mlx-lm's generate does:
    the weights then stay resident between requests. A model past that size will be slow."""
    if not mx.metal.is_available():
        return
    limit = mx.device_info()["max_recommended_working_set_size"]
    mx.set_wired_limit(limit)
    if weight_bytes > limit:
        log.warning("the weights take %d MB, more than the %d MB Metal recommends keeping resident: "
                    "generation will be slow", weight_bytes >> 20, limit >> 20)
