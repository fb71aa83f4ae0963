"""Memory policy: on the CPU backend freed buffers are reused while working and returned when idle;
on Metal the weights are wired."""

import logging
import subprocess
import sys
import textwrap

import mlx.core as mx
import pytest

from holo_mlx import runtime

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


@pytest.mark.skipif(sys.platform != "linux", reason="glibc allocator tuning is Linux-only")
def test_freed_buffers_stay_for_reuse_until_released():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    burst, freed, released = map(int, result.stdout.split())
    assert freed > burst - 100, f"freed buffers went back to the OS at once ({burst} -> {freed} MiB)"
    assert released < freed - 300, f"release_freed_memory() kept the memory ({freed} -> {released} MiB)"


def test_weights_are_wired_on_metal_with_a_warning_past_the_recommended_size(monkeypatch, caplog):
    limits = []
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    monkeypatch.setattr(mx, "device_info", lambda: {"max_recommended_working_set_size": 100 << 20})
    monkeypatch.setattr(mx, "set_wired_limit", limits.append)
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        runtime.wire_weights(50 << 20)
        assert limits == [100 << 20] and not caplog.records
        runtime.wire_weights(150 << 20)
    assert "150 MB" in caplog.text and "100 MB" in caplog.text


def test_nothing_is_wired_without_metal(monkeypatch):
    monkeypatch.setattr(mx.metal, "is_available", lambda: False)
    monkeypatch.setattr(mx, "set_wired_limit", lambda limit: pytest.fail("wired without Metal"))
    runtime.wire_weights(1 << 40)
