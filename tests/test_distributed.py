"""One model across ranks (holo_mlx/distributed.py, engine/sync.py): tensor and pipeline
parallelism, ranks launched by the real `mlx.launch` on the ring backend over loopback, the
generate CLI and the server against one process on the same checkpoints."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from convert.convert import convert
from holo_mlx.testing import synthetic_screenshot
from test_server import Server, data_url, fill_ranks_stdin

LAUNCHER = Path(sys.executable).parent / "mlx.launch"
PROBE = Path(__file__).parent / "distributed_probe.py"
pytestmark = pytest.mark.distributed

# Launches' outputs, kept for the session: several tests compare their ranks with the same one-process
# baseline (same command), which one process computes alike every time.
LAUNCHED: dict[tuple, str] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(ranks: int, *command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python COMMAND` on `ranks` ranks of 127.0.0.1 (one process, as is, when ranks is 1)."""
    argv = [sys.executable, *command] if ranks == 1 else [*launcher(ranks), *command]
    stdin, keep_open = os.pipe()
    fill_ranks_stdin(keep_open)
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=stdin)
    finally:
        os.close(stdin), os.close(keep_open)


def launcher(ranks: int = 2) -> tuple[str, ...]:
    """mlx.launch for `ranks` ranks on 127.0.0.1, the ring backend, this python; the command follows."""
    return (str(LAUNCHER), "--backend", "ring", "--hosts", "127.0.0.1", "-n", str(ranks),
            "--starting-port", str(free_port()), "--python", sys.executable, "--")


def launched(ranks: int, *command: str) -> str:
    """The stdout of `launch(ranks, *command)`, launched once per session."""
    key = (ranks, *command)
    if key not in LAUNCHED:
        result = launch(ranks, *command)
        # mlx.launch exits 0 even when a rank failed (it reports the first rank out): no output is a failure too.
        assert result.returncode == 0 and result.stdout, result.stderr[-3000:]
        LAUNCHED[key] = result.stdout
    return LAUNCHED[key]


def generated(ranks: int, checkpoint: Path, image: Path, *flags: str) -> str:
    """What the generate CLI prints on `ranks` ranks (rank 0's text) for a screenshot."""
    stdout = launched(ranks, "-m", "holo_mlx.generate", "--model", str(checkpoint), "--image", str(image),
                      "--prompt", "Click the Submit button.", "--max-tokens", "24", *flags)
    text, _, stats = stdout.partition("\n==========\n")
    assert stats.count("Generation: 24 tokens") == 1  # rank 0 alone prints
    return text


def probe(*checkpoints: Path) -> dict[str, dict]:
    """distributed_probe.py's answers for each checkpoint, by its path: "alone" from one process,
    "tensor" and "pipeline" from one launch of two ranks."""
    answers = {}
    for ranks in (1, 2):
        for path, splits in json.loads(launched(ranks, str(PROBE), *map(str, checkpoints))).items():
            answers.setdefault(path, {}).update(splits)
    return answers


@pytest.fixture(scope="module")
def probed(hf_root_checkpoint, holo2_moe_root_checkpoint) -> dict[str, dict]:
    return probe(hf_root_checkpoint, holo2_moe_root_checkpoint)


@pytest.mark.parametrize("checkpoint", ["hf_root_checkpoint", "holo2_moe_root_checkpoint"])
@pytest.mark.slow
def test_two_ranks_generate_what_one_process_does(checkpoint, request, probed):
    answers = probed[str(request.getfixturevalue(checkpoint))]
    assert answers["tensor"]["text"] == answers["alone"]["text"]
    assert answers["pipeline"]["text"] == answers["alone"]["text"]


@pytest.fixture(scope="module")
def quantized_moe(holo2_moe_root_checkpoint, module_tmp_factory) -> tuple[Path, Path]:
    """The MoE checkpoint in 4 bits, experts too, and a screenshot: made once for both splits, which
    then share its one-process answer."""
    folder = module_tmp_factory("quantized")
    synthetic_screenshot(200, 160, seed=2).save(folder / "screen.png")
    return convert(str(holo2_moe_root_checkpoint), folder / "q4", quantize=True, q_bits=4), folder / "screen.png"


