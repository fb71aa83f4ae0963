"""Embeddings in work units: chunked prefill equals one pass, jobs share the engine with
generation (FIFO, cancellable, failures isolated), and the per-request token limits."""

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from holo_mlx import load
from holo_mlx.engine.embedding import EmbeddingJob, embed_prompts
from holo_mlx.prompt import Prompt
from holo_mlx.engine.worker import Engine
from holo_mlx.settings import ServerConfig
from holo_mlx.testing import synthetic_screenshot
from test_server import ROOT, Server, error_of

CHUNK = 16  # small, so a few hundred tokens already take many units on the tiny model


def token_ids(count: int, seed: int = 0) -> list[int]:
    """Ordinary text tokens (no special or image token) of the tiny checkpoint's vocabulary."""
    return np.random.default_rng(seed).integers(100, 150_000, count).tolist()


@pytest.fixture(scope="module", params=["hf_root_checkpoint", "holo2_root_checkpoint"])
def loaded(request):
    return load(request.getfixturevalue(request.param))


# --- chunked prefill ---------------------------------------------------------------------------------

def test_a_long_input_chunked_equals_one_pass(loaded):
    model, prompts = loaded
    screenshot = prompts.process_image(synthetic_screenshot(300, 200))
    prompt = prompts.build_parts([{"type": "text", "text": "The login page of a bank. " * 12},
                                  {"type": "image", "image": screenshot},
                                  {"type": "text", "text": " Fields: user name, password; a Submit button."}])
    length = len(prompt.input_ids)
    assert length > 8 * CHUNK  # the image's tokens straddle chunk boundaries too

    job = EmbeddingJob(model, [prompt], chunk=CHUNK)
    units = 1
    while not job.step():
        units += 1
    assert units == -(-length // CHUNK)
    one_pass = embed_prompts(model, [prompt], chunk=length)
    np.testing.assert_allclose(job.vectors, one_pass, rtol=0, atol=1e-5)
    assert np.linalg.norm(job.vectors[0]) == pytest.approx(1.0, abs=1e-5)


def test_short_inputs_batch_and_long_ones_chunk_in_input_order(loaded):
    model, _ = loaded
    inputs = [Prompt(token_ids(length, seed), []) for seed, length in enumerate([100, 3, 5, 40, 4])]
    job = EmbeddingJob(model, inputs, chunk=CHUNK)
    units = 1
    while not job.step():
        units += 1
    # 3, 4 and 5 tokens share one padded pass (15 <= 16); 40 and 100 tokens take 3 and 7 chunks.
    assert units == 1 + 3 + 7
    alone = np.concatenate([embed_prompts(model, [prompt], chunk=len(prompt.input_ids)) for prompt in inputs])
    np.testing.assert_allclose(job.vectors, alone, rtol=0, atol=1e-5)


def test_screenshots_batched_with_text_equal_their_passes_alone(loaded):
    """Short inputs share one right-padded pass, Holo2's DeepStack input padded with them."""
    model, prompts = loaded
    inputs = [prompts.build_parts([{"type": "image", "image": prompts.process_image(synthetic_screenshot(300, 200, seed))},
                                   {"type": "text", "text": text}])
              for seed, text in enumerate(["A login form.", "A search page with results."])]
    inputs.insert(1, Prompt(token_ids(9), []))
    chunk = 4 * max(len(prompt.input_ids) for prompt in inputs)
    job = EmbeddingJob(model, inputs, chunk=chunk)
    assert job.step()  # one unit: the three inputs in one pass
    # Alone and chunked: the other path, which the test above holds to a single pass.
    alone = np.concatenate([embed_prompts(model, [prompt], chunk=CHUNK) for prompt in inputs])
    np.testing.assert_allclose(job.vectors, alone, rtol=0, atol=1e-5)


# --- the engine's embedding queue --------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(hf_root_checkpoint):
    running = Engine(ServerConfig(model=str(hf_root_checkpoint), max_side=0, max_pixels=0, embedding_chunk=CHUNK))
    running.start()
    deadline = time.time() + 120
    while running.status == "loading" and time.time() < deadline:
        time.sleep(0.1)
    assert running.status == "ready", running.failure
    # Not stopped: when a thread that ran MLX work ends before the process, the process often
    # aborts at exit ("terminate called without an active exception"). Its daemon thread ends with it.
    return running


async def until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_jobs_run_first_in_first_out_and_a_failure_ends_only_its_job(engine):
    image_token = engine.model.config.image_token_id

    async def scenario():
        finished = []

        async def embed(name, prompts):
            try:
                return await engine.embed(prompts)
            finally:
                finished.append(name)

        results = await asyncio.wait_for(asyncio.gather(
            embed("long", [Prompt(token_ids(400), [])]),
            embed("broken", [Prompt([image_token] * 4, [])]),  # image tokens without their image
            embed("short", [Prompt(token_ids(5), [])]),
            return_exceptions=True), timeout=60)
        return finished, results

    finished, (long, broken, short) = asyncio.run(scenario())
    assert finished == ["long", "broken", "short"]
    assert isinstance(broken, ValueError) and "image" in str(broken)
    assert long.shape == short.shape == (1, engine.model.config.text_config.hidden_size)


@pytest.mark.parametrize("how", ["cancelled", "client_gone"])
def test_an_abandoned_job_stops_at_its_next_unit(engine, how):
    async def scenario():
        gone = asyncio.Event()

        async def client_gone():
            return gone.is_set()

        task = asyncio.create_task(engine.embed([Prompt(token_ids(20_000), [])], client_gone=client_gone))
        await until(lambda: engine.scheduler.embeddings and engine.scheduler.embeddings[0].work.tokens_done > 0)
        job = engine.scheduler.embeddings[0]
        assert engine.running == 1 and engine.waiting == 0  # /health counts the embedding at work
        if how == "cancelled":
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            gone.set()
            assert await task is None
        await until(lambda: not engine.scheduler.embeddings)
        assert engine.running == 0
        return job.work

    work = asyncio.run(scenario())
    assert 0 < work.tokens_done < work.total_tokens


# --- through the server ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(hf_root_checkpoint):
    running = Server("--model", str(hf_root_checkpoint), "--max-model-len", "30000",
                     "--max-embedding-tokens", "40000", "--embedding-chunk", str(CHUNK))
    yield running
    running.stop()


def test_a_chat_sent_during_a_long_embedding_is_answered_before_it_ends(server):
    outcome = {}

    def embed():
        outcome["response"] = server.post("/v1/embeddings", {"input": token_ids(8000), "encoding_format": "float"})

    embedding = threading.Thread(target=embed)
    embedding.start()
    time.sleep(0.5)  # the embedding is under way: 500 units of 16 tokens
    chat = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                                                "ignore_eos": True})
    assert chat.status_code == 200, chat.text
    still_embedding = embedding.is_alive()
    embedding.join()
    assert still_embedding, "the chat waited for the whole embedding"
    response = outcome["response"]
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 8000
    assert chat.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("inputs, code, param, message", [
    # the second input is longer than --max-model-len
    ([token_ids(5), token_ids(30_001)], "context_length_exceeded", "input.1", "input.1 has 30001 tokens"),
    # 45,000 > 40,000 in all
    ([token_ids(25_000), token_ids(20_000, seed=1)], "max_tokens_per_request", "input", "45000 tokens in all"),
])
def test_inputs_over_the_limits_get_400(server, inputs, code, param, message):
    response = server.post("/v1/embeddings", {"input": inputs})
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["code"] == code and error["param"] == param and error["type"] == "invalid_request_error"
    assert message in error["message"]


