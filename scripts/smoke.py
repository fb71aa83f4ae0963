"""Smoke-test a running holo-mlx server: health, models, a text chat (plain and streamed), an image chat.

Waits for a server that is still loading its model (--wait).

    python scripts/smoke.py                                   # http://127.0.0.1:8000
    python scripts/smoke.py --url http://127.0.0.1:8000 --image screenshot.png
    python scripts/smoke.py --api-key KEY --max-tokens 32

Standard library only, so it runs from any Python. Prints each answer and exits non-zero at the
first failure with what the server said.
"""

import argparse
import base64
import json
import mimetypes
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class SmokeFailure(Exception):
    pass


class Client:
    def __init__(self, url: str, api_key: str | None, timeout: float):
        self.base, self.timeout = url.rstrip("/"), timeout
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, method: str, path: str, payload: dict | None = None) -> tuple[int, bytes]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=self.headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except OSError as error:
            raise SmokeFailure(f"{method} {path}: cannot reach {self.base} ({error})") from None

    def json(self, method: str, path: str, payload: dict | None = None) -> dict:
        status, body = self.request(method, path, payload)
        if status != 200:
            raise SmokeFailure(f"{method} {path} answered {status}: {body.decode(errors='replace')[:500]}")
        return json.loads(body)


def check_health(client: Client, wait: float) -> None:
    """/health until the model has loaded (503 "loading" meanwhile), at most `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        status, body = client.request("GET", "/health")
        health = json.loads(body) if body.startswith(b"{") else {}
        if status == 200 or health.get("status") != "loading" or time.monotonic() > deadline:
            break
        time.sleep(1)
    if status != 200:
        raise SmokeFailure(f"GET /health answered {status}: {body.decode(errors='replace')[:500]}")
    print(f"health: {health['status']}, model {health['model']} on {health['device']} ({health['dtype']})")


def chat(client: Client, model: str, content, max_tokens: int) -> str:
    started = time.perf_counter()
    reply = client.json("POST", "/v1/chat/completions", {
        "model": model, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": content}]})
    text = reply["choices"][0]["message"]["content"]
    usage = reply["usage"]
    print(f"  {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens in "
          f"{time.perf_counter() - started:.1f} s: {text!r}")
    if "holo" in reply:
        print(f"  image sizes: {reply['holo']}")
    return text


def stream_chat(client: Client, model: str, prompt: str, max_tokens: int) -> str:
    status, body = client.request("POST", "/v1/chat/completions", {
        "model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "messages": [{"role": "user", "content": prompt}]})
    if status != 200:
        raise SmokeFailure(f"streamed chat answered {status}: {body.decode(errors='replace')[:500]}")
    events = [line[len("data: "):] for line in body.decode().splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        raise SmokeFailure(f"stream did not end with [DONE]: {events[-3:]}")
    text = "".join(choice["delta"].get("content") or "" for event in events[:-1]
                   for choice in json.loads(event)["choices"])
    print(f"  {len(events) - 1} events: {text!r}")
    return text


def image_part(path: Path) -> dict:
    kind = mimetypes.guess_type(path.name)[0] or "image/png"
    encoded = base64.b64encode(path.read_bytes()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:{kind};base64,{encoded}"}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL (without /v1)")
    parser.add_argument("--api-key", help="sent as a Bearer token when the server has --api-key")
    parser.add_argument("--image", type=Path, help="also ask about this image (PNG, JPEG, ...)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per request")
    parser.add_argument("--wait", type=float, default=300, help="seconds to wait for the model to load")
    args = parser.parse_args(argv)
    if args.image and not args.image.is_file():
        parser.error(f"no such image: {args.image}")

    client = Client(args.url, args.api_key, args.timeout)
    prompt = "Name three things a web browser's toolbar usually shows."
    try:
        check_health(client, args.wait)
        model = client.json("GET", "/v1/models")["data"][0]["id"]
        print(f"models: {model}")
        print("text chat:")
        text = chat(client, model, prompt, args.max_tokens)
        print("streamed text chat:")
        if stream_chat(client, model, prompt, args.max_tokens) != text:
            raise SmokeFailure("the streamed answer differs from the plain one at temperature 0")
        if args.image:
            print(f"image chat ({args.image.name}):")
            chat(client, model, [image_part(args.image), {"type": "text", "text": "What is on this screen?"}],
                 args.max_tokens)
    except SmokeFailure as failure:
        print(f"FAIL: {failure}", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