@pytest.mark.parametrize("split", [[], ["--pipeline"]])
@pytest.mark.slow
def test_a_quantized_folder_splits_too(quantized_moe, split):
    # The generate CLI on the ranks, as users run it (the probe's tests call the engine themselves).
    folder, image = quantized_moe
    assert generated(2, folder, image, *split) == generated(1, folder, image)


@pytest.mark.parametrize("checkpoint", ["hf_root_checkpoint", "holo2_moe_root_checkpoint"])
@pytest.mark.slow
def test_each_rank_loads_half_the_decoder_and_never_the_whole(checkpoint, request, probed):
    answers = probed[str(request.getfixturevalue(checkpoint))]
    alone, split = answers["alone"], answers["tensor"]
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
def test_pipeline_ranks_load_their_own_layers_only(checkpoint, request, probed):
    answers = probed[str(request.getfixturevalue(checkpoint))]
    alone, split = answers["alone"], answers["pipeline"]
    replicated = split["replicated_bytes"]
    assert replicated == alone["replicated_bytes"]
    # The layers are split, none held twice: the ranks' layers add up to the whole decoder.
    layers = [rank["weight_bytes"] - replicated for rank in split["ranks"]]
    assert sum(layers) == alone["decoder_layer_bytes"] and all(layers)
    assert split["peak_memory"] - split["ranks"][0]["weight_bytes"] < alone["decoder_layer_bytes"] / 4


@pytest.mark.slow
def test_a_rank_count_that_does_not_divide_the_kv_heads_is_refused(hf_root_checkpoint):
    result = launch(3, str(PROBE), str(hf_root_checkpoint))
    assert "num_key_value_heads = 2 does not split over 3 ranks" in result.stdout
    # mlx.launch itself exits 0: it reports the first rank out (the others it stops) with its status.
    assert "exited with code 3" in result.stderr


# --- the server on two ranks ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alone(shared_server, hf_root_checkpoint):
    return shared_server("--model", str(hf_root_checkpoint), "--max-num-seqs", "4")  # test_server_engine's too


@pytest.fixture(scope="module", params=["tensor", "pipeline"])
def ranked(request, hf_root_checkpoint):
    """Two ranks serving, started once for the module per split: the last test of each ends it (Ctrl-C
    or a killed rank) rather than start ranks of its own, the costly part."""
    flags = ["--pipeline"] if request.param == "pipeline" else []
    running = Server("--model", str(hf_root_checkpoint), "--max-num-seqs", "4", *flags, launcher=launcher())
    yield running
    running.stop()


