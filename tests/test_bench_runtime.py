"""benchmarks/bench_runtime.py --quick end to end: every runtime and workload lands in the CSV and the chart."""

import csv
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "bench_runtime.py"
pytestmark = pytest.mark.slow  # each run times torch, mlx-vlm and holo_mlx
QUICK_RUNTIMES = ("holo_mlx:float32", "torch:float32", "mlx_vlm:float32")


def quick_run(tmp_path: Path, preset: str, *extra: str) -> tuple[str, dict]:
    """Run --quick on a preset; its stdout and the CSV rows by (runtime, workload)."""
    results, chart = tmp_path / "runtime.csv", tmp_path / "runtime.png"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--preset", preset, "--csv", str(results), "--chart", str(chart),
         *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with results.open(newline="") as file:
        rows = list(csv.DictReader(file))
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.width > 1000
        image.verify()  # raises on a truncated or corrupt file
    return run.stdout, {(row["runtime"], row["workload"]): row for row in rows}


def assert_measured(stdout: str, found: dict, workloads: tuple[str, ...]) -> None:
    """Every quick runtime has positive figures for every workload, in the CSV and the printed table."""
    assert {key for key in found} == {(runtime, workload) for runtime in QUICK_RUNTIMES for workload in workloads}
    for (runtime, workload), row in found.items():
        assert float(row["prefill_tps_avg"]) > 0 and float(row["decode_tps_avg"]) > 0, row
        assert float(row["ttft_s_avg"]) > 0 and float(row["peak_rss_gb"]) > 0
        # runtime, workload, prompt tokens, then load s, TTFT s, ... as printed
        line = re.search(rf"^ *{re.escape(runtime)} +{workload} +{row['prompt_tokens']} +([\d. ]+)", stdout, re.M)
        assert line and len(line.group(1).split()) >= 8, stdout


def test_quick_run_writes_rows_for_every_runtime_and_workload_and_a_chart(tmp_path):
    stdout, found = quick_run(tmp_path, "tiny")
    assert_measured(stdout, found, ("text", "screenshot", "screenshot_twice"))
    screenshot = found[("holo_mlx:float32", "screenshot")]
    assert int(screenshot["image_tokens"]) > 1000  # 1920x1080 at holo_mlx's default resize limits
    assert screenshot["prompt_tokens"] == found[("torch:float32", "screenshot")]["prompt_tokens"]
    rows = list(found.values())
    assert rows[0]["mlx_version"] and rows[0]["cpu"] and float(rows[0]["bandwidth_gbs"]) > 0


def test_quick_run_on_holo2_measures_every_runtime_on_the_same_screenshot_prompt(tmp_path):
    # screenshot_twice left out (nothing new to check), and a smaller screenshot than the default's.
    stdout, found = quick_run(tmp_path, "holo2-tiny", "--workloads", "text,screenshot", "--screenshot", "700x390")
    assert_measured(stdout, found, ("text", "screenshot"))
    for runtime in QUICK_RUNTIMES:
        screenshot = found[(runtime, "screenshot")]
        # Holo2 keeps the screenshot whole, resized to multiples of 32: 704x384, 22x12 tokens.
        assert screenshot["image_tokens"] == "264", screenshot
        assert screenshot["prompt_tokens"] == found[("holo_mlx:float32", "screenshot")]["prompt_tokens"]
        assert screenshot["model"] == "preset holo2-tiny"
    bytes_per_token = {found[(runtime, "text")]["decode_bytes_per_token"] for runtime in QUICK_RUNTIMES}
    assert len(bytes_per_token) == 1, bytes_per_token  # the same weights in every runtime


def test_quick_run_on_holo2_moe_loads_the_moe_classes_and_counts_the_active_experts(tmp_path):
    stdout, found = quick_run(tmp_path, "holo2-moe-tiny", "--workloads", "text")
    assert_measured(stdout, found, ("text",))
    # A decoded token reads the decoder (the untied embedding aside) but only 2 of each MoE layer's
    # 4 experts: every runtime counts that from its own model.
    decoder = experts = 0
    for file in (REPO / ".cache" / "bench" / "holo2-moe-tiny" / "mlx-float32").glob("*.safetensors"):
        with safe_open(file, "numpy") as tensors:
            for key in tensors.keys():
                if key.startswith("language_model.") and ".embed_tokens." not in key:
                    size = 4 * math.prod(tensors.get_slice(key).get_shape())
                    decoder += size
                    experts += size if ".switch_mlp." in key else 0
    assert experts > 0
    for runtime in QUICK_RUNTIMES:
        assert int(found[(runtime, "text")]["decode_bytes_per_token"]) == decoder - experts // 2, runtime
