"""The CPU backend's allocator policy: freed buffers are reused while working, returned when idle."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="glibc allocator tuning is Linux-only")

# Allocates 400 MB of MLX arrays in 8 MB blocks (glibc would mmap each one by default), frees them,
# then prints RSS in MiB: after the burst, after freeing, after release_freed_memory().
SCRIPT = textwrap.dedent("""
    import mlx.core as mx
    from holo_mlx.runtime import keep_freed_buffers, release_freed_memory

    def rss_mib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS:"))

    keep_freed_buffers()
    blocks = [mx.full((2 << 20,), float(i)) for i in range(50)]
    mx.eval(blocks)
    burst = rss_mib()
    del blocks
    freed = rss_mib()
    release_freed_memory()
    print(burst, freed, rss_mib())
""")


def test_freed_buffers_stay_for_reuse_until_released():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    burst, freed, released = map(int, result.stdout.split())
    assert freed > burst - 100, f"freed buffers went back to the OS at once ({burst} -> {freed} MiB)"
    assert released < freed - 300, f"release_freed_memory() kept the memory ({freed} -> {released} MiB)"
