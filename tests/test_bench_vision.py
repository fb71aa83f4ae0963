"""benchmarks/bench_vision.py on the tiny preset: all three runtimes run, alternate, and agree."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_tiny_run_times_every_runtime_per_run_and_features_match_torch():
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_vision.py", "--preset", "tiny", "--width", "300", "--height", "200",
         "--runs", "2", "--warmup", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "grid (1, 14, 22), 308 patches, 77 tokens" in out
    for runtime in ("torch float32", "holo_mlx float32", "mlx-vlm float32"):
        times = re.search(rf"{runtime}.*: +([\d.]+) s median \(([\d.]+), ([\d.]+)\)", out)
        assert times, out
    assert float(re.search(r"max \|diff\| vs torch: ([\d.e+-]+)", out).group(1)) < 1e-5
    assert len(re.search(r"same, run by run: (.*)", out).group(1).split(", ")) == 2
    assert re.search(r"holo_mlx / mlx-vlm time: [\d.]+", out)
