"""Engine benchmark: mlx-vlm's stream_generate against holo-mlx's server, one client and many, on one folder.

For each preset (or --model), on the same converted MLX folder and in one run:

- mlx-vlm: `mlx_vlm.stream_generate` in this process, the folder loaded by `mlx_vlm.load`;
- holo-mlx, 1 client: `serve.py` started on 127.0.0.1 (a free port), the `openai` SDK streaming chat;
- holo-mlx, --clients concurrent clients (default 8) against the same server;
- the engine's host time and device-wait time per step over each server phase, from the deltas of
  /metrics' holo_engine_steps_total, holo_engine_step_host_seconds_total and
  holo_engine_step_wait_seconds_total (left out for a serve.py older than them, e.g. --serve-py of an
  earlier checkout to compare before and after).

Every request is the text workload of bench_server.py: a new system prompt per request (so no cache
flatters it) and a ~110-token instruction, greedy, exactly --max-tokens tokens. EOS is ignored:
the server gets `ignore_eos` (extra_body); for mlx-vlm the tokenizer's stopping criterion, which
stream_generate consults after each token, is replaced by one that never stops.

Figures, per phase:
- decode tok/s: per request, (tokens - 1) / (last token - first token), averaged over the requests
  (for a streaming client, "last token" is the end of the stream: the finish and usage chunks that
  follow the last token's chunk at once are in it);
- aggregate tok/s: all completion tokens / the phase's wall time, prefill included (bench_server's
  figure); the many-clients ratio is aggregate ÷ the lone client's aggregate;
- host ms / step and wait ms / step: the engine's counters, summed over the rounds, ÷ steps.

After --warmup untimed requests of each phase, --rounds rounds each run the three phases, every
client sending --runs requests back to back; the order reverses every other round (A B C, C B A)
so a slow spell of a shared machine hits every phase alike. Each figure is the median over the
rounds. The targets of the issue (tiny: lone client >= 0.97x mlx-vlm's decode, 8 clients >= 5x
the lone client; 0.5b: no worse than 6.2 tok/s lone decode and 3.5x) are printed with whether
each is met. The JSON (every figure, every round, the system) and one PNG chart per preset go to --out.

    python benchmarks/bench_engine.py --quick                        # smoke run: tiny, 2 clients, 4 tokens
    python benchmarks/bench_engine.py                                # tiny and 0.5b, 8 clients, 32 tokens
    python benchmarks/bench_engine.py --preset 0.5b --rounds 3
    python benchmarks/bench_engine.py --model models/Holo1.5-3B-mlx --clients 8

Presets are random-weight checkpoints converted to float32 once under .cache/bench/<preset>/mlx-float32
(bench_runtime.py's preset_folder).
"""

import argparse
import asyncio
import gc
import json
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_runtime import preset_folder
from bench_server import REPO, Client, LocalServer, base_of, model_id, run_level
from common import format_table, grouped_bar_chart, system_info, text_messages
from soak import parse_metrics

STEP_METRICS = ("holo_engine_steps_total", "holo_engine_step_host_seconds_total",
                "holo_engine_step_wait_seconds_total")
DEFAULTS = {"preset": "tiny,0.5b", "clients": 8, "runs": 3, "warmup": 1, "rounds": 2, "max_tokens": 32}
QUICK = {"preset": "tiny", "clients": 2, "runs": 1, "warmup": 1, "rounds": 1, "max_tokens": 4}
PHASES = ("mlx_vlm", "lone", "concurrent")
TARGET_CLIENTS = 8  # the targets are for 8 concurrent clients

# (figure, minimum, what it is). "ratio" figures are computed in ratios(); the 0.5b floors are the
# figures measured before this benchmark existed (docs/benchmarks.md).
TARGETS = {
    "tiny": [("lone_vs_mlx_vlm_decode", 0.97, "holo-mlx lone client decode / mlx-vlm stream_generate decode"),
             ("concurrent_vs_lone_aggregate", 5.0, "8 clients / 1 client, aggregate tok/s")],
    "0.5b": [("lone_decode_tps", 6.2, "holo-mlx lone client decode tok/s"),
             ("concurrent_vs_lone_aggregate", 3.5, "8 clients / 1 client, aggregate tok/s")],
}


