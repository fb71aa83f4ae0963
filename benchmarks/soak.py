"""Soak test: a bounded burst of mixed, partly hostile loopback traffic against the server.

Sends --requests requests (default 1,000) from --concurrency clients: text and image chats
(streamed and not), text completions (one prompt and several), embeddings of text and of
screenshots, streams the client closes after a few events, non-streaming requests abandoned by a
short client timeout, and malformed bodies (bad JSON, bad base64, bytes that are no image, empty
messages, an absurd max_tokens, empty embedding input). A warm-up first sends every prompt and
screenshot of the (fixed) pools once, then --warmup-requests of the same mix at full concurrency,
so the server's caches and allocator reach their steady state (the working set of 8 concurrent
mixed requests) before the baseline is taken. Then it prints three figures, each with a verdict:

1. server errors: 5xx responses, plus streams that ended without `data: [DONE]` although the
   client read them to the end;
2. orphaned generations: after the run and a settle period, /metrics' holo_running_sequences +
   holo_queue_depth (must be 0: every cut stream and abandoned request was cancelled);
3. resident memory of the server process (VmRSS) after the run against after the warm-up
   (target: at most +5 %).

The exit code is non-zero when any of them fails (or the server died).

    python benchmarks/soak.py --quick                         # 60 requests, tiny preset, ~1 min
    python benchmarks/soak.py --requests 1000 --concurrency 8
    python benchmarks/soak.py --preset 0.5b --requests 300
    python benchmarks/soak.py --url http://127.0.0.1:8000/v1 --pid 12345

It starts serve.py itself on 127.0.0.1 (tiny preset by default; --model or --preset, flags
through --server-args) and stops it at the end, or targets --url (the server's pid is then found
from its listening port, or given with --pid). Everything stops by itself: the run ends after
--requests or --max-seconds, whichever comes first.
"""

import argparse
import asyncio
import base64
import json
import os
import random
import re
import shlex
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from holo_mlx.server.ports import pid_listening_on

from bench_runtime import preset_folder
from bench_server import REPO, LocalServer, base_of, screenshot_url
from common import format_table

# Relative frequencies of the request kinds in the run.
MIX = {
    "chat_text": 12, "chat_text_stream": 10, "chat_image": 8, "chat_image_stream": 6,
    "completion": 7, "completion_stream": 5, "completion_multi": 3,
    "embed_text": 6, "embed_image": 4,
    "stream_cut": 8, "stream_cut_early": 3, "abandon": 6,
    "bad_json": 3, "bad_base64": 3, "not_image": 3, "empty_messages": 3, "huge_max_tokens": 3,
    "empty_embedding": 2,
}
MALFORMED = {"bad_json", "bad_base64", "not_image", "empty_messages", "huge_max_tokens", "empty_embedding"}
LONG_MAX_TOKENS = 2000  # cut and abandoned requests: a generation that is not cancelled lingers
SCREENSHOT_SIZES = ((640, 360), (500, 300), (390, 844), (1280, 720))
QUICK_SCREENSHOT_SIZES = ((640, 360), (500, 300), (300, 200))
TEXT_PROMPTS = (
    "Name the buttons you would expect on a checkout page.",
    "Describe the steps to change a password in a typical settings page.",
    "You see a login form with two fields and a Submit button. What do you click first?",
    "List three ways to close a modal dialog.",
    "Which keyboard shortcut opens a new browser tab?",
    "Explain what a breadcrumb navigation bar is for.",
    "A page shows a cookie banner with Accept and Reject. Which control rejects tracking?",
    "How would you find the search field on an unfamiliar web page?",
)
QUESTIONS = ("Localize the Submit button. Answer with click(x, y).", "What is on this screen?")
SYSTEM_PROMPT = "You are Holo, a GUI agent that answers with one action."


def proc_rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return None


