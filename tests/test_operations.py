"""Running several ranks as a service: idle ranks sleep, and a stop signal to mlx.launch, rank 0 or
another rank ends every rank after the request in flight (real processes on loopback)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from test_distributed import launcher, ranks_of, ring_hostfile
from test_server import Server

pytestmark = [pytest.mark.distributed, pytest.mark.server, pytest.mark.slow]
IDLE_S = 10
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def test_idle_ranks_started_by_hand_with_stdin_at_end_of_file_sleep(hf_root_checkpoint, tmp_path):
    """As a service manager starts them: each rank on its own, no terminal, standard input at end of file."""
    env, args = ring_hostfile(tmp_path / "hosts.json"), ["--model", str(hf_root_checkpoint)]
    follower = subprocess.Popen([sys.executable, "serve.py", "--port", "0", "--log-level", "warning", *args], cwd=Path(__file__).parent.parent,
                                env={**os.environ, **env, "MLX_RANK": "1"}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = Server(*args, env=env)
    server.process.stdin.close()
    try:
        first = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert first.status_code == 200, first.text
        pids = {"rank 0": server.process.pid, "rank 1": follower.pid}
        before = {rank: cpu_seconds(pid) for rank, pid in pids.items()}
        time.sleep(IDLE_S)
        used = {rank: (cpu_seconds(pid) - before[rank]) / IDLE_S for rank, pid in pids.items()}
        assert all(share <= 0.05 for share in used.values()), f"share of a core while idle: {used}"
        # The first request after idling still runs on both ranks.
        answer = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi again"}],
                                                      "max_tokens": 4})
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4
    finally:
        server.stop()
        follower.kill()


def alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("target", ["launcher", "rank 0", "rank 1"])
def test_sigterm_ends_every_rank_after_the_stream_in_flight(target, hf_root_checkpoint):
    server = Server("--model", str(hf_root_checkpoint), launcher=launcher())
    ranks = ranks_of(server.process.pid)
    pids = {"launcher": server.process.pid, "rank 0": ranks[0], "rank 1": ranks[1]}
    body = {"messages": [{"role": "user", "content": "Count."}], "max_tokens": 24, "ignore_eos": True, "stream": True}
    try:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            os.kill(pids[target], signal.SIGTERM)  # what systemd, launchd or docker send
            rest = [line for line in lines if line.startswith("data: ")]
        ended = time.monotonic()
        # The answer finishes in full: every token, then [DONE]; no error event, no cut connection.
        assert rest[-1] == "data: [DONE]"
        events = [json.loads(line[6:]) for line in rest[:-1]]
        assert not any("error" in event for event in events)
        assert [event["choices"][0]["finish_reason"] for event in events if event["choices"]][-1] == "length"
        while any(alive(pid) for pid in pids.values()) and time.monotonic() - ended < 10:
            time.sleep(0.2)
        assert not [name for name, pid in pids.items() if alive(pid)], "processes left 10 s after the answer"
        with pytest.raises(httpx.TransportError):  # the port is released
            httpx.get(f"{server.url}/health", timeout=5)
    finally:
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        server.process.wait(timeout=30)