# --- mlx-vlm ----------------------------------------------------------------------------------

class MlxVlmStream:
    """mlx-vlm's own loader and stream_generate (its prompt processing, prefill and decode loop)."""

    def __init__(self, folder: Path):
        import mlx_vlm

        self.model, self.processor = mlx_vlm.load(str(folder))
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        # stream_generate breaks when stopping_criteria(token) is true: never, as with ignore_eos.
        self.tokenizer.stopping_criteria = lambda token: False
        # A random-weight checkpoint samples ids in the embedding's padding past the tokenizer's
        # vocabulary, which mlx-vlm's detokenizer has no text for: give them one.
        tokenmap = self.processor.detokenizer.tokenmap
        rows = self.model.language_model.model.embed_tokens.weight.shape[0]
        tokenmap.extend(["!"] * (rows - len(tokenmap)))

    def request(self, seed: int, max_tokens: int) -> dict:
        from mlx_vlm.generate import stream_generate

        prompt = self.tokenizer.apply_chat_template(text_messages(seed), tokenize=False, add_generation_prompt=True)
        stamps, prompt_tokens = [], 0
        start = time.perf_counter()
        for result in stream_generate(self.model, self.processor, prompt, max_tokens=max_tokens, temperature=0.0):
            if result.finish_reason is None:  # the closing result repeats the last token with its reason
                stamps.append(time.perf_counter())
                prompt_tokens = result.prompt_tokens
        if len(stamps) != max_tokens:
            raise RuntimeError(f"mlx-vlm generated {len(stamps)} tokens, expected exactly {max_tokens}")
        return {"ttft_s": stamps[0] - start, "e2e_s": stamps[-1] - start, "prompt_tokens": prompt_tokens,
                "decode_tps": (len(stamps) - 1) / (stamps[-1] - stamps[0])}

    def phase(self, runs: int, max_tokens: int, seed: int) -> dict:
        start = time.perf_counter()
        results = [self.request(seed + i, max_tokens) for i in range(runs)]
        wall = time.perf_counter() - start
        return {"requests": runs, "errors": 0, "wall_s": wall, "aggregate_tps": runs * max_tokens / wall,
                "decode_tps": statistics.fmean(r["decode_tps"] for r in results),
                "ttft_s_p50": statistics.median(r["ttft_s"] for r in results),
                "prompt_tokens_avg": statistics.fmean(r["prompt_tokens"] for r in results)}

    def close(self) -> None:
        import mlx.core as mx

        del self.model, self.processor, self.tokenizer
        gc.collect()
        mx.clear_cache()


# --- holo-mlx ---------------------------------------------------------------------------------

