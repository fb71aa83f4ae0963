"""Issue 14's defects, each against the real server on loopback: hostile or sloppy input gets a clear
4xx for its own request, and nothing it sends reaches another request or the server's memory."""

import json
import threading
import time

import httpx
import pytest

from holo_mlx.testing import synthetic_screenshot
from test_server import CHAT, Server, data_url, error_of, image_message

IMAGE_MB = 1


@pytest.fixture(scope="module")
def server(hf_root_checkpoint):
    running = Server("--model", str(hf_root_checkpoint), "--served-model-name", "holo-tiny", "--max-request-mb", "2",
                     "--allow-local-images", "--max-image-mb", str(IMAGE_MB), "--max-queue", "4",
                     "--default-max-tokens", "5")
    yield running
    running.stop()


def hi(**fields) -> dict:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}


# --- 2: a schema the grammar engine cannot follow ------------------------------------------------------

RECURSIVE = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}


def test_unfollowable_schema_is_a_400_and_bystanders_finish(server):
    bystander: dict = {}

    def stream():
        payload = {"messages": [{"role": "user", "content": "Count"}], "max_tokens": 40, "ignore_eos": True,
                   "stream": True}
        with httpx.stream("POST", f"{server.url}{CHAT}", json=payload, timeout=120) as response:
            bystander["lines"] = [line for line in response.iter_lines() if line]

    thread = threading.Thread(target=stream)
    thread.start()
    response = server.post(CHAT, hi(max_tokens=8, guided_json=RECURSIVE))
    thread.join()
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == "guided_json" and "follow" in error_of(response)["message"]
    assert bystander["lines"][-1] == "data: [DONE]" and all("error" not in line for line in bystander["lines"])


# --- 3: unvalidated fields -------------------------------------------------------------------------------

def test_seed_minus_one_means_random_and_out_of_range_is_a_400(server):
    assert server.post(CHAT, hi(seed=-1, temperature=1)).status_code == 200
    for seed in (-2, 2**64):
        response = server.post(CHAT, hi(seed=seed))
        assert response.status_code == 400 and error_of(response)["param"] == "seed", response.text
    assert server.post(CHAT, hi(seed=2**64 - 1)).status_code == 200


