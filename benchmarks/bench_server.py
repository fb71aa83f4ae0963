"""Serving benchmark: an OpenAI-compatible server under concurrent streaming clients, over HTTP.

Points the `openai` SDK's streaming API (stream=True, stream_options.include_usage) at a server,
so TTFT is the time to the first token as a client sees it. Every request is greedy and, with
ignore_eos, generates exactly --max-tokens tokens. Workloads:

- text:  a ~110-token chat; image: a synthetic 1280x720 screenshot (1,196 visual tokens) and an
  instruction. At each --concurrency level, that many clients each send --runs requests back to
  back (after --warmup untimed rounds). Figures per level: aggregate decode tok/s (all completion
  tokens / wall time of the level), requests/s, TTFT and end-to-end latency (avg, p50, p90,
  stdev), each request's own decode tok/s. Every request has its own prompt (a fresh system
  prompt, a fresh screenshot), so the server's prefix and vision caches do not flatter them.
- repeat-screenshot: one client; a fixed system prompt and a new screenshot (cold), the same
  screenshot and system prompt with a new question (warm_image), then that request again
  (warm_identical). Reports TTFT and usage.prompt_tokens_details.cached_tokens per phase.
- agent-loop (not run by default): one client plays an agent, --runs conversations of
  --agent-turns turns; each turn sends the whole conversation with a new screenshot appended, after
  the previous answer as the assistant's message (thinking off, so the answer is all content).
  Reports TTFT, prompt and cached tokens per turn, and each turn's TTFT / turn 1's. --warmup is
  that many untimed single-screenshot requests first.
- agent-budget (not run by default): the same with Hcompany's image budget (--image-budget
  KEEP:MOST, default 3:5): once the conversation holds more than MOST screenshots, all but the
  latest KEEP become the text "[screenshot evicted]"; --budget-turns turns (default 7).

Rows are appended to a CSV with the machine's details (benchmarks/common.py); two PNG charts are
drawn next to it: aggregate tok/s, TTFT and latency per concurrency level, and the
repeat-screenshot TTFT per phase. The charts also show the latest run of every other --label
measured on the same model and token count in that CSV, so running the script once per server
gives a comparison. The agent loops get a third chart (-agent suffix): TTFT and cached tokens per turn.

    python benchmarks/bench_server.py --quick                                  # smoke run, tiny preset
    python benchmarks/bench_server.py --preset 0.5b --workloads text --concurrency 1,8
    python benchmarks/bench_server.py --preset 0.5b --workloads repeat-screenshot --runs 3
    python benchmarks/bench_server.py --preset holo3-0.8b --workloads agent-loop,agent-budget --runs 1
    python benchmarks/bench_server.py --preset 0.5b --server mlx-vlm --server-args "--max-num-seqs 8"
    python benchmarks/bench_server.py --url http://127.0.0.1:8000/v1 --label holo-mlx-7b-8bit
    python benchmarks/bench_server.py --chart-only                             # redraw from the CSV

With --preset or --model the script starts the server itself on 127.0.0.1 (a free port) and
stops it at the end: serve.py (--server holo-mlx) or `python -m mlx_vlm.server` (--server mlx-vlm),
with --server-args passed through. A preset is a random-weight checkpoint of that shape, built and
converted to float32 once under .cache/bench/<preset>/ (the layout bench_runtime.py uses).
"""

import argparse
import asyncio
import base64
import csv
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

from bench_runtime import preset_folder
from common import append_csv, format_table, grouped_bar_chart, summarize, system_info, text_messages

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = ("text", "image", "repeat-screenshot", "agent-loop", "agent-budget")
DEFAULT_WORKLOADS = WORKLOADS[:3]
AGENT_WORKLOADS = ("agent-loop", "agent-budget")
SERVERS = ("holo-mlx", "mlx-vlm")
DEFAULTS = {"preset": "0.5b", "concurrency": "1,2,4,8", "runs": 3, "warmup": 1, "max_tokens": 32}
QUICK = {"preset": "tiny", "concurrency": "1,2", "runs": 2, "warmup": 1, "max_tokens": 8}
QWEN_EOS_IDS = (151643, 151645)  # <|endoftext|>, <|im_end|>: Qwen2.5-VL's and Holo1.5's