def parse_metrics(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                continue
    return values


class Soak:
    def __init__(self, args, url: str, model: str | None):
        import httpx

        self.args, self.url, self.base, self.model = args, url.rstrip("/"), base_of(url), model
        self.http = httpx.AsyncClient(timeout=args.request_timeout,
                                      headers={"Authorization": f"Bearer {args.api_key}"},
                                      limits=httpx.Limits(max_connections=args.concurrency * 2 + 4))
        self.rng = random.Random(args.seed)
        sizes = QUICK_SCREENSHOT_SIZES if args.quick else SCREENSHOT_SIZES
        self.screenshots = [screenshot_url(w, h, seed) for seed, (w, h) in enumerate(sizes)]
        self.prompts = TEXT_PROMPTS[:4] if args.quick else TEXT_PROMPTS
        self.results: dict[str, list[dict]] = defaultdict(list)
        self.transport_errors: Counter = Counter()

    # --- request bodies ------------------------------------------------------------------------

    def sampling(self) -> dict:
        body = {"max_tokens": self.rng.randint(1, self.args.max_tokens)}
        if self.rng.random() < 0.5:
            body.update(temperature=0)
        else:
            body.update(temperature=0.7, top_p=0.9, seed=self.rng.randint(0, 1000))
        if self.rng.random() < 0.5:
            body["ignore_eos"] = True
        return body | ({"model": self.model} if self.model else {})

    def text_messages(self, prompt: str | None = None) -> list[dict]:
        prompt = prompt or self.rng.choice(self.prompts)
        system = [{"role": "system", "content": SYSTEM_PROMPT}] if self.rng.random() < 0.5 else []
        return system + [{"role": "user", "content": prompt}]

    def image_messages(self, screenshot: str | None = None, question: str | None = None) -> list[dict]:
        return [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": screenshot or self.rng.choice(self.screenshots)}},
                    {"type": "text", "text": question or self.rng.choice(QUESTIONS)}]}]

    def request(self, kind: str, item: dict | None = None) -> tuple[str, object, dict]:
        """(path, JSON body or raw bytes, options) for one request of this kind."""
        item = item or {}
        rng = self.rng
        chat = "/chat/completions"
        if kind in ("chat_text", "chat_text_stream"):
            return chat, {"messages": self.text_messages(item.get("prompt")), **self.sampling(),
                          "stream": kind.endswith("stream"), "stream_options": {"include_usage": True}}, {}
        if kind in ("chat_image", "chat_image_stream"):
            return chat, {"messages": self.image_messages(item.get("screenshot"), item.get("question")),
                          **self.sampling(), "stream": kind.endswith("stream")}, {}
        if kind in ("completion", "completion_stream"):
            return "/completions", {"prompt": item.get("prompt") or rng.choice(self.prompts), **self.sampling(),
                                    "stream": kind.endswith("stream")}, {}
        if kind == "completion_multi":
            return "/completions", {"prompt": rng.sample(self.prompts, rng.randint(2, 3)), **self.sampling()}, {}
        if kind == "embed_text":
            return "/embeddings", {"input": item.get("inputs") or rng.sample(self.prompts, rng.randint(1, 4))}, {}
        if kind == "embed_image":
            parts = [{"type": "image_url", "image_url": {"url": item.get("screenshot") or rng.choice(self.screenshots)}},
                     {"type": "text", "text": "screen"}]
            return "/embeddings", {"input": [parts]}, {}
        if kind in ("stream_cut", "stream_cut_early"):
            messages = self.image_messages() if rng.random() < 0.3 else self.text_messages()
            return chat, {"messages": messages, "max_tokens": LONG_MAX_TOKENS, "ignore_eos": True, "stream": True}, \
                {"cut_after": 1 if kind == "stream_cut_early" else rng.randint(2, 4)}
        if kind == "abandon":
            return chat, {"messages": self.text_messages(), "max_tokens": LONG_MAX_TOKENS, "ignore_eos": True}, \
                {"timeout": rng.uniform(0.2, 1.0)}
        if kind == "bad_json":
            return chat, b'{"messages": [{"role": "user", "content": "hi"}', {}
        if kind == "bad_base64":
            return chat, {"messages": self.image_messages("data:image/png;base64,@@not*base64@@"), "max_tokens": 4}, {}
        if kind == "not_image":
            junk = base64.b64encode(rng.randbytes(512)).decode()
            return chat, {"messages": self.image_messages(f"data:image/png;base64,{junk}"), "max_tokens": 4}, {}
        if kind == "empty_messages":
            return chat, {"messages": [], "max_tokens": 4}, {}
        if kind == "huge_max_tokens":
            return chat, {"messages": self.text_messages(), "max_tokens": 10**9}, {}
        if kind == "empty_embedding":
            return "/embeddings", {"input": []}, {}
        raise ValueError(kind)

    # --- sending -------------------------------------------------------------------------------

    async def send(self, kind: str, item: dict | None = None) -> dict:
        import httpx

        path, body, options = self.request(kind, item)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        url = f"{self.url}{path}"
        result = {"kind": kind, "status": None, "broken_stream": False}
        start = time.perf_counter()
        try:
            if isinstance(body, dict) and body.get("stream"):
                async with self.http.stream("POST", url, content=content, headers=headers) as response:
                    result["status"] = response.status_code
                    if response.status_code == 200:
                        events, done = 0, False
                        async for line in response.aiter_lines():
                            if line.startswith("data: "):
                                events += 1
                                done = line == "data: [DONE]"
                                if "cut_after" in options and events >= options["cut_after"]:
                                    result["cut"] = True
                                    break  # leaving the block closes the connection mid-stream
                        result["broken_stream"] = not done and not result.get("cut")
                    else:
                        await response.aread()
            else:
                response = await self.http.post(url, content=content, headers=headers,
                                                timeout=options.get("timeout", self.args.request_timeout))
                result["status"] = response.status_code
        except httpx.TimeoutException:
            result["timeout"] = True
            if kind != "abandon":
                self.transport_errors[f"{kind}: timeout"] += 1
        except httpx.HTTPError as error:  # a reset or refused connection: the server may have died
            result["transport_error"] = type(error).__name__
            self.transport_errors[f"{kind}: {type(error).__name__}"] += 1
        result["seconds"] = time.perf_counter() - start
        return result

    async def run(self, plan: list[tuple[str, dict | None]], deadline: float, progress: int = 0) -> int:
        """Send the plan with `concurrency` workers; returns how many were sent before the deadline."""
        queue = list(reversed(plan))
        sent, begun = 0, time.monotonic()

        async def worker():
            nonlocal sent
            while queue and time.monotonic() < deadline:
                kind, item = queue.pop()
                sent += 1
                result = await self.send(kind, item)
                self.results[kind].append(result)
                done = sum(map(len, self.results.values()))
                if progress and done % progress == 0:
                    print(f"  {done} done, {time.monotonic() - begun:.0f} s", flush=True)

        await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
        return sent

    # --- plans ---------------------------------------------------------------------------------

    def warmup_plan(self) -> list[tuple[str, dict | None]]:
        """Every pool item through every path that caches or allocates by prompt, once."""
        plan = []
        for prompt in self.prompts:
            plan += [("chat_text", {"prompt": prompt}), ("completion", {"prompt": prompt})]
        for screenshot in self.screenshots:
            for question in QUESTIONS:
                plan.append(("chat_image", {"screenshot": screenshot, "question": question}))
            plan.append(("embed_image", {"screenshot": screenshot}))
        plan += [(kind, None) for kind in MIX if kind not in ("chat_text", "chat_image", "completion", "embed_image")]
        plan += [("embed_text", {"inputs": list(self.prompts)})]
        return plan

    def main_plan(self, count: int) -> list[tuple[str, dict | None]]:
        """`count` requests drawn by the MIX weights, every kind at least once when count allows."""
        kinds = list(MIX)[:count]
        kinds += self.rng.choices(list(MIX), weights=list(MIX.values()), k=count - len(kinds))
        self.rng.shuffle(kinds)
        return [(kind, None) for kind in kinds]

    # --- server state --------------------------------------------------------------------------

    async def metrics(self) -> dict[str, float] | None:
        try:
            response = await self.http.get(f"{self.base}/metrics", timeout=10)
            values = parse_metrics(response.text) if response.status_code == 200 else {}
        except Exception:
            return None
        return values if "holo_running_sequences" in values else None

    async def settle(self, seconds: float) -> tuple[dict | None, float]:
        """Wait (at least 1 s, at most `seconds`) for no running or waiting sequences."""
        start = time.monotonic()
        values = None
        while True:
            await asyncio.sleep(0.5)
            values = await self.metrics()
            elapsed = time.monotonic() - start
            if values is None or elapsed >= seconds:
                return values, elapsed
            if elapsed >= 1 and values["holo_running_sequences"] == 0 and values["holo_queue_depth"] == 0:
                return values, elapsed

    async def close(self) -> None:
        await self.http.aclose()