SHOT = data_url(synthetic_screenshot(400, 300, seed=3))
CONVERSATIONS = [
    [{"role": "user", "content": "Say hi."}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": SHOT}}, {"type": "text", "text": "Click OK."}]}],
    [{"role": "system", "content": "You are Holo."}, {"role": "user", "content": "Count to three."}],
    [{"role": "user", "content": "Scroll down."}],
]


def answers(server: Server, together: bool) -> list[str]:
    def ask(messages):
        response = server.post("/v1/chat/completions", {"messages": messages, "max_tokens": 12, "temperature": 0,
                                                       "ignore_eos": True})
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    if not together:
        return [ask(messages) for messages in CONVERSATIONS]
    with ThreadPoolExecutor(len(CONVERSATIONS)) as pool:
        return list(pool.map(ask, CONVERSATIONS))


JSON_ASK = {"response_format": {"type": "json_object"}, "messages": CONVERSATIONS[1], "max_tokens": 16,
            "temperature": 0}


def embeddings(server: Server) -> np.ndarray:
    return np.array([item["embedding"] for item in server.post("/v1/embeddings", {"input": ["Hello", "world"]})
                     .json()["data"]])


@pytest.fixture(scope="module")
def one_process(alone) -> dict:
    """The one-process server's answers that each split (tensor, pipeline) is compared with, asked once."""
    return {"answers": answers(alone, together=False), "embeddings": embeddings(alone),
            "json": alone.post("/v1/chat/completions", JSON_ASK).json()["choices"]}


@pytest.mark.slow
def test_two_ranks_serve_what_one_process_does(one_process, ranked):
    expected = one_process["answers"]
    assert answers(ranked, together=False) == expected  # text, a screenshot, one by one
    assert answers(ranked, together=True) == expected  # and batched
    assert ranked.post("/v1/chat/completions", JSON_ASK).json()["choices"] == one_process["json"]
    np.testing.assert_allclose(embeddings(ranked), one_process["embeddings"], atol=1e-5)


@pytest.mark.slow  # the two-rank servers it reads take 20-30 s to start
def test_health_names_both_ranks_and_their_weights(alone, ranked):
    (one,) = httpx.get(f"{alone.url}/health").json()["ranks"]
    two = httpx.get(f"{ranked.url}/health").json()["ranks"]
    assert [rank["rank"] for rank in two] == [0, 1] and all(rank["host"] == one["host"] for rank in two)
    # Each holds the replicated weights and its half of the decoder: together more than one, each less.
    assert all(rank["weight_bytes"] < one["weight_bytes"] for rank in two)
    assert sum(rank["weight_bytes"] for rank in two) > one["weight_bytes"]


@pytest.mark.server
def test_a_rank_started_with_other_flags_is_refused(hf_root_checkpoint):
    # Rank 1 gets one flag more than rank 0, as a mistyped command on one host would.
    code = ("import os, runpy, sys; sys.argv = sys.argv[1:] + (['--max-num-seqs', '3'] "
            "if os.environ['MLX_RANK'] == '1' else []); runpy.run_path(sys.argv[0], run_name='__main__')")
    result = launch(2, "-c", code, str(Path(__file__).parent.parent / "serve.py"), "--model",
                    str(hf_root_checkpoint), "--port", "0", timeout=120)
    # Every rank refuses (rank 0 says so in /health too); the launcher then stops them all.
    assert (result.stdout + result.stderr).count("rank(s) [1] started with other flags or another model") >= 2


def ranks_of(session: int) -> dict[int, int]:
    """MLX_RANK -> pid of the serve.py processes in a launcher's session."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or os.getsid(int(proc.name)) != session:
                continue
            environ = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
            if "serve.py" in (proc / "cmdline").read_text() and "MLX_RANK" in environ:
                found[int(environ["MLX_RANK"])] = int(proc.name)
        except (OSError, ProcessLookupError):
            continue
    return found


# The two tests below end their split's `ranked` server, so they come after the other tests of `ranked`:
# pytest runs the tests of one split in the order they are defined.

@pytest.mark.parametrize("ranked", ["pipeline"], indirect=True)
@pytest.mark.slow
def test_a_killed_rank_ends_the_server_instead_of_hanging_it(ranked):
    running = ranked
    os.kill(ranks_of(running.process.pid)[1], signal.SIGKILL)
    # mlx.launch stops the other ranks: a request then fails at once (no listener), never waits forever.
    running.process.wait(timeout=30)
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{running.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]},
                   timeout=30)
    assert not ranks_of(running.process.pid)


@pytest.mark.parametrize("ranked", ["tensor"], indirect=True)
@pytest.mark.slow
def test_ctrl_c_stops_every_rank(ranked):
    running = ranked
    assert running.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                 "max_tokens": 2}).status_code == 200
    os.killpg(running.process.pid, signal.SIGINT)  # what a terminal sends the launcher and its ranks
    running.process.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.killpg(running.process.pid, 0)  # any rank left in the launcher's session?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail("a rank outlived Ctrl-C")


# --- faults: a rank that never joins, dies or hangs ----------------------------------------------------

def ring_hostfile(path: Path) -> dict[str, str]:
    """The environment of rank 0 of a two-rank ring on loopback, as mlx.launch would set it."""
    path.write_text(json.dumps([[f"127.0.0.1:{free_port()}"], [f"127.0.0.1:{free_port()}"]]))
    return {"MLX_RANK": "0", "MLX_HOSTFILE": str(path)}


def by_hand(checkpoint: Path, tmp_path: Path, *flags: str) -> tuple[Server, subprocess.Popen]:
    """Rank 0 (the server) and rank 1 started without mlx.launch, as launchd or systemd on two Macs
    would: nothing else stops rank 0 when rank 1 goes."""
    env, args = ring_hostfile(tmp_path / "hosts.json"), ["--model", str(checkpoint), *flags]
    follower = subprocess.Popen([sys.executable, "serve.py", "--port", "0", "--log-level", "warning", *args],
                                cwd=Path(__file__).parent.parent, env={**os.environ, **env, "MLX_RANK": "1"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return Server(*args, env=env), follower


def first_events_then_the_rest(server: Server, kill) -> tuple[float, list[dict]]:
    """Stream a long answer, call `kill()` once it runs; the seconds from then to the stream's end, and its events."""
    body = {"messages": [{"role": "user", "content": "Count."}], "max_tokens": 3000, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        kill()
        killed = time.monotonic()
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    return time.monotonic() - killed, events


def assert_lost(server: Server, reason: str) -> None:
    health = httpx.get(f"{server.url}/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "error"
    assert reason in health.json()["error"], health.json()
    for path, body in [("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
                       ("/v1/embeddings", {"input": "Hi"})]:
        response = server.post(path, body, timeout=10)
        assert response.status_code == 503 and response.json()["error"]["code"] == "rank_lost"
        assert reason in response.json()["error"]["message"]


@pytest.mark.server
def test_a_rank_that_never_joins_ends_rank_0_after_the_join_timeout(hf_root_checkpoint, tmp_path):
    env = ring_hostfile(tmp_path / "hosts.json")
    result = subprocess.run([sys.executable, "serve.py", "--model", str(hf_root_checkpoint), "--port", "0",
                             "--join-timeout", "2"], cwd=Path(__file__).parent.parent, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120)
    # MLX's own init would wait forever; rank 0 never bound HTTP, so no client waited on it either.
    assert result.returncode == 1 and "serving" not in result.stdout
    assert "joining the other ranks (ring backend, rank 0 of 2" in result.stderr
    assert "if they have not all joined within 2 s" in result.stderr and "Timeout (0:00:02)!" in result.stderr


@pytest.mark.server
@pytest.mark.slow
def test_a_killed_rank_is_reported_and_the_server_keeps_answering(hf_root_checkpoint, tmp_path):
    server, follower = by_hand(hf_root_checkpoint, tmp_path)
    try:
        assert httpx.get(f"{server.url}/health").json()["status"] == "ready"
        seconds, events = first_events_then_the_rest(server, follower.kill)
        # The heartbeat's connection closes with the process: the answer in flight ends with the reason.
        assert events[-1]["error"]["code"] == "rank_lost", events[-3:]
        assert "rank 1 (" in events[-1]["error"]["message"] and "its process ended" in events[-1]["error"]["message"]
        assert seconds < 10
        assert_lost(server, "rank 1 (")
        assert server.process.poll() is None  # still up, saying why it cannot answer
    finally:
        follower.kill()
        server.stop()


@pytest.mark.server
@pytest.mark.slow
def test_a_hung_rank_is_reported_after_the_rank_timeout_and_ends_itself_later(hf_root_checkpoint):
    # 5 s: well above the longest a loading rank's Python is kept from beating (tokenizer, imports), busy CI too.
    server = Server("--model", str(hf_root_checkpoint), "--rank-timeout", "5", launcher=launcher())
    assert server.health_statuses[-1] == (200, "ready"), server.health_statuses[-3:]
    follower = ranks_of(server.process.pid)[1]
    try:
        # A stopped process keeps its sockets open: only its silence tells (mlx.launch sees nothing).
        seconds, events = first_events_then_the_rest(server, lambda: os.kill(follower, signal.SIGSTOP))
        assert events[-1]["error"]["code"] == "rank_lost", events[-3:]
        assert "sent no heartbeat for 5 s" in events[-1]["error"]["message"]
        assert seconds < 15  # its last beat came up to a second before it stopped
        assert_lost(server, "rank 1 (")
        # Woken, it finds that rank 0 gave it up, and ends itself rather than linger.
        os.kill(follower, signal.SIGCONT)
        deadline = time.time() + 30
        while 1 in ranks_of(server.process.pid) and time.time() < deadline:
            time.sleep(0.2)
        assert 1 not in ranks_of(server.process.pid)
    finally:
        os.killpg(server.process.pid, signal.SIGCONT)
        server.stop()
