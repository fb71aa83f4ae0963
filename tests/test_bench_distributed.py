"""benchmarks/bench_distributed.py on the tiny checkpoint: one rank, two tensor-parallel and two
pipeline ranks over loopback, each with its figures and the bytes its ranks exchanged per token;
benchmarks/bench_replication.py: lm_head and the tower replicated vs split."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "bench_distributed.py"
pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # both benchmarks launch ranks with mlx.launch


def test_each_configuration_reports_speed_and_the_bytes_it_moved(hf_root_checkpoint, tmp_path):
    out = tmp_path / "distributed.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--model", str(hf_root_checkpoint), "--tokens", "4,12",
                          "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["private_network"], run.stderr  # each run in its own network namespace: other tests' traffic is not counted
    rows = {row["configuration"]: row for row in report["rows"]}
    assert list(rows) == ["1 rank", "2 ranks, tensor", "2 ranks, pipeline"]
    assert all(row["decode_tps"] > 0 and row["ttft_s"] > 0 for row in rows.values())
    config = json.loads((hf_root_checkpoint / "config.json").read_text())
    hidden = config["hidden_size"] * 4  # float32 on the CPU backend
    # At least the payload: two all-sums per layer, each rank sending its half twice (ring), for tensor
    # parallelism; one hand-over and the final gather for the pipeline. Headers come on top.
    assert rows["2 ranks, tensor"]["bytes_per_token"] >= 4 * hidden * config["num_hidden_layers"]
    assert 3 * hidden <= rows["2 ranks, pipeline"]["bytes_per_token"] < rows["2 ranks, tensor"]["bytes_per_token"]
    assert rows["1 rank"]["bytes_per_token"] == 0  # one rank talks to no one
    assert "bytes exchanged / token" in run.stdout and "network namespace of their own" in run.stdout


def test_replication_choices_report_both_sides_and_what_a_split_would_move(hf_root_checkpoint, tmp_path):
    out = tmp_path / "replication.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_replication.py"), "--model",
                          str(hf_root_checkpoint), "--screenshot", "200x160", "--repeats", "2", "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lm_head_1, lm_head_8, tower = json.loads(out.read_text())["rows"]
    config = json.loads((hf_root_checkpoint / "config.json").read_text())
    vocab, hidden = config["vocab_size"], config["hidden_size"]
    assert all(row[key] > 0 for row in (lm_head_1, lm_head_8, tower)
               for key in ("alone_ms", "replicated_ms", "split_ms", "of_which_link_ms"))
    # A split lm_head gathers the other rank's half of the logits (float32 here) for every row of the batch.
    assert lm_head_1["bytes_per_rank"] == vocab // 2 * 4 and lm_head_8["bytes_per_rank"] == 8 * vocab // 2 * 4
    assert lm_head_1["memory_saved_per_rank"] == vocab * hidden * 4 // 2
    # The tower's features: one row of the decoder's width per merged patch (200x160 -> 14x12 patches of 14 px,
    # merged 2x2 -> 7x6).
    features = int(tower["choice"].split("(")[1].split()[0])
    assert features == 42 and tower["bytes_per_rank"] == features * hidden * 4