def expected(kind: str, result: dict) -> bool:
    if kind == "abandon":
        return result.get("timeout", False) or result["status"] == 200
    if kind == "bad_json":
        return result["status"] in (400, 422)
    if kind in MALFORMED:
        return result["status"] == 400
    return result["status"] == 200 and not result["broken_stream"]


def report(soak: Soak) -> tuple[list[dict], int, int, list[str]]:
    rows, server_errors, broken, unexpected = [], 0, 0, []
    for kind in MIX:
        results = soak.results.get(kind, [])
        if not results:
            continue
        statuses = Counter(str(r["status"]) if r["status"] is not None else
                           ("timeout" if r.get("timeout") else r.get("transport_error", "?")) for r in results)
        fivexx = sum(1 for r in results if r["status"] is not None and r["status"] >= 500)
        broken_streams = sum(r["broken_stream"] for r in results)
        server_errors += fivexx
        broken += broken_streams
        wrong = [r for r in results if not expected(kind, r)]
        if wrong:
            unexpected.append(f"{kind}: {len(wrong)} unexpected ({', '.join(f'{k} x{v}' for k, v in statuses.items())})")
        rows.append({"kind": kind, "sent": len(results),
                     "statuses": " ".join(f"{k}:{v}" for k, v in sorted(statuses.items())),
                     "5xx": fivexx, "broken": broken_streams, "unexpected": len(wrong),
                     "avg_s": sum(r["seconds"] for r in results) / len(results),
                     "max_s": max(r["seconds"] for r in results)})
    return rows, server_errors, broken, unexpected


