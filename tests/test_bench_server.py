"""benchmarks/bench_server.py --quick and benchmarks/soak.py --quick against a live serve.py on a tiny checkpoint."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks" / "bench_server.py"
SOAK = REPO / "benchmarks" / "soak.py"
pytestmark = pytest.mark.server  # the benchmarks start serve.py


def test_bench_server_quick_writes_rows_for_every_workload_and_level_and_charts(tmp_path, hf_root_checkpoint):
    results, chart = tmp_path / "server.csv", tmp_path / "server.png"
    run = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--model", str(hf_root_checkpoint), "--image-size", "640x360",
         "--label", "holo-mlx-test", "--csv", str(results), "--chart", str(chart)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    with results.open(newline="") as file:
        rows = list(csv.DictReader(file))
    levels = {(row["workload"], row["concurrency"]): row for row in rows if row["workload"] != "repeat-screenshot"}
    assert set(levels) == {(workload, clients) for workload in ("text", "image") for clients in ("1", "2")}
    for row in levels.values():
        assert row["label"] == "holo-mlx-test" and row["errors"] == "0", row
        assert float(row["aggregate_tps"]) > 0 and float(row["ttft_s_p50"]) > 0 and float(row["e2e_s_p90"]) > 0
        # ignore_eos: every request generated exactly --max-tokens (8 in quick mode) tokens
        assert row["short_requests"] == "0" and int(row["completion_tokens_total"]) == 8 * int(row["requests"])
    assert int(float(levels[("image", "1")]["prompt_tokens_avg"])) > 250  # 640x360 -> 23 x 13 visual tokens
    assert rows[0]["mlx_version"] and rows[0]["cpu"]

    repeat = {row["phase"]: row for row in rows if row["workload"] == "repeat-screenshot"}
    assert set(repeat) == {"cold", "warm_image", "warm_identical"}
    prompt = float(repeat["warm_identical"]["prompt_tokens_avg"])
    # The identical request is served from the prefix cache up to its last token.
    assert float(repeat["warm_identical"]["cached_tokens_avg"]) == prompt - 1
    assert float(repeat["warm_image"]["cached_tokens_avg"]) > float(repeat["cold"]["cached_tokens_avg"])

    for path in (chart, chart.with_name("server-repeat.png")):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 1000
            image.verify()  # raises on a truncated or corrupt file


@pytest.mark.slow
def test_soak_quick_reports_no_server_errors_no_orphans_and_exits_0(tmp_path, hf_root_checkpoint):
    figures = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, str(SOAK), "--quick", "--model", str(hf_root_checkpoint), "--json", str(figures)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    output = run.stdout[-4000:] + run.stderr[-3000:]
    assert "1. server errors: 0 " in run.stdout, output
    assert "2. orphaned generations: 0 " in run.stdout, output
    assert run.returncode == 0, output
    result = json.loads(figures.read_text())
    assert result["sent"] == 60 and result["server_errors"] == 0 and result["orphans"] == 0
    kinds = {row["kind"] for row in result["rows"]}
    assert {"chat_image", "stream_cut", "abandon", "bad_json"} <= kinds