def step_counters(url: str, api_key: str) -> dict[str, float] | None:
    """The engine's step counters from /metrics; None from a server older than them (--serve-py
    of an earlier checkout, to compare before and after): its step figures are then left out."""
    import httpx

    response = httpx.get(f"{base_of(url)}/metrics", headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    response.raise_for_status()
    values = parse_metrics(response.text)
    if any(name not in values for name in STEP_METRICS):
        return None
    return {name: values[name] for name in STEP_METRICS}


async def holo_phase(url: str, model: str, args, clients: int, runs: int, seed: int) -> tuple[dict, list[str]]:
    """`clients` streaming clients, `runs` requests each, with the engine counters' deltas over them.

    A fresh SDK client per phase: a connection left idle during the mlx-vlm phase may have been
    closed by the server, and the SDK here does not retry.
    """
    client = Client(url, model, args.api_key, args.max_tokens, args.request_timeout, {"ignore_eos": True})
    try:
        before = await asyncio.to_thread(step_counters, url, args.api_key)
        row, errors = await run_level(client, "text", clients, runs, 0, (0, 0), seed)
        after = await asyncio.to_thread(step_counters, url, args.api_key)
    finally:
        await client.close()
    steps, host, wait = (after[name] - before[name] if after else None for name in STEP_METRICS)
    row.update({"decode_tps": row.get("decode_tps_per_request_avg"), "steps": steps, "host_s": host, "wait_s": wait})
    return row, errors


# --- one preset -------------------------------------------------------------------------------

def round_order(index: int) -> tuple[str, ...]:
    return PHASES if index % 2 == 0 else PHASES[::-1]


async def measure_folder(folder: Path, args) -> tuple[dict, list[str]]:
    """Start the server, load mlx-vlm, warm every phase up, then run the rounds."""
    server = LocalServer("holo-mlx", folder, ["--max-num-seqs", str(args.clients), *shlex.split(args.server_args)],
                         serve_py=args.serve_py)
    print(f"starting holo-mlx: {shlex.join(server.command)}", flush=True)
    mlx_vlm = None
    errors: list[str] = []
    try:
        # Inside the try: start() can raise with the server still running (a model that failed to load).
        url = server.start()
        step_counters(url, args.api_key)  # before anything is measured: a server without them fails fast
        model = model_id(url, args.api_key)
        print(f"loading {folder} with mlx-vlm", flush=True)
        mlx_vlm = MlxVlmStream(folder)
        seed = 1000

        async def run(phase: str, runs: int) -> dict:
            nonlocal seed, errors
            if phase == "mlx_vlm":
                # On this thread, where the model was loaded (MLX streams are per thread); it blocks the
                # event loop, which has nothing else to do meanwhile.
                row = mlx_vlm.phase(runs, args.max_tokens, seed)
                seed += runs
                return row
            clients = 1 if phase == "lone" else args.clients
            row, new_errors = await holo_phase(url, model, args, clients, runs, seed)
            seed += clients * runs
            errors += new_errors
            return row

        if args.warmup:
            print(f"warm-up: {args.warmup} untimed request(s) per client of each phase", flush=True)
            for phase in PHASES:
                await run(phase, args.warmup)
        rounds: list[dict[str, dict]] = []
        for index in range(args.rounds):
            measured = {}
            for phase in round_order(index):
                measured[phase] = await run(phase, args.runs)
            rounds.append({phase: measured[phase] for phase in PHASES})
            print(f"round {index + 1}/{args.rounds}: " + ", ".join(
                f"{phase} {measured[phase].get('decode_tps') or 0:.1f} decode / "
                f"{measured[phase].get('aggregate_tps') or 0:.1f} aggregate tok/s" for phase in PHASES), flush=True)
        if errors:
            print(f"{len(errors)} requests failed; the server's last output:\n{server.log()}", file=sys.stderr)
    finally:
        if mlx_vlm is not None:
            mlx_vlm.close()
        server.stop()
    return summarize_rounds(rounds, args), errors


def median_of(rounds: list[dict], phase: str, key: str) -> float | None:
    values = [r[phase][key] for r in rounds if r[phase].get(key) is not None]
    return statistics.median(values) if values else None


def summarize_rounds(rounds: list[dict], args) -> dict:
    """Medians over the rounds; the step times pooled (all rounds' seconds / all their steps)."""
    phases = {}
    for phase in PHASES:
        figures = {key: median_of(rounds, phase, key)
                   for key in ("decode_tps", "aggregate_tps", "ttft_s_p50", "prompt_tokens_avg")}
        figures["requests"] = sum(r[phase]["requests"] for r in rounds)
        figures["errors"] = sum(r[phase]["errors"] for r in rounds)
        figures["clients"] = {"mlx_vlm": 1, "lone": 1, "concurrent": args.clients}[phase]
        if phase != "mlx_vlm":
            counted = [r[phase] for r in rounds if r[phase]["steps"] is not None]
            steps = sum(r["steps"] for r in counted)
            host, wait = (sum(r[key] for r in counted) for key in ("host_s", "wait_s"))
            figures.update({"steps": steps, "host_ms_per_step": 1e3 * host / steps if steps else None,
                            "wait_ms_per_step": 1e3 * wait / steps if steps else None,
                            "short_requests": sum(r[phase].get("short_requests", 0) for r in rounds)})
        phases[phase] = figures
    per_round = [ratios(r) for r in rounds]
    return {**phases, "ratios": ratios(phases), "ratios_per_round": per_round, "rounds": rounds}


def ratios(phases: dict) -> dict:
    def divide(a, b):
        return a / b if a and b else None

    return {"lone_vs_mlx_vlm_decode": divide(phases["lone"].get("decode_tps"), phases["mlx_vlm"].get("decode_tps")),
            "concurrent_vs_lone_aggregate": divide(phases["concurrent"].get("aggregate_tps"),
                                                   phases["lone"].get("aggregate_tps"))}


def check_targets(preset: str | None, result: dict, clients: int) -> list[dict]:
    """Each target of the preset with its measured value and whether it is met (None: not comparable)."""
    figures = {**result["ratios"], "lone_decode_tps": result["lone"]["decode_tps"]}
    checked = []
    for key, minimum, meaning in TARGETS.get(preset, []):
        value = figures.get(key)
        comparable = value is not None and (not key.startswith("concurrent") or clients == TARGET_CLIENTS)
        checked.append({"figure": key, "meaning": meaning, "value": value, "minimum": minimum,
                        "met": (value >= minimum) if comparable else None})
    return checked


# --- output -----------------------------------------------------------------------------------

LABELS = {"mlx_vlm": "mlx-vlm\nstream_generate", "lone": "holo-mlx\n1 client", "concurrent": "holo-mlx\n{} clients"}


def phase_label(phase: str, clients: int, lines: bool = False) -> str:
    """Two lines under a chart's bars, one in the printed table."""
    label = LABELS[phase].format(clients)
    return label if lines else label.replace("\n", " ")


def print_result(name: str, result: dict, args) -> None:
    rows = [{"phase": phase_label(phase, args.clients), **result[phase]} for phase in PHASES]
    print(f"\n{name}: {args.max_tokens} tokens per request, {args.runs} request(s) per client per round, "
          f"median of {args.rounds} round(s) after {args.warmup} warm-up request(s)")
    print(format_table(rows, [
        ("phase", "phase"), ("requests", "reqs"), ("errors", "errors"), ("prompt_tokens_avg", "prompt"),
        ("decode_tps", "decode tok/s"), ("aggregate_tps", "agg tok/s"), ("ttft_s_p50", "TTFT p50 s"),
        ("steps", "steps"), ("host_ms_per_step", "host ms/step"), ("wait_ms_per_step", "wait ms/step")]))
    for key, value in result["ratios"].items():
        per_round = ", ".join("-" if r[key] is None else f"{r[key]:.2f}" for r in result["ratios_per_round"])
        shown = "-" if value is None else f"{value:.2f}x"
        print(f"{key}: {shown} (round by round {per_round})")
    for target in result["targets"]:
        verdict = {True: "MET", False: "NOT MET", None: f"n/a (needs {TARGET_CLIENTS} clients)"}[target["met"]]
        value = "-" if target["value"] is None else f"{target['value']:.3g}"
        print(f"target {target['meaning']} >= {target['minimum']:g}: {value}  {verdict}")


def draw_chart(path: Path, name: str, result: dict, args, info: dict) -> None:
    # mlx-vlm has no engine steps: its bars in the step panels are left at zero.
    rows = [{"phase": phase_label(phase, args.clients, lines=True), "series": name,
             **{key: result[phase].get(key) or 0.0
                for key in ("decode_tps", "aggregate_tps", "host_ms_per_step", "wait_ms_per_step")}}
            for phase in PHASES]
    grouped_bar_chart(path, rows, [("decode_tps", "decode tok/s per request"),
                                   ("aggregate_tps", "aggregate tok/s (prefill included)"),
                                   ("host_ms_per_step", "engine host ms / step (lower is better)"),
                                   ("wait_ms_per_step", "engine device-wait ms / step")],
                      group_key="phase", series_key="series",
                      title=f"{name}, {args.max_tokens} tokens/request: {info['cpu']} ({info['cores']} cores), "
                            f"MLX {info['mlx_device']}, OpenBLAS preloaded: {info['openblas_preloaded']}")


def parse_args(argv=None) -> argparse.Namespace:
    from holo_mlx.testing import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help=f"comma-separated, from {', '.join(sorted(PRESETS))} "
                                         f"(default {DEFAULTS['preset']})")
    source.add_argument("--model", type=Path, help="a converted MLX folder instead (mlx-vlm loads it too)")
    parser.add_argument("--clients", type=int, help=f"clients of the concurrent phase (default {DEFAULTS['clients']}; "
                                                    "the server gets --max-num-seqs this many)")
    parser.add_argument("--runs", type=int,
                        help=f"requests per client per phase and round (default {DEFAULTS['runs']})")
    parser.add_argument("--warmup", type=int, help=f"untimed requests per client of each phase first "
                                                   f"(default {DEFAULTS['warmup']})")
    parser.add_argument("--rounds", type=int, help=f"rounds of the three phases (default {DEFAULTS['rounds']})")
    parser.add_argument("--max-tokens", type=int,
                        help=f"tokens generated per request (default {DEFAULTS['max_tokens']})")
    parser.add_argument("--server-args", default="", help='more flags for serve.py, e.g. "--prefix-cache-mb 0"')
    parser.add_argument("--serve-py", type=Path, default=REPO / "serve.py", help="the serve.py to start")
    parser.add_argument("--api-key", default=os.environ.get("HOLO_API_KEY", "none"))
    parser.add_argument("--request-timeout", type=float, default=600, help="seconds per request")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "engine",
                        help="folder for engine.json and engine-<preset>.png (default benchmarks/results/engine)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny, 2 clients, 1 request per client, 1 warm-up, 1 round, 4 tokens")
    args = parser.parse_args(argv)
    for key, default in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None and not (key == "preset" and args.model):
            setattr(args, key, default)
    args.presets = [p.strip() for p in args.preset.split(",") if p.strip()] if args.preset else []
    if unknown := set(args.presets) - set(PRESETS):
        parser.error(f"unknown preset {sorted(unknown)[0]!r}; choose from {', '.join(sorted(PRESETS))}")
    if args.clients < 1 or args.runs < 1 or args.rounds < 1 or args.warmup < 0 or args.max_tokens < 2:
        parser.error("--clients, --runs and --rounds must be >= 1, --warmup >= 0, --max-tokens >= 2")
    return args


