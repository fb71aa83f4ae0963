"""Tensor parallelism (holo_mlx/distributed.py): ranks launched by the real `mlx.launch` on the ring
backend over loopback, against one process on the same checkpoints."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from holo_mlx.testing import synthetic_screenshot

LAUNCHER = Path(sys.executable).parent / "mlx.launch"
PROBE = Path(__file__).parent / "distributed_probe.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(ranks: int, *command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python COMMAND` on `ranks` ranks of 127.0.0.1 (one process, as is, when ranks is 1)."""
    if ranks == 1:
        argv = [sys.executable, *command]
    else:
        argv = [str(LAUNCHER), "--backend", "ring", "--hosts", "127.0.0.1", "-n", str(ranks),
                "--starting-port", str(free_port()), "--python", sys.executable, "--", *command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def generated(ranks: int, checkpoint: Path, image: Path, *flags: str) -> str:
    result = launch(ranks, "-m", "holo_mlx.generate", "--model", str(checkpoint), "--image", str(image),
                    "--prompt", "Click the Submit button.", "--max-tokens", "24", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    text, _, stats = result.stdout.partition("\n==========\n")
    assert stats.count("Generation: 24 tokens") == 1  # rank 0 alone prints
    return text


@pytest.mark.parametrize("checkpoint", ["hf_root_checkpoint", "holo2_moe_root_checkpoint"])
def test_two_ranks_generate_what_one_process_does(checkpoint, request, tmp_path):
    path, image = request.getfixturevalue(checkpoint), tmp_path / "screen.png"
    synthetic_screenshot(333, 217, seed=5).save(image)
    alone = generated(1, path, image)
    assert generated(2, path, image) == alone  # tensor parallel
    assert generated(2, path, image, "--pipeline") == alone


def probe(ranks: int, checkpoint: Path, *flags: str) -> dict:
    result = launch(ranks, str(PROBE), str(checkpoint), *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("checkpoint", ["hf_root_checkpoint", "holo2_moe_root_checkpoint"])
def test_each_rank_loads_half_the_decoder_and_never_the_whole(checkpoint, request):
    path = request.getfixturevalue(checkpoint)
    alone, split = probe(1, path), probe(2, path)
    whole = alone["decoder_layer_bytes"]
    assert [rank["rank"] for rank in split["ranks"]] == [0, 1] and len(alone["ranks"]) == 1
    # Half of every projection; the norms (and an MoE router) are whole on each rank.
    assert whole / 2 <= split["decoder_layer_bytes"] < 0.52 * whole
    for rank in split["ranks"]:
        assert rank["weight_bytes"] == split["replicated_bytes"] + split["decoder_layer_bytes"]
        assert rank["weight_bytes"] == alone["ranks"][0]["weight_bytes"] - (whole - split["decoder_layer_bytes"])
    # Read from the files tensor by tensor: rank 0 never held its neighbour's half.
    assert split["peak_memory"] - split["ranks"][0]["weight_bytes"] < whole / 4


@pytest.mark.parametrize("checkpoint", ["hf_root_checkpoint", "holo2_moe_root_checkpoint"])
def test_pipeline_ranks_load_their_own_layers_only(checkpoint, request):
    path = request.getfixturevalue(checkpoint)
    alone, split = probe(1, path), probe(2, path, "--pipeline")
    replicated = split["replicated_bytes"]
    assert replicated == alone["replicated_bytes"]
    # The layers are split, none held twice: the ranks' layers add up to the whole decoder.
    layers = [rank["weight_bytes"] - replicated for rank in split["ranks"]]
    assert sum(layers) == alone["decoder_layer_bytes"] and all(layers)
    assert split["peak_memory"] - split["ranks"][0]["weight_bytes"] < alone["decoder_layer_bytes"] / 4


def test_a_rank_count_that_does_not_divide_the_kv_heads_is_refused(hf_root_checkpoint):
    result = launch(3, str(PROBE), str(hf_root_checkpoint))
    assert "num_key_value_heads = 2 does not split over 3 ranks" in result.stdout
    # mlx.launch itself exits 0: it reports the first rank out (the others it stops) with its status.
    assert "exited with code 3" in result.stderr


def test_the_server_refuses_to_run_once_per_rank(hf_root_checkpoint):
    server = Path(__file__).parent.parent / "serve.py"
    result = launch(2, str(server), "--model", str(hf_root_checkpoint), "--port", "0")
    assert "serve.py does not run under mlx.launch yet" in result.stderr
