"""benchmarks/bench_runtime.py --quick end to end: every runtime and workload lands in the CSV and the chart."""

import csv
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "bench_runtime.py"


def test_quick_run_writes_rows_for_every_runtime_and_workload_and_a_chart(tmp_path):
    results, chart = tmp_path / "runtime.csv", tmp_path / "runtime.png"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--preset", "tiny", "--csv", str(results), "--chart", str(chart)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    with results.open(newline="") as file:
        rows = list(csv.DictReader(file))
    found = {(row["runtime"], row["workload"]): row for row in rows}
    for runtime in ("holo_mlx:float32", "torch:float32", "mlx_vlm:float32"):
        for workload in ("text", "screenshot", "screenshot_twice"):
            row = found[(runtime, workload)]
            assert float(row["prefill_tps_avg"]) > 0 and float(row["decode_tps_avg"]) > 0, row
            assert float(row["ttft_s_avg"]) > 0 and float(row["peak_rss_gb"]) > 0
    screenshot = found[("holo_mlx:float32", "screenshot")]
    assert int(screenshot["image_tokens"]) > 1000  # 1920x1080 at holo_mlx's default resize limits
    assert screenshot["prompt_tokens"] == found[("torch:float32", "screenshot")]["prompt_tokens"]
    assert rows[0]["mlx_version"] and rows[0]["cpu"] and float(rows[0]["bandwidth_gbs"]) > 0

    with Image.open(chart) as image:
        assert image.format == "PNG" and image.width > 1000
        image.verify()  # raises on a truncated or corrupt file