@pytest.mark.parametrize("path, payload, param", [
    (CHAT, {"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages.0.content"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
     "messages.0.content.0.text"),
    ("/v1/completions", {"prompt": ["ok", "\udfff"]}, "prompt.1"),
    ("/v1/embeddings", {"input": "\ud800"}, "input"),
    ("/v1/embeddings", {"input": [{"type": "text", "text": ""}]}, "input"),
    ("/v1/embeddings", {"input": [[{"type": "text", "text": ""}], [{"type": "text", "text": "a"}]]}, "input.0"),
    ("/v1/completions", {"prompt": [785, 151655, 3137]}, "prompt"),
    ("/v1/embeddings", {"input": [[785], [151655]]}, "input.1"),
])
def test_text_and_tokens_the_model_cannot_take_are_400s(server, path, payload, param):
    # json.dumps escapes a lone surrogate as "\\ud800", as a hostile client would send it.
    response = httpx.post(f"{server.url}{path}", content=json.dumps(payload), timeout=60,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == param


# --- 4: a streamed body over the limit -------------------------------------------------------------------

def test_chunked_body_over_the_limit_is_a_413_before_it_is_all_read(server):
    sent = 0

    def body():  # no Content-Length: chunked; 256 MiB if the server kept reading (it drops 64 past the limit)
        nonlocal sent
        for _ in range(256):
            sent += 1
            yield b"x" * 2**20

    try:
        response = httpx.post(f"{server.url}{CHAT}", content=body(), timeout=60,
                              headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and error_of(response)["code"] == "body_too_large"
    except httpx.RemoteProtocolError:  # the server may close before the client has sent everything
        pass
    assert sent < 256
    assert server.post(CHAT, hi()).status_code == 200


# --- 5: more prompts than the queue can ever hold --------------------------------------------------------

def test_more_prompts_than_the_queue_is_a_400_naming_the_limit(server):
    response = server.post("/v1/completions", {"prompt": ["a"] * 5, "max_tokens": 1})
    assert response.status_code == 400 and "--max-queue" in error_of(response)["message"]
    assert server.post("/v1/completions", {"prompt": ["a"] * 4, "max_tokens": 1}).status_code == 200


# --- 6: local files: size first, nothing said about the file system ---------------------------------------

def resident_kib(pid: int) -> int:
    status = open(f"/proc/{pid}/status").read()
    return int(status.split("VmRSS:")[1].split()[0])


def test_local_image_size_is_checked_before_reading(server, tmp_path):
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as file:  # sparse: 3 GiB on paper, nothing on disk
        file.truncate(3 * 2**30)
    before = resident_kib(server.process.pid)
    response = server.post(CHAT, {"messages": image_message(str(huge)), "max_tokens": 1})
    assert response.status_code == 413, response.text
    assert resident_kib(server.process.pid) - before < 100 * 1024
    missing = server.post(CHAT, {"messages": image_message(str(tmp_path / "nothing.png")), "max_tokens": 1})
    folder = server.post(CHAT, {"messages": image_message(str(tmp_path)), "max_tokens": 1})
    assert missing.status_code == folder.status_code == 400
    assert error_of(missing)["message"] == error_of(folder)["message"] == "could not read the image file"
    assert str(tmp_path) not in missing.text


# --- 7: DNS rebinding ------------------------------------------------------------------------------------------

def test_foreign_host_header_is_refused_with_the_way_out(server):
    port = server.url.rsplit(":", 1)[1]
    response = httpx.get(f"{server.url}/health", headers={"Host": "attacker.example"})
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_host"
    assert "--allowed-hosts attacker.example" in error_of(response)["message"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST"):
        assert httpx.get(f"{server.url}/health", headers={"Host": host}).status_code == 200


# --- 8 and 7's flag: keyed metrics, schema pages on request -----------------------------------------------

@pytest.mark.server
def test_api_key_guards_metrics_and_schema_pages_and_allowed_hosts(hf_root_checkpoint):
    plain = Server("--model", str(hf_root_checkpoint))
    try:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{plain.url}{path}").status_code == 404
    finally:
        plain.stop()
    keyed = Server("--model", str(hf_root_checkpoint), "--api-key", "sekret", "--enable-docs",
                   "--allowed-hosts", "holo.lan")
    try:
        key = {"Authorization": "Bearer sekret"}
        for path in ("/metrics", "/openapi.json", "/docs"):
            assert httpx.get(f"{keyed.url}{path}").status_code == 401
            assert httpx.get(f"{keyed.url}{path}", headers=key).status_code == 200
        for path, body in (("/tokenize", {"prompt": "Hi"}), ("/detokenize", {"tokens": [9707]})):
            assert keyed.post(path, body).status_code == 401
            assert keyed.post(path, body, headers=key).status_code == 200
        assert httpx.get(f"{keyed.url}/health").status_code == 200
        assert httpx.get(f"{keyed.url}/health", headers={"Host": "holo.lan:8000"}).status_code == 200
    finally:
        keyed.stop()


# --- 9: a default cap on max_tokens ---------------------------------------------------------------------------

def test_requests_without_max_tokens_get_the_default_cap(server):
    payload = {"messages": [{"role": "user", "content": "Go"}], "ignore_eos": True}
    body = server.post(CHAT, payload).json()
    assert body["usage"]["completion_tokens"] == 5 and body["choices"][0]["finish_reason"] == "length"
    more = server.post(CHAT, {**payload, "max_tokens": 7}).json()
    assert more["usage"]["completion_tokens"] == 7


# --- 10: error texts --------------------------------------------------------------------------------------------

def test_image_errors_name_the_part_and_no_python_internals(server):
    good = {"type": "image_url", "image_url": {"url": data_url(synthetic_screenshot(64, 64))}}
    bad = {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}
    response = server.post(CHAT, {"messages": [{"role": "user", "content": [good, bad]}], "max_tokens": 1})
    error = error_of(response)
    assert response.status_code == 400 and error["param"] == "messages.0.content.1"
    assert "<" not in error["message"] and "0x" not in error["message"], error["message"]


def test_a_body_that_is_not_json_names_no_field(server):
    response = httpx.post(f"{server.url}{CHAT}", content=b'{"messages": [}', timeout=30,
                          headers={"Content-Type": "application/json"})
    error = error_of(response)
    assert response.status_code == 422 and error["code"] == "invalid_json" and error["param"] is None
    assert "character 14" in error["message"], error["message"]
