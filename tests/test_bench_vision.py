"""benchmarks/bench_vision.py on the tiny presets: all three runtimes run, alternate, and agree."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNTIMES = ("torch float32", "holo_mlx float32", "mlx-vlm float32")


def bench(preset: str, runs: int) -> str:
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_vision.py", "--preset", preset, "--width", "300", "--height", "200",
         "--runs", str(runs), "--warmup", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_tiny_run_times_every_runtime_per_run_and_features_match_torch():
    out = bench("tiny", runs=2)
    assert "grid (1, 14, 22), 308 patches, 77 tokens" in out
    for runtime in RUNTIMES:
        times = re.search(rf"{runtime}.*: +([\d.]+) s median \(([\d.]+), ([\d.]+)\)", out)
        assert times, out
    assert float(re.search(r"max \|diff\| vs torch: ([\d.e+-]+)", out).group(1)) < 1e-5
    assert len(re.search(r"same, run by run: (.*)", out).group(1).split(", ")) == 2
    assert re.search(r"holo_mlx / mlx-vlm time: [\d.]+", out)


def test_holo2_tiny_run_matches_torch_features_and_deepstack_features():
    out = bench("holo2-tiny", runs=1)
    # Holo2's processor: patch 16, factor 32, 300x200 scaled up to its 65,536-pixel floor.
    assert "300x200 -> (320, 224), grid (1, 14, 20), 280 patches, 70 tokens" in out, out
    assert "DeepStack after blocks [0, 1]" in out
    for runtime in RUNTIMES:
        assert re.search(rf"{runtime}.*: +[\d.]+ s median \([\d.]+\)", out), out
    for label in (r"max \|diff\| vs torch", r"mlx-vlm max \|diff\|"):
        diffs = re.search(rf"{label}: ([\d.e+-]+), DeepStack \(2 levels\) ([\d.e+-]+)", out)
        assert diffs, out
        assert float(diffs.group(1)) < 1e-5 and float(diffs.group(2)) < 1e-5, diffs.group(0)
    assert re.search(r"holo_mlx / mlx-vlm time: [\d.]+", out)