def requests_with_status(server: Server, status: int) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf'^holo_requests_total{{route="/v1/embeddings",status="{status}"}} ([0-9.e+]+)$', text,
                      re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_client_that_leaves_ends_its_embedding(server):
    body = httpx.Request("POST", "/", json={"input": token_ids(29_000)}).content
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as client:
        client.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(1)
    deadline = time.time() + 30
    while requests_with_status(server, 499) < 1:
        assert time.time() < deadline, "the server never noticed the client had left"
        time.sleep(0.1)
    # The queue is free again: a short embedding is answered.
    assert server.post("/v1/embeddings", {"input": "x"}).status_code == 200


# --- the memory benchmark ----------------------------------------------------------------------------

@pytest.mark.server
@pytest.mark.slow
def test_the_memory_benchmark_reports_every_size_and_the_chat(tmp_path, hf_root_checkpoint):
    figures = tmp_path / "embed.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_embed_memory.py"), "--model", str(hf_root_checkpoint),
         "--sizes", "500,max", "--max-model-len", "2048", "--server-args", "--embedding-chunk 64",
         "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(figures.read_text())
    assert [row["tokens"] for row in result["rows"]] == [500, 2048]  # "max" is the context
    assert all(row["baseline_mb"] > 0 and row["peak_growth_mb"] >= 0 for row in result["rows"])
    assert result["idle_chat_s"] > 0 and result["chat_during_largest_s"] > 0
    assert "peak RSS growth MB" in run.stdout
