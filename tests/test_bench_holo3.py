"""The Holo3 benchmarks on holo3-tiny, with minimal sizes: bench_runtime.py's three runtimes on the
Qwen3.5 hybrid, and bench_server.py's agent loops (the hybrid prefix cache resuming each turn, the
image budget evicting) against a live serve.py. They print figures; these check that the figures are sane."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
RUNTIME = REPO / "benchmarks" / "bench_runtime.py"
SERVER = REPO / "benchmarks" / "bench_server.py"
RUNTIMES = ("holo_mlx:float32", "torch:float32", "mlx_vlm:float32")


def rows_of(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 1000
        image.verify()  # raises on a truncated or corrupt file


@pytest.mark.slow  # times torch, mlx-vlm and holo_mlx, each in its own process
def test_runtime_quick_on_holo3_measures_decode_ttft_and_memory_of_every_runtime(tmp_path):
    results, chart = tmp_path / "runtime.csv", tmp_path / "runtime.png"
    run = subprocess.run(
        [sys.executable, str(RUNTIME), "--quick", "--preset", "holo3-tiny", "--workloads", "text,screenshot",
         "--screenshot", "640x360", "--csv", str(results), "--chart", str(chart)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    found = {(row["runtime"], row["workload"]): row for row in rows_of(results)}
    assert set(found) == {(runtime, workload) for runtime in RUNTIMES for workload in ("text", "screenshot")}
    for (runtime, workload), row in found.items():
        assert row["model"] == "preset holo3-tiny"
        assert float(row["decode_tps_avg"]) > 0 and float(row["ttft_s_avg"]) > 0, row
        assert float(row["peak_memory_gb"]) > 0 and float(row["peak_rss_gb"]) > 0, row
        # Every runtime got the same prompt: 640x360 at Holo3's patch 16 and merge 2 is 20 x 11 tokens.
        assert row["prompt_tokens"] == found[("holo_mlx:float32", workload)]["prompt_tokens"]
        assert re.search(rf"^ *{re.escape(runtime)} +{workload} +{row['prompt_tokens']} ", run.stdout, re.M)
    assert found[("holo_mlx:float32", "screenshot")]["image_tokens"] == "220"
    assert "holo_mlx:float32 / mlx_vlm:float32" in run.stdout  # the ratio table
    assert_png(chart)


@pytest.mark.server  # starts serve.py
def test_agent_loops_resume_each_turn_from_the_prefix_cache_and_the_budget_evicts(tmp_path, holo3_checkpoint):
    results, chart = tmp_path / "server.csv", tmp_path / "server.png"
    run = subprocess.run(
        [sys.executable, str(SERVER), "--model", str(holo3_checkpoint), "--label", "holo-mlx-test",
         "--workloads", "agent-loop,agent-budget", "--runs", "1", "--warmup", "0", "--max-tokens", "4",
         "--agent-turns", "3", "--budget-turns", "4", "--image-budget", "1:2", "--image-size", "320x180",
         "--csv", str(results), "--chart", str(chart)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = rows_of(results)
    loop = [row for row in rows if row["workload"] == "agent-loop"]
    budget = [row for row in rows if row["workload"] == "agent-budget"]
    assert [row["phase"] for row in loop] == ["turn 1", "turn 2", "turn 3"]
    assert [row["phase"] for row in budget] == ["turn 1", "turn 2", "turn 3", "turn 4"]
    for row in loop + budget:
        assert row["errors"] == "0" and row["short_requests"] == "0", row
        assert float(row["ttft_s_avg"]) > 0 and float(row["ttft_vs_turn1"]) > 0, row
    # A new screenshot each turn: one image more per turn.
    assert [row["images"] for row in loop] == ["1", "2", "3"]
    prompts = [int(float(row["prompt_tokens_avg"])) for row in loop]
    cached = [int(float(row["cached_tokens_avg"])) for row in loop]
    assert prompts[0] < prompts[1] < prompts[2]
    # Each turn resumes where the previous prompt's last message ended: all of it but the few
    # tokens that open the assistant's answer.
    for turn in (1, 2):
        assert prompts[turn - 1] - 10 < cached[turn] < prompts[turn - 1], (prompts, cached)
    # 1:2: at the third screenshot (more than 2) all but the latest become "[screenshot evicted]".
    assert [(row["images"], row["evicted"]) for row in budget] == [("1", "0"), ("2", "0"), ("1", "2"), ("2", "2")]
    assert "holo-mlx-test agent-loop: TTFT of turn 3 / turn 1 = " in run.stdout
    assert_png(chart.with_name("server-agent.png"))