def parse_args(argv=None) -> argparse.Namespace:
    from holo_mlx.testing import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url", help="a running holo-mlx server's base URL, e.g. http://127.0.0.1:8000/v1")
    source.add_argument("--model", type=Path, help="a model folder to serve here")
    source.add_argument("--preset", choices=sorted(PRESETS), help="random weights of this shape (default tiny)")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id (default: found from the port)")
    parser.add_argument("--server-args", default="", help="flags passed to the started serve.py")
    parser.add_argument("--serve-py", type=Path, default=REPO / "serve.py",
                        help="the serve.py to start (another checkout's, to compare)")
    parser.add_argument("--api-key", default=os.environ.get("HOLO_API_KEY", "none"))
    parser.add_argument("--served-model", help="model id to send (default: none, the server's own)")
    parser.add_argument("--requests", type=int, help="requests in the run, after the warm-up (default 1000)")
    parser.add_argument("--warmup-requests", type=int,
                        help="mixed requests at full concurrency closing the warm-up (default 300; quick 20)")
    parser.add_argument("--concurrency", type=int, help="clients at once (default 8)")
    parser.add_argument("--max-tokens", type=int, default=24, help="largest max_tokens of normal requests")
    parser.add_argument("--max-seconds", type=float, help="stop sending after this (default 1800; quick 120)")
    parser.add_argument("--settle", type=float, default=20, help="seconds to wait for the batch to drain")
    parser.add_argument("--rss-tolerance", type=float, default=5.0, help="largest RSS growth allowed, in percent")
    parser.add_argument("--request-timeout", type=float, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="60 requests, 4 clients, small screenshots")
    args = parser.parse_args(argv)
    defaults = {"requests": 60, "warmup_requests": 20, "concurrency": 4, "max_seconds": 120} if args.quick else \
        {"requests": 1000, "warmup_requests": 300, "concurrency": 8, "max_seconds": 1800}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.requests < 1 or args.concurrency < 1 or args.warmup_requests < 0:
        parser.error("--requests and --concurrency must be at least 1, --warmup-requests at least 0")
    return args


