"""glibc's allocator tuned for MLX's CPU backend: freed buffers are reused while it works and
handed back to the OS when the server idles. Nothing happens outside glibc (macOS, musl).

The CPU backend gets every array from malloc, and glibc serves large blocks with a fresh mmap each
time and unmaps them on free: each large op's output then faults its pages in again, which made
elementwise ops several times slower (docs/benchmarks.md, CPU kernels).
"""

import ctypes
import ctypes.util
import sys
from functools import cache

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@cache
def _glibc():
    """The C library when it is glibc (it has malloc_trim), else None."""
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return libc if hasattr(libc, "malloc_trim") else None


def keep_freed_buffers() -> None:
    """Serve large blocks from the heap and keep freed ones there, so later arrays reuse them."""
    if (libc := _glibc()) is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)


def trim() -> None:
    """Hand the heap's freed memory back to the OS (malloc_trim)."""
    if (libc := _glibc()) is not None:
        libc.malloc_trim(0)
