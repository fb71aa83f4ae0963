"""The batching engine seen through the server: concurrency, caches, backpressure, cancellation, metrics."""

import json
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from holo_mlx.distributed import RanksMissing
from holo_mlx.engine.worker import LOADING, QueueFull, load_failed
from holo_mlx.loading import LoadError
from holo_mlx.server.app import create_app
from holo_mlx.server.errors import as_api_error
from holo_mlx.settings import ServerConfig
from holo_mlx.testing import synthetic_screenshot
from test_server import Server, data_url, error_of

CHAT = "/v1/chat/completions"
SYSTEM = {"role": "system", "content": "You are Holo, a careful GUI agent. Answer with one action. " * 6}


def metric(server: Server, name: str) -> float:
    return metric_in(httpx.get(f"{server.url}/metrics").text, name)


def metric_in(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def wait_for_metric(server: Server, name: str, value: float, seconds: float = 30) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if metric(server, name) == value:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def server(shared_server, hf_root_checkpoint):
    # Shared: these tests read the cancellation count before and after, and the other counts only grow.
    return shared_server("--model", str(hf_root_checkpoint), "--max-num-seqs", "4")


@pytest.fixture(scope="module", params=["hf_root_checkpoint", "holo2_root_checkpoint"])
def family_server(request, shared_server):
    """A server of each family (Holo1.5, Holo2), separate servers as each serves one model (Holo1.5's
    is `server` above: the same flags)."""
    return shared_server("--model", str(request.getfixturevalue(request.param)), "--max-num-seqs", "4")


def chat(server: Server, messages, max_tokens=8, **extra) -> dict:
    response = server.post(CHAT, {"messages": messages, "max_tokens": max_tokens, "temperature": 0,
                                  "ignore_eos": True, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_concurrent_requests_match_lone_ones(family_server):
    server = family_server
    shot = data_url(synthetic_screenshot(400, 300, 3))
    conversations = [
        [SYSTEM, {"role": "user", "content": "Say hi."}],
        [SYSTEM, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": shot}},
                                              {"type": "text", "text": "Click OK."}]}],
        [{"role": "user", "content": "Count."}],
        [SYSTEM, {"role": "user", "content": "Scroll down."}],
    ]
    def answer(messages):  # Holo2 thinks first: its reasoning is part of the answer compared
        message = chat(server, messages)["choices"][0]["message"]
        return message["reasoning_content"], message["content"]

    alone = [answer(messages) for messages in conversations]
    with ThreadPoolExecutor(len(conversations)) as pool:
        together = list(pool.map(answer, conversations))
    assert together == alone


def test_repeated_prefix_reports_cached_tokens(family_server):
    server = family_server
    shot = data_url(synthetic_screenshot(500, 400, 11))
    turn = [SYSTEM, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": shot}},
                                                 {"type": "text", "text": "Where is Submit?"}]}]
    first = chat(server, turn)
    again = chat(server, turn[:1] + [{"role": "user", "content": turn[1]["content"][:1] +
                                      [{"type": "text", "text": "Where is Cancel?"}]}])
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > first["usage"]["prompt_tokens"] // 2
    assert metric(server, "holo_prefix_cache_hit_ratio") > 0


def test_health_reports_the_family_and_its_image_limits(family_server):
    health = httpx.get(f"{family_server.url}/health", timeout=10).json()
    # One process holds the whole model: one rank, with the bytes of every weight.
    (rank,) = health["ranks"]
    assert (rank["rank"], rank["host"]) == (0, socket.gethostname()) and rank["weight_bytes"] > 100_000_000
    if health["family"] == "qwen2_5_vl":  # Holo1.5's cookbook caps
        assert (health["max_side"], health["max_pixels"], health["min_pixels"]) == (1440, 1_003_520, 3136)
        assert health["coordinates"] == "resized_pixels"
    else:  # Holo2's cookbook: its processor's own limits
        assert (health["family"], health["max_side"], health["coordinates"]) == ("qwen3_vl", None, "normalized_1000")
        assert (health["max_pixels"], health["min_pixels"]) == (16_777_216, 65_536)