def main(argv=None) -> int:
    from holo_mlx.runtime import use_fast_blas

    use_fast_blas()  # re-executes with OpenBLAS preloaded; mlx-vlm here and the server both get it
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sources = [(args.model.name, None)] if args.model else [(f"preset {preset}", preset) for preset in args.presets]
    info = system_info()
    settings = ("clients", "runs", "warmup", "rounds", "max_tokens", "server_args")
    report = {"run_id": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "settings": {key: getattr(args, key) for key in settings}, "system": info, "results": {}}
    failed, short = [], 0
    for name, preset in sources:
        # Built (first time only) when its turn comes, so the earlier presets' results come first.
        folder = args.model.resolve() if preset is None else preset_folder(preset, args.cache_dir.resolve())
        result, errors = asyncio.run(measure_folder(folder, args))
        result.update({"folder": str(folder), "targets": check_targets(preset, result, args.clients),
                       "chart": str(out / f"engine-{preset or folder.name}.png")})
        report["results"][name] = result
        failed += errors
        short += sum(result[phase]["short_requests"] for phase in ("lone", "concurrent"))
        print_result(name, result, args)
        draw_chart(Path(result["chart"]), name, result, args, info)
        (out / "engine.json").write_text(json.dumps(report, indent=2))  # after each: a later failure keeps these
    for error in dict.fromkeys(failed):
        print(f"error: {error}", file=sys.stderr)
    if short:
        print(f"warning: {short} requests generated fewer than {args.max_tokens} tokens", file=sys.stderr)
    charts = ", ".join(result["chart"] for result in report["results"].values())
    print(f"\nwrote {out / 'engine.json'}; charts: {charts}")
    return 1 if failed or short else 0


if __name__ == "__main__":
    sys.exit(main())