async def soak_run(args, url: str, pid: int | None, alive) -> dict:
    soak = Soak(args, url, args.served_model)
    started = time.monotonic()
    try:
        warmup = soak.warmup_plan() + soak.main_plan(args.warmup_requests)
        print(f"warm-up: {len(warmup)} requests", flush=True)
        await soak.run(warmup, started + args.max_seconds)
        soak.results.clear()
        soak.transport_errors.clear()
        _, _ = await soak.settle(args.settle)
        rss_warm = proc_rss_bytes(pid) if pid else None
        before = await soak.metrics()
        print(f"run: {args.requests} requests from {args.concurrency} clients", flush=True)
        run_start = time.monotonic()
        plan = soak.main_plan(args.requests)
        peak = {"rss": rss_warm or 0}

        async def sample_rss():
            while True:
                await asyncio.sleep(1)
                if pid and (rss := proc_rss_bytes(pid)):
                    peak["rss"] = max(peak["rss"], rss)

        sampler = asyncio.create_task(sample_rss())
        sent = await soak.run(plan, started + args.max_seconds, progress=100 if args.requests >= 200 else 0)
        sampler.cancel()
        run_seconds = time.monotonic() - run_start
        after, settled = await soak.settle(args.settle)
        rss_after = proc_rss_bytes(pid) if pid else None
        rows, server_errors, broken, unexpected = report(soak)
    finally:
        await soak.close()
    return {"rows": rows, "sent": sent, "planned": len(plan), "run_seconds": run_seconds,
            "server_errors": server_errors + broken, "http_5xx": server_errors, "broken_streams": broken,
            "unexpected": unexpected, "transport_errors": dict(soak.transport_errors),
            "orphans": None if after is None else int(after["holo_running_sequences"] + after["holo_queue_depth"]),
            "running_after": None if after is None else int(after["holo_running_sequences"]),
            "waiting_after": None if after is None else int(after["holo_queue_depth"]),
            "settle_seconds": settled, "metrics_before": before, "metrics_after": after,
            "rss_warm": rss_warm, "rss_after": rss_after, "rss_peak": peak["rss"] or None,
            "server_alive": alive()}