AGENT_SYSTEM_PROMPT = (
    "You are Holo, a GUI agent. You see a screenshot of the user's screen and answer with the single "
    "next action: click(x, y), type(text) or scroll(direction), in the pixels of the screenshot."
)
QUESTIONS = ("Localize the Submit button in this screenshot. Answer with click(x, y).",
             "Where is the Settings button? Answer with click(x, y).")
# The agent loops: a task with the first screenshot, then after each answer the screen that follows.
AGENT_TASK = "Task: open the Settings page and turn on dark mode. What is the next action?"
AGENT_NEXT = "The action was executed; this is the screen now. What is the next action?"
EVICTED = "[screenshot evicted]"


# --- servers ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_of(url: str) -> str:
    """http://host:port from http://host:port/v1 (where /health and /metrics live)."""
    return re.sub(r"/v1/?$", "", url.rstrip("/"))


def server_kind(url: str) -> str:
    """holo-mlx or mlx-vlm from the shape of /health, else "server"."""
    import httpx

    try:
        body = httpx.get(f"{base_of(url)}/health", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return "server"
    if "requests_running" in body:
        return "holo-mlx"
    if "loaded_model" in body:
        return "mlx-vlm"
    return "server"


def die_with_parent() -> None:
    """In the started server (Linux): SIGTERM when the benchmark's process ends, however it ends
    (killed included), so no server outlives its benchmark. Kept across serve.py's re-exec."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalServer:
    """serve.py or mlx_vlm.server on 127.0.0.1, started by start() and stopped by stop().

    Its output goes to a background reader (a full pipe would block the server); the last lines
    are kept for error messages.
    """

    def __init__(self, kind: str, model: Path, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, log_level: str = "warning", serve_py: Path | None = None):
        self.kind, self.model, self.extra_args = kind, model, list(extra_args or [])
        self.serve_py = Path(serve_py or REPO / "serve.py").resolve()
        self.env = {**os.environ, **(env or {})}
        self.log_level = log_level
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.tail: deque[str] = deque(maxlen=400)
        self.port = free_port() if kind == "mlx-vlm" else 0  # serve.py binds port 0 itself

    @property
    def command(self) -> list[str]:
        if self.kind == "holo-mlx":
            return [sys.executable, str(self.serve_py), "--model", str(self.model), "--host", "127.0.0.1",
                    "--port", "0", "--log-level", self.log_level, *self.extra_args]
        return [sys.executable, "-m", "mlx_vlm.server", "--model", str(self.model), "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", self.log_level.upper(), *self.extra_args]

    @property
    def pid(self) -> int:
        return self.process.pid  # serve.py re-executes itself (OpenBLAS) with execve: same pid

    def start(self, timeout: float = 600) -> str:
        """Start the server and wait until /health answers 200; returns the /v1 base URL."""
        import httpx

        command = self.command
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        cwd=self.serve_py.parent, env=self.env, start_new_session=True,
                                        preexec_fn=die_with_parent)
        if self.kind == "holo-mlx":
            line = self.process.stdout.readline()
            self.tail.append(line.rstrip())
            match = re.search(r"(http://\S+/v1)", line)
            if not match:
                self.stop()
                raise RuntimeError(f"serve.py printed no URL: {line!r}\n" + self.log())
            self.url = match.group(1)
        else:
            self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited with code {self.process.returncode}\n" + self.log())
            try:
                response = httpx.get(f"{base_of(self.url)}/health", timeout=5)
                if response.status_code == 200:
                    return self.url
                if response.json().get("status") == "error":
                    raise RuntimeError(f"the model failed to load: {response.json().get('error')}")
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.kind} server not ready after {timeout:.0f} s\n" + self.log())

    def _drain(self) -> None:
        for line in self.process.stdout:
            self.tail.append(line.rstrip())

    def log(self, lines: int = 120) -> str:
        return "\n".join(list(self.tail)[-lines:])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# --- model folders ----------------------------------------------------------------------------

def eos_token_ids(folder: Path | None) -> list[int]:
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        path = folder / name if folder else None
        if path and path.exists():
            value = json.loads(path.read_text()).get("eos_token_id")
            ids.update(value if isinstance(value, list) else [value] if value is not None else [])
    return sorted(ids) or list(QWEN_EOS_IDS)


# --- requests ---------------------------------------------------------------------------------

def screenshot_url(width: int, height: int, seed: int) -> str:
    from holo_mlx.testing import synthetic_screenshot

    buffer = io.BytesIO()
    synthetic_screenshot(width, height, seed).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_messages(url: str, question: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                     {"type": "text", "text": question}]}]


class Client:
    """Timed streaming chat requests through openai.AsyncOpenAI."""

    def __init__(self, url: str, model: str, api_key: str, max_tokens: int, timeout: float, extra_body: dict):
        import openai

        self.sdk = openai.AsyncOpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=timeout)
        self.model, self.max_tokens, self.extra_body = model, max_tokens, extra_body

    async def chat(self, messages: list[dict], extra_body: dict | None = None) -> dict:
        """TTFT is the arrival of the first chunk with text, of the answer or of its reasoning (a
        role-only first chunk does not count); "text" is the answer, as a client would keep it."""
        start = time.perf_counter()
        first = None
        usage = None
        parts: list[str] = []
        try:
            stream = await self.sdk.chat.completions.create(
                model=self.model, messages=messages, max_tokens=self.max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={**self.extra_body, **(extra_body or {})})
            async for chunk in stream:
                if chunk.choices:
                    delta = chunk.choices[0].delta
                    parts.append(delta.content or "")
                    extra = delta.model_extra or {}
                    if first is None and (delta.content or extra.get("reasoning_content") or extra.get("reasoning")
                                          or chunk.choices[0].finish_reason):
                        first = time.perf_counter()
                if chunk.usage is not None:
                    usage = chunk.usage
        except Exception as error:  # counted per level, reported, never fatal to the run
            return {"error": f"{type(error).__name__}: {error}"[:300]}
        end = time.perf_counter()
        if first is None or usage is None:
            return {"error": "stream ended without text or without usage"}
        details = getattr(usage, "prompt_tokens_details", None)
        completion = usage.completion_tokens
        return {"ttft_s": first - start, "e2e_s": end - start, "prompt_tokens": usage.prompt_tokens,
                "text": "".join(parts), "completion_tokens": completion, "cached_tokens": (getattr(details, "cached_tokens", 0) or 0),
                "decode_tps": (completion - 1) / (end - first) if completion > 1 and end > first else 0.0}

    async def close(self) -> None:
        await self.sdk.close()


def stats_row(results: list[dict], max_tokens: int) -> dict:
    good = [r for r in results if "error" not in r]
    row = {"requests": len(results), "errors": len(results) - len(good)}
    if not good:
        return row
    row.update({
        "prompt_tokens_avg": sum(r["prompt_tokens"] for r in good) / len(good),
        "cached_tokens_avg": sum(r["cached_tokens"] for r in good) / len(good),
        "completion_tokens_total": sum(r["completion_tokens"] for r in good),
        "short_requests": sum(r["completion_tokens"] < max_tokens for r in good),
        "decode_tps_per_request_avg": sum(r["decode_tps"] for r in good) / len(good),
    })
    for metric in ("ttft_s", "e2e_s"):
        row.update({f"{metric}_{stat}": value for stat, value in summarize([r[metric] for r in good]).items()})
    return row


async def run_level(client: Client, workload: str, clients: int, runs: int, warmup: int,
                    image_size: tuple[int, int], seed: int) -> tuple[dict, list[str]]:
    """`clients` concurrent clients, each sending `runs` requests back to back after `warmup` untimed rounds."""
    total = clients * (warmup + runs)
    if workload == "image":  # encoded before the clock starts; a new screenshot per request
        urls = await asyncio.to_thread(lambda: [screenshot_url(*image_size, seed + i) for i in range(total)])

    def messages(index: int) -> list[dict]:
        if workload == "text":
            return text_messages(seed + index)
        return image_messages(urls[index], f"Step {index}. {QUESTIONS[0]}")

    async def worker(number: int, count: int, offset: int) -> list[dict]:
        return [await client.chat(messages(offset + number * count + i)) for i in range(count)]

    for round_ in range(warmup):
        await asyncio.gather(*(worker(n, 1, round_ * clients) for n in range(clients)))
    start = time.perf_counter()
    groups = await asyncio.gather(*(worker(n, runs, warmup * clients) for n in range(clients)))
    wall = time.perf_counter() - start
    results = [r for group in groups for r in group]
    row = {"workload": workload, "concurrency": clients, "phase": "", "wall_s": wall, **stats_row(results, client.max_tokens)}
    if row.get("completion_tokens_total"):
        row["aggregate_tps"] = row["completion_tokens_total"] / wall
        row["requests_per_s"] = (len(results) - row["errors"]) / wall
    return row, [r["error"] for r in results if "error" in r]


async def run_repeat(client: Client, runs: int, warmup: int, image_size: tuple[int, int],
                     seed: int) -> tuple[list[dict], list[str]]:
    """Per round: new screenshot (cold), same screenshot + new question, that request again."""
    phases = {"cold": [], "warm_image": [], "warm_identical": []}
    for round_ in range(warmup + runs):
        url = await asyncio.to_thread(screenshot_url, *image_size, seed + round_)
        sent = {"cold": image_messages(url, QUESTIONS[0], AGENT_SYSTEM_PROMPT),
                "warm_image": image_messages(url, QUESTIONS[1], AGENT_SYSTEM_PROMPT)}
        sent["warm_identical"] = sent["warm_image"]
        for phase, messages in sent.items():
            result = await client.chat(messages)
            if round_ >= warmup:
                phases[phase].append(result)
    rows, errors = [], []
    for phase, results in phases.items():
        rows.append({"workload": "repeat-screenshot", "concurrency": 1, "phase": phase,
                     **stats_row(results, client.max_tokens)})
        errors += [r["error"] for r in results if "error" in r]
    cold = rows[0].get("ttft_s_avg")
    for row in rows:
        if cold and row.get("ttft_s_avg"):
            row["ttft_vs_cold"] = row["ttft_s_avg"] / cold
    return rows, errors


def apply_image_budget(messages: list[dict], keep: int, most: int) -> None:
    """Hcompany's image budget: once the conversation holds more than `most` images, every image but
    the latest `keep` becomes the text "[screenshot evicted]", in place (evicted stays evicted)."""
    images = [part for message in messages if isinstance(message["content"], list)
              for part in message["content"] if part.get("type") == "image_url"]
    if len(images) > most:
        for part in images[:len(images) - keep]:
            part.clear()
            part.update(type="text", text=EVICTED)


def count_parts(messages: list[dict]) -> tuple[int, int]:
    """(images, evicted screenshots) in a conversation."""
    parts = [part for message in messages if isinstance(message["content"], list) for part in message["content"]]
    return (sum(part.get("type") == "image_url" for part in parts),
            sum(part.get("text") == EVICTED for part in parts))


async def run_agent(client: Client, workload: str, turns: int, runs: int, warmup: int, image_size: tuple[int, int],
                    seed: int, budget: tuple[int, int] | None, extra_body: dict) -> tuple[list[dict], list[str]]:
    """`runs` agent conversations of `turns` turns: each turn adds a new screenshot, after the previous
    answer appended as the assistant's message; with `budget` (keep, most), apply_image_budget first.
    Before them, `warmup` untimed single-turn requests (the same system prompt, other screenshots)."""
    for round_ in range(warmup):
        url = await asyncio.to_thread(screenshot_url, *image_size, seed + round_)
        await client.chat(image_messages(url, AGENT_TASK, AGENT_SYSTEM_PROMPT), extra_body)
    per_turn: list[list[dict]] = [[] for _ in range(turns)]
    for loop in range(runs):
        messages: list[dict] = [{"role": "system", "content": AGENT_SYSTEM_PROMPT}]
        for turn in range(turns):
            url = await asyncio.to_thread(screenshot_url, *image_size, seed + warmup + loop * turns + turn)
            messages.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                         {"type": "text", "text": AGENT_NEXT if turn else AGENT_TASK}]})
            if budget:
                apply_image_budget(messages, *budget)
            images, evicted = count_parts(messages)
            result = await client.chat(messages, extra_body)
            per_turn[turn].append({**result, "images": images, "evicted": evicted})
            if "error" in result:  # the conversation cannot go on without the answer
                break
            messages.append({"role": "assistant", "content": result["text"]})
    rows, errors = [], []
    for turn, results in enumerate(per_turn, start=1):
        if not results:
            continue
        rows.append({"workload": workload, "concurrency": 1, "phase": f"turn {turn}", "turn": turn,
                     "images": max(r["images"] for r in results), "evicted": max(r["evicted"] for r in results),
                     "image_budget": "%d:%d" % budget if budget else "", **stats_row(results, client.max_tokens)})
        errors += [r["error"] for r in results if "error" in r]
    first = rows[0].get("ttft_s_avg") if rows else None
    for row in rows:
        if first and row.get("ttft_s_avg"):
            row["ttft_vs_turn1"] = row["ttft_s_avg"] / first
    return rows, errors


# --- charts -----------------------------------------------------------------------------------

def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def chart_rows(csv_rows: list[dict], model: str, max_tokens: str) -> list[dict]:
    """For each label, the rows of its latest run on this model and token count."""
    matching = [row for row in csv_rows if row.get("model") == model and row.get("max_tokens") == max_tokens]
    latest: dict[tuple[str, str], str] = {}
    for row in matching:  # rows are appended in time order
        latest[(row["label"], row["workload"])] = row["run_id"]
    return [row for row in matching if latest[(row["label"], row["workload"])] == row["run_id"]]


def draw_charts(rows: list[dict], chart: Path, title: str) -> list[Path]:
    drawn = []
    levels = [dict(row, series=f"{row['label']} {row['workload']}", clients=f"{row['concurrency']} client(s)")
              for row in rows if row["workload"] in ("text", "image") and row.get("aggregate_tps") not in (None, "")]
    if levels:
        levels.sort(key=lambda row: int(row["concurrency"]))
        grouped_bar_chart(chart, levels, [("aggregate_tps", "aggregate decode tok/s"),
                                          ("ttft_s_p50", "TTFT p50, s (lower is better)"),
                                          ("e2e_s_p50", "latency p50, s (lower is better)")],
                          group_key="clients", series_key="series", title=title)
        drawn.append(chart)
    repeat = [row for row in rows if row["workload"] == "repeat-screenshot" and row.get("ttft_s_avg") not in (None, "")]
    if repeat:
        cache_chart = chart.with_name(chart.stem + "-repeat.png")
        grouped_bar_chart(cache_chart, repeat, [("ttft_s_avg", "TTFT avg, s (lower is better)"),
                                                ("cached_tokens_avg", "cached prompt tokens")],
                          group_key="phase", series_key="label", title=f"repeated screenshot: {title}")
        drawn.append(cache_chart)
    agent = [dict(row, series=f"{row['label']} {row['workload']}" + (f" {row['image_budget']}" if row.get("image_budget") else ""))
             for row in rows if row["workload"] in AGENT_WORKLOADS and row.get("ttft_s_avg") not in (None, "")]
    if agent:
        agent_chart = chart.with_name(chart.stem + "-agent.png")
        agent.sort(key=lambda row: int(row["turn"]))
        grouped_bar_chart(agent_chart, agent, [("ttft_s_avg", "TTFT avg, s (lower is better)"),
                                               ("cached_tokens_avg", "cached prompt tokens")],
                          group_key="phase", series_key="series", title=f"agent loop, per turn: {title}")
        drawn.append(agent_chart)
    return drawn


# --- main -------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    from holo_mlx.testing import PRESET_FAMILIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url", help="a running server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    source.add_argument("--model", type=Path, help="a model folder to serve here (converted, or a HF folder)")
    source.add_argument("--preset", choices=list(PRESET_FAMILIES),
                        help=f"random weights of this shape, served here (default {DEFAULTS['preset']})")
    parser.add_argument("--server", choices=SERVERS, default="holo-mlx",
                        help="with --model/--preset: which server to start (default holo-mlx: serve.py)")
    parser.add_argument("--server-args", default="", help='flags passed to the started server, e.g. "--max-num-seqs 8"')
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for the started server (repeatable), e.g. APC_ENABLED=1 "
                             "(mlx-vlm's prefix cache)")
    parser.add_argument("--serve-py", type=Path, default=REPO / "serve.py",
                        help="with --server holo-mlx: the serve.py to start (another checkout's, to compare)")
    parser.add_argument("--served-model", help="model id to send (default: /v1/models' first id; the folder "
                                               "path for a started mlx-vlm)")
    parser.add_argument("--api-key", default=os.environ.get("HOLO_API_KEY", "none"))
    parser.add_argument("--label", help="tags the rows, e.g. holo-mlx or mlx-vlm (default: the server's kind)")
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                        help=f"comma-separated, from {', '.join(WORKLOADS)} (default {','.join(DEFAULT_WORKLOADS)})")
    parser.add_argument("--agent-turns", type=int, default=5, help="turns of each agent-loop conversation (default 5)")
    parser.add_argument("--budget-turns", type=int, default=7, help="turns of each agent-budget conversation (default 7)")
    parser.add_argument("--image-budget", default="3:5", metavar="KEEP:MOST",
                        help="agent-budget: once a conversation holds more than MOST images, all but the latest "
                             "KEEP become the text '[screenshot evicted]' (default 3:5; 3:3 evicts every turn "
                             "from the fourth)")
    parser.add_argument("--concurrency", help=f"comma-separated client counts (default {DEFAULTS['concurrency']})")
    parser.add_argument("--runs", type=int, help=f"timed requests per client per level; rounds of repeat-screenshot "
                                                 f"(default {DEFAULTS['runs']})")
    parser.add_argument("--warmup", type=int, help=f"untimed rounds first (default {DEFAULTS['warmup']})")
    parser.add_argument("--max-tokens", type=int, help=f"tokens generated per request (default {DEFAULTS['max_tokens']})")
    parser.add_argument("--image-size", default="1280x720", help="screenshot WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--no-ignore-eos", action="store_true", help="let requests stop at EOS")
    parser.add_argument("--request-timeout", type=float, default=600, help="seconds per request")
    parser.add_argument("--time-limit", type=float, default=3600, help="skip the remaining workloads after this")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument("--csv", type=Path, default=REPO / "benchmarks" / "results" / "server.csv")
    parser.add_argument("--chart", type=Path, help="PNG path (default next to the CSV, named after the model); "
                                                   "the repeat-screenshot chart gets a -repeat suffix")
    parser.add_argument("--chart-only", action="store_true", help="redraw the charts of the CSV's latest model")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny preset, concurrency 1,2, 2 runs, 1 warm-up round, 8 tokens")
    args = parser.parse_args(argv)
    for key, default in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None and not (key == "preset" and (args.model or args.url)):
            setattr(args, key, default)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := set(args.workloads) - set(WORKLOADS):
        parser.error(f"unknown workload {sorted(unknown)[0]!r}; choose from {', '.join(WORKLOADS)}")
    try:
        args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
        args.image_size = tuple(int(v) for v in args.image_size.lower().split("x"))
        args.image_budget = tuple(int(v) for v in args.image_budget.split(":"))
    except ValueError:
        parser.error("--concurrency is comma-separated integers, --image-size WIDTHxHEIGHT, --image-budget KEEP:MOST")
    if len(args.image_budget) != 2 or not 1 <= args.image_budget[0] <= args.image_budget[1]:
        parser.error("--image-budget is KEEP:MOST with 1 <= KEEP <= MOST")
    if args.agent_turns < 1 or args.budget_turns < 1:
        parser.error("--agent-turns and --budget-turns must be >= 1")
    if min(args.concurrency) < 1 or args.runs < 1 or args.warmup < 0 or args.max_tokens < 2 or len(args.image_size) != 2:
        parser.error("--concurrency and --runs must be >= 1, --warmup >= 0, --max-tokens >= 2")
    return args


def model_id(url: str, api_key: str) -> str:
    import httpx

    response = httpx.get(f"{url.rstrip('/')}/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    response.raise_for_status()
    return response.json()["data"][0]["id"]


def print_results(rows: list[dict]) -> None:
    levels = [row for row in rows if row["workload"] in ("text", "image")]
    if levels:
        print("\n" + format_table(levels, [
            ("label", "label"), ("workload", "workload"), ("concurrency", "clients"), ("requests", "reqs"),
            ("errors", "errors"), ("prompt_tokens_avg", "prompt"), ("aggregate_tps", "agg tok/s"),
            ("requests_per_s", "req/s"), ("decode_tps_per_request_avg", "tok/s/req"),
            ("ttft_s_avg", "TTFT avg"), ("ttft_s_p50", "TTFT p50"), ("ttft_s_p90", "TTFT p90"),
            ("ttft_s_stdev", "TTFT sd"), ("e2e_s_avg", "e2e avg"), ("e2e_s_p50", "e2e p50"),
            ("e2e_s_p90", "e2e p90"), ("e2e_s_stdev", "e2e sd")]))
        for label in dict.fromkeys(row["label"] for row in levels):
            for workload in dict.fromkeys(row["workload"] for row in levels):
                tps = {row["concurrency"]: row.get("aggregate_tps") for row in levels
                       if row["label"] == label and row["workload"] == workload}
                low, high = min(tps), max(tps)
                if low != high and tps[low] and tps[high]:
                    print(f"{label} {workload}: aggregate tok/s at {high} clients / {low} client(s) = "
                          f"{tps[high] / tps[low]:.2f}x")
    repeat = [row for row in rows if row["workload"] == "repeat-screenshot"]
    if repeat:
        print("\n" + format_table(repeat, [
            ("label", "label"), ("phase", "phase"), ("requests", "reqs"), ("errors", "errors"),
            ("prompt_tokens_avg", "prompt"), ("cached_tokens_avg", "cached"), ("ttft_s_avg", "TTFT avg"),
            ("ttft_s_p50", "TTFT p50"), ("ttft_s_stdev", "TTFT sd"), ("ttft_vs_cold", "TTFT / cold"),
            ("e2e_s_avg", "e2e avg")]))
    agent = [row for row in rows if row["workload"] in AGENT_WORKLOADS]
    if agent:
        print("\n" + format_table(agent, [
            ("label", "label"), ("workload", "workload"), ("phase", "turn"), ("requests", "reqs"),
            ("errors", "errors"), ("images", "images"), ("evicted", "evicted"), ("prompt_tokens_avg", "prompt"),
            ("cached_tokens_avg", "cached"), ("ttft_s_avg", "TTFT avg"), ("ttft_s_stdev", "TTFT sd"),
            ("ttft_vs_turn1", "TTFT / turn 1"), ("e2e_s_avg", "e2e avg")]))
        for label in dict.fromkeys(row["label"] for row in agent):
            for workload in dict.fromkeys(row["workload"] for row in agent):
                turns = [row for row in agent if row["label"] == label and row["workload"] == workload]
                if len(turns) > 1 and turns[-1].get("ttft_vs_turn1"):
                    print(f"{label} {workload}: TTFT of {turns[-1]['phase']} / turn 1 = {turns[-1]['ttft_vs_turn1']:.2f}x, "
                          f"max over the turns {max(row.get('ttft_vs_turn1') or 0 for row in turns):.2f}x")


def thinking_off(kind: str) -> dict:
    """The request fields that turn a thinking model's reasoning off: vLLM's chat_template_kwargs
    (holo-mlx), mlx-vlm's own enable_thinking."""
    return {"enable_thinking": False} if kind == "mlx-vlm" else {"chat_template_kwargs": {"enable_thinking": False}}


async def measure(args, url: str, model: str, extra_body: dict, deadline: float,
                  kind: str = "server") -> tuple[list[dict], list[str]]:
    client = Client(url, model, args.api_key, args.max_tokens, args.request_timeout, extra_body)
    rows, errors, seed = [], [], 1000
    try:
        for workload in args.workloads:
            levels = [1] if workload == "repeat-screenshot" or workload in AGENT_WORKLOADS else args.concurrency
            for clients in levels:
                if time.monotonic() > deadline:
                    print(f"time limit reached: skipping {workload} at {clients} client(s)", flush=True)
                    continue
                load = os.getloadavg()[0]
                print(f"{workload}: {clients} client(s) ...", end=" ", flush=True)
                if workload in AGENT_WORKLOADS:
                    budget = args.image_budget if workload == "agent-budget" else None
                    turns = args.budget_turns if budget else args.agent_turns
                    new_rows, new_errors = await run_agent(client, workload, turns, args.runs, args.warmup,
                                                           args.image_size, seed, budget, thinking_off(kind))
                    seed += args.warmup + args.runs * turns
                    print(", ".join(f"{row['phase']} TTFT {row.get('ttft_s_avg', float('nan')):.2f}s "
                                    f"cached {row.get('cached_tokens_avg', 0):.0f}" for row in new_rows), flush=True)
                elif workload == "repeat-screenshot":
                    new_rows, new_errors = await run_repeat(client, args.runs, args.warmup, args.image_size, seed)
                    seed += args.runs + args.warmup
                    print(", ".join(f"{row['phase']} TTFT {row.get('ttft_s_avg', float('nan')):.3f}s "
                                    f"cached {row.get('cached_tokens_avg', 0):.0f}" for row in new_rows), flush=True)
                else:
                    row, new_errors = await run_level(client, workload, clients, args.runs, args.warmup,
                                                      args.image_size, seed)
                    seed += clients * (args.runs + args.warmup)
                    new_rows = [row]
                    print(f"{row.get('aggregate_tps', 0):.1f} tok/s aggregate, TTFT p50 "
                          f"{row.get('ttft_s_p50', float('nan')):.3f}s, {row['errors']} errors", flush=True)
                for row in new_rows:
                    row.update({"loadavg_1m_start": load, "loadavg_1m_end": os.getloadavg()[0]})
                rows += new_rows
                errors += new_errors
    finally:
        await client.close()
    return rows, errors


def main(argv=None) -> int:
    from holo_mlx.runtime import use_fast_blas

    use_fast_blas()  # re-executes with OpenBLAS preloaded; a started server inherits it
    # SIGTERM ends the run through the `finally` that stops a started server (it would also stop
    # by itself: die_with_parent), rather than killing the interpreter on the spot.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    args = parse_args(argv)
    args.csv = args.csv.resolve()
    if args.chart_only:
        csv_rows = read_csv(args.csv)
        if not csv_rows:
            raise SystemExit(f"no rows in {args.csv}")
        last = csv_rows[-1]
        rows = chart_rows(csv_rows, last["model"], last["max_tokens"])
        chart = args.chart or args.csv.with_name(f"server-{last['model'].replace(' ', '-')}.png")
        for path in draw_charts(rows, chart, chart_title(last)):
            print(f"chart {path}")
        return 0

    started = time.monotonic()
    server = None
    folder = None
    if args.url:
        url, kind = args.url.rstrip("/"), server_kind(args.url)
        model_label = args.served_model
    else:
        folder = args.model.resolve() if args.model else preset_folder(args.preset, args.cache_dir.resolve())
        env = dict(item.split("=", 1) for item in args.server_env)
        server = LocalServer(args.server, folder, shlex.split(args.server_args), env=env, serve_py=args.serve_py)
        print(f"starting {args.server}: {shlex.join(server.command)}", flush=True)
        url, kind = server.start(), args.server
        model_label = f"preset {args.preset}" if args.preset else folder.name
    try:
        model = args.served_model or (str(folder) if kind == "mlx-vlm" and folder else model_id(url, args.api_key))
        model_label = model_label or model
        extra_body = {} if args.no_ignore_eos else {"ignore_eos": True}
        if kind != "holo-mlx" and not args.no_ignore_eos:
            # mlx-vlm has no ignore_eos: a large negative logit bias keeps EOS from being chosen.
            extra_body["logit_bias"] = {str(token): -100 for token in eos_token_ids(folder)}
        print(f"benchmarking {kind} at {url} (model {model})", flush=True)
        rows, errors = asyncio.run(measure(args, url, model, extra_body, started + args.time_limit, kind))
        if errors and server is not None:
            print(f"{len(errors)} requests failed; the server's last output:\n{server.log()}", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    if not rows:
        raise SystemExit("nothing was measured")

    info = system_info()
    run_id = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    label = args.label or kind
    for row in rows:
        row.update({"run_id": run_id, "label": label, "server": kind, "model": model_label, "url": url,
                    "server_args": " ".join([*args.server_env, args.server_args]).strip() if server else "", "max_tokens": args.max_tokens,
                    "runs": args.runs, "warmup": args.warmup, "image_size": "x".join(map(str, args.image_size)),
                    "ignore_eos": not args.no_ignore_eos, **info})
    append_csv(args.csv, rows)
    print_results(rows)
    for error in dict.fromkeys(errors):
        print(f"error: {error}", file=sys.stderr)
    short = sum(int(row.get("short_requests") or 0) for row in rows)
    if short:
        print(f"warning: {short} requests generated fewer than {args.max_tokens} tokens "
              "(the server ignored ignore_eos/logit_bias?)", file=sys.stderr)

    chart = args.chart or args.csv.with_name(f"server-{model_label.replace(' ', '-').replace('/', '_')}.png")
    csv_rows = read_csv(args.csv)
    drawn = draw_charts(chart_rows(csv_rows, model_label, str(args.max_tokens)), chart, chart_title(csv_rows[-1]))
    print(f"\nappended {len(rows)} rows to {args.csv}; charts: {', '.join(map(str, drawn)) or 'none'}")
    return 1 if errors else 0


def chart_title(row: dict) -> str:
    return (f"{row['model']}, {row['max_tokens']} tokens/request: {row['cpu']} ({row['cores']} cores), "
            f"MLX {row['mlx_device']}, OpenBLAS preloaded: {row['openblas_preloaded']}")


if __name__ == "__main__":
    sys.exit(main())
