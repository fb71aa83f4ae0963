"""Embeddings memory benchmark: the server's peak RSS while it embeds one long input, and how long
a chat waits while it does.

Starts serve.py on 127.0.0.1 (the tiny preset by default, random weights) and sends, one at a
time, single embedding inputs of each --sizes token count ("max": the largest a single input may
have, the model's context or --max-model-len). Inputs are random ordinary token ids. A thread polls
the server process's VmRSS (/proc/PID/status); each size reports the peak over the idle RSS just
before it. While the largest input is embedded, a 2-token chat is sent; its latency is reported
next to the same chat's on an idle server, with whether the embedding was still running when the
chat was answered.

    python benchmarks/bench_embed_memory.py                         # 8k, 32k and max on the tiny preset
    python benchmarks/bench_embed_memory.py --preset 0.5b --sizes 8192,32768
    python benchmarks/bench_embed_memory.py --sizes 2000,max --max-model-len 4096 --server-args "--embedding-chunk 64"

Linux only (it reads /proc).
"""

import argparse
import json
import shlex
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench_runtime import preset_folder
from bench_server import REPO, LocalServer, base_of
from common import format_table

SAMPLE_EVERY_S = 0.02
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "ignore_eos": True, "temperature": 0}


class RSSSampler:
    """Polls a process's resident set size in a thread; peak() is the largest since the last reset()."""

    def __init__(self, pid: int):
        self.status = Path(f"/proc/{pid}/status")
        self.highest = 0
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def rss(self) -> int:
        for line in self.status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS in {self.status}")

    def _poll(self) -> None:
        while self.running:
            value = self.rss()
            with self.lock:
                self.highest = max(self.highest, value)
            time.sleep(SAMPLE_EVERY_S)

    def reset(self) -> None:
        with self.lock:
            self.highest = 0

    def peak(self) -> int:
        with self.lock:
            return self.highest

    def idle(self, seconds: float = 1.0) -> int:
        """The median RSS over a quiet moment (the server gives freed memory back once idle)."""
        samples = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            samples.append(self.rss())
            time.sleep(SAMPLE_EVERY_S)
        return int(np.median(samples))

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def token_ids(count: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(100, 150_000, count).tolist()


def embed(base: str, tokens: int, seed: int) -> float:
    start = time.perf_counter()
    response = httpx.post(f"{base}/v1/embeddings", json={"input": token_ids(tokens, seed), "encoding_format": "base64"},
                          timeout=3600)
    response.raise_for_status()
    assert response.json()["usage"]["prompt_tokens"] == tokens
    return time.perf_counter() - start


def chat(base: str) -> float:
    start = time.perf_counter()
    httpx.post(f"{base}/v1/chat/completions", json=CHAT, timeout=3600).raise_for_status()
    return time.perf_counter() - start


def embed_with_a_chat_during(base: str, tokens: int, seed: int, figures: dict) -> float:
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(seconds=embed(base, tokens, seed)))
    worker.start()
    time.sleep(1.0)  # well into the embedding
    figures["chat_during_largest_s"] = chat(base)
    figures["embedding_still_running_when_answered"] = worker.is_alive()
    worker.join()
    return outcome["seconds"]


def context_length(folder: Path, requested: int | None) -> int:
    from holo_mlx.models.qwen2_5_vl.config import ModelConfig
    from holo_mlx.loading import read_config

    limit = ModelConfig.from_dict(read_config(folder)).text_config.max_position_embeddings
    return min(limit, requested or limit)


def measure(base: str, sampler: RSSSampler, sizes: list[int]) -> tuple[list[dict], dict]:
    embed(base, 64, seed=0)  # warm-up: first-call allocations belong to the baseline
    figures = {"idle_chat_s": min(chat(base) for _ in range(3)), "largest_tokens": sizes[-1]}
    rows = []
    for seed, tokens in enumerate(sizes, start=1):
        baseline = sampler.idle()
        sampler.reset()
        seconds = (embed_with_a_chat_during(base, tokens, seed, figures) if seed == len(sizes)
                   else embed(base, tokens, seed))
        growth = max(sampler.peak() - baseline, 0)
        rows.append({"tokens": tokens, "embed_s": seconds, "tokens_per_s": tokens / seconds,
                     "baseline_mb": baseline / 2**20, "peak_growth_mb": growth / 2**20,
                     "growth_kb_per_token": growth / 1024 / tokens})
    return rows, figures


def parse_args(argv=None) -> argparse.Namespace:
    from holo_mlx.testing import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="a model folder to serve (converted, or a HF folder)")
    source.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="random weights of this shape")
    parser.add_argument("--sizes", default="8192,32768,max",
                        help="comma-separated input lengths in tokens, 'max' for the largest one input may have")
    parser.add_argument("--max-model-len", type=int, help="passed to the server; 'max' follows it")
    parser.add_argument("--server-args", default="", help='more flags for serve.py, e.g. "--embedding-chunk 256"')
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = args.model.resolve() if args.model else preset_folder(args.preset, args.cache_dir.resolve())
    longest = context_length(folder, args.max_model_len)
    sizes = [longest if size.strip() == "max" else int(size) for size in args.sizes.split(",")]
    if max(sizes) > longest:
        sys.exit(f"error: {max(sizes)} tokens do not fit the context ({longest})")
    server_args = shlex.split(args.server_args)
    if args.max_model_len:
        server_args += ["--max-model-len", str(args.max_model_len)]
    server = LocalServer("holo-mlx", folder, server_args)
    print(f"starting: {shlex.join(server.command)}", flush=True)
    url = server.start()
    sampler = RSSSampler(server.pid)
    try:
        rows, chat_figures = measure(base_of(url), sampler, sizes)
    finally:
        sampler.stop()
        server.stop()

    print(f"\nmodel: {folder}  (sizes: {', '.join(map(str, sizes))} tokens; one input per request)\n")
    print(format_table(rows, [("tokens", "input tokens"), ("embed_s", "embed s"), ("tokens_per_s", "tok/s"),
                              ("baseline_mb", "idle RSS MB"), ("peak_growth_mb", "peak RSS growth MB"),
                              ("growth_kb_per_token", "KB/token")]))
    print(f"\n2-token chat: {chat_figures['idle_chat_s']:.3f} s on an idle server, "
          f"{chat_figures['chat_during_largest_s']:.3f} s while {chat_figures['largest_tokens']} tokens were "
          f"being embedded (embedding still running when it was answered: "
          f"{chat_figures['embedding_still_running_when_answered']})")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, **chat_figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