def summarize_run(args, figures: dict) -> bool:
    print("\n" + format_table(figures["rows"], [
        ("kind", "kind"), ("sent", "sent"), ("statuses", "statuses"), ("5xx", "5xx"), ("broken", "broken streams"),
        ("unexpected", "unexpected"), ("avg_s", "avg s"), ("max_s", "max s")]))
    print(f"\nsent {figures['sent']} of {figures['planned']} requests in {figures['run_seconds']:.1f} s "
          f"({figures['sent'] / max(figures['run_seconds'], 1e-9):.1f} req/s)")
    for line in figures["unexpected"]:
        print(f"  unexpected statuses: {line}")
    for what, count in figures["transport_errors"].items():
        print(f"  transport errors: {what} x{count}")
    before, after = figures["metrics_before"] or {}, figures["metrics_after"] or {}
    if after:
        cancelled = after.get("holo_cancelled_requests_total", 0) - before.get("holo_cancelled_requests_total", 0)
        print(f"  cancelled generations during the run: {cancelled:.0f}; MLX active memory "
              f"{before.get('holo_mlx_active_memory_bytes', 0) / 2**20:.0f} -> "
              f"{after.get('holo_mlx_active_memory_bytes', 0) / 2**20:.0f} MiB; prefix cache "
              f"{after.get('holo_prefix_cache_bytes', 0) / 2**20:.0f} MiB, vision cache "
              f"{after.get('holo_vision_cache_bytes', 0) / 2**20:.0f} MiB")

    checks = []
    errors = figures["server_errors"]
    checks.append(errors == 0)
    print(f"\n1. server errors: {errors} ({figures['http_5xx']} 5xx responses, {figures['broken_streams']} "
          f"streams ended without [DONE])  {'PASS' if errors == 0 else 'FAIL'}")
    orphans = figures["orphans"]
    if orphans is None:
        print("2. orphaned generations: unknown (no holo_* gauges at /metrics)  FAIL")
        checks.append(False)
    else:
        checks.append(orphans == 0)
        print(f"2. orphaned generations: {orphans} ({figures['running_after']} running, {figures['waiting_after']} "
              f"waiting, after {figures['settle_seconds']:.1f} s of settling)  {'PASS' if orphans == 0 else 'FAIL'}")
    warm, after_rss = figures["rss_warm"], figures["rss_after"]
    if warm and after_rss:
        change = 100 * (after_rss - warm) / warm
        figures["rss_change_pct"] = change
        ok = change <= args.rss_tolerance
        checks.append(ok)
        peak = f", peak {figures['rss_peak'] / 2**20:.0f} MiB" if figures["rss_peak"] else ""
        print(f"3. server RSS: {warm / 2**20:.0f} MiB after warm-up -> {after_rss / 2**20:.0f} MiB after the run "
              f"({change:+.2f} %, target <= +{args.rss_tolerance:g} %{peak})  {'PASS' if ok else 'FAIL'}")
    else:
        print("3. server RSS: unknown (no server pid; pass --pid)  FAIL")
        checks.append(False)
    if not figures["server_alive"]:
        print("the server process is gone  FAIL")
        checks.append(False)
    if figures["sent"] < figures["planned"]:
        print(f"note: --max-seconds {args.max_seconds:g} reached; {figures['planned'] - figures['sent']} requests not sent")
    return all(checks)


def main(argv=None) -> int:
    from holo_mlx.runtime import use_fast_blas

    use_fast_blas()
    args = parse_args(argv)
    server = None
    if args.url:
        url = args.url.rstrip("/")
        port = int(re.search(r":(\d+)", url.split("//", 1)[1]).group(1)) if re.search(r"//[^/]+:\d+", url) else 80
        pid = args.pid or pid_listening_on(port)

        def alive():
            return pid is None or Path(f"/proc/{pid}").exists()
    else:
        folder = args.model.resolve() if args.model else preset_folder(args.preset or "tiny", args.cache_dir.resolve())
        server = LocalServer("holo-mlx", folder, shlex.split(args.server_args), serve_py=args.serve_py)
        print(f"starting: {shlex.join(server.command)}", flush=True)
        url = server.start()
        pid, alive = server.pid, server.alive
    try:
        print(f"soak against {url} (server pid {pid})", flush=True)
        figures = asyncio.run(soak_run(args, url, pid, alive))
    finally:
        if server is not None:
            server.stop()
    ok = summarize_run(args, figures)
    if not ok and server is not None:
        print(f"\nthe server's last output:\n{server.log()}", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({key: value for key, value in figures.items()}, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