def test_disconnect_frees_the_slot_in_metrics(server):
    before = metric(server, "holo_cancelled_requests_total")
    payload = {"messages": [{"role": "user", "content": "Go on forever"}], "max_tokens": 50_000,
               "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.url}{CHAT}", json=payload, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
        assert metric(server, "holo_running_sequences") == 1
    assert wait_for_metric(server, "holo_running_sequences", 0)
    assert metric(server, "holo_cancelled_requests_total") == before + 1


@pytest.mark.server
def test_full_queue_answers_429_with_retry_after(hf_root_checkpoint):
    busy = Server("--model", str(hf_root_checkpoint), "--max-num-seqs", "1", "--max-queue", "1")
    payload = {"messages": [{"role": "user", "content": "Go"}], "max_tokens": 50_000, "ignore_eos": True,
               "stream": True}
    try:
        with httpx.stream("POST", f"{busy.url}{CHAT}", json=payload, timeout=60) as running:
            lines = running.iter_lines()
            for _ in range(3):  # the role chunk, then generated tokens: the only slot is taken
                next(lines)
            with httpx.stream("POST", f"{busy.url}{CHAT}", json=payload, timeout=60) as waiting:
                assert wait_for_metric(busy, "holo_queue_depth", 1)  # it waits for the only slot
                refused = busy.post(CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
                assert refused.status_code == 429
                assert refused.headers["retry-after"] == "1"
                assert error_of(refused)["code"] == "queue_full"
                assert waiting.status_code == 200
        ok = busy.post(CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        assert ok.status_code == 200  # both streams were cancelled on close: the server is free again
        assert 'holo_requests_total{route="/v1/chat/completions",status="429"} 1.0' in \
            httpx.get(f"{busy.url}/metrics").text
    finally:
        busy.stop()


def test_non_streaming_disconnect_frees_the_slot(server):
    before = metric(server, "holo_cancelled_requests_total")
    body = json.dumps({"messages": [{"role": "user", "content": "Go on"}], "max_tokens": 50_000,
                       "ignore_eos": True}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as client:  # a client that gives up after 2 s
        client.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert wait_for_metric(server, "holo_running_sequences", 1)
        time.sleep(2)
    assert wait_for_metric(server, "holo_running_sequences", 0)
    assert metric(server, "holo_cancelled_requests_total") == before + 1


def test_scheduler_step_timing_is_exported(server):
    chat(server, [{"role": "user", "content": "Hi"}], max_tokens=4)
    assert metric(server, "holo_engine_steps_total") >= 4
    assert metric(server, "holo_engine_step_host_seconds_total") > 0
    assert metric(server, "holo_engine_step_wait_seconds_total") > 0


# --- the engine's refusals, as HTTP -------------------------------------------------------------------

def test_the_engine_imports_nothing_of_the_server():
    check = ("import sys, holo_mlx.engine.worker\n"
             "print(sorted(name for name in sys.modules if name.startswith('holo_mlx.server')))")
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


def test_a_loading_model_answers_503_with_retry_after_and_zero_steps():
    app = create_app(ServerConfig(model="never-loaded", responses_store=0))  # no lifespan here: the engine never starts
    client = TestClient(app, base_url="http://127.0.0.1")
    response = client.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert error_of(response) == {"message": "the model is still loading; retry shortly",
                                  "type": "service_unavailable", "param": None, "code": "model_loading"}
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["requests_running"] == 0
    text = client.get("/metrics").text
    for name in ("holo_engine_steps_total", "holo_engine_step_host_seconds_total",
                 "holo_engine_step_wait_seconds_total"):
        assert metric_in(text, name) == 0


@pytest.mark.parametrize("error, status, message, code, headers", [
    (QueueFull(3), 429, "server busy: 3 requests already waiting; retry shortly", "queue_full", {"Retry-After": "1"}),
    (LOADING, 503, "the model is still loading; retry shortly", "model_loading", {"Retry-After": "5"}),
    (load_failed(LoadError("no weights")), 503, "the model failed to load: LoadError: no weights",
     "model_load_failed", None),
    (load_failed(RanksMissing("the ranks did not all join within 5 s")), 503, "a rank of this server is missing, "
     "so it cannot answer until it is restarted: the ranks did not all join within 5 s", "rank_lost", None),
])
def test_engine_refusals_map_to_their_api_errors(error, status, message, code, headers):
    answer = as_api_error(error)
    assert (answer.status, answer.message, answer.param, answer.code, answer.headers) == \
        (status, message, None, code, headers)
