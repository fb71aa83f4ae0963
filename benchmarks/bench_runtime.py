"""End-to-end generation speed: holo_mlx vs transformers (torch) vs mlx-vlm, same weights, same inputs.

Every runtime gets the token ids and pixel values that holo_mlx's PromptBuilder produced, decodes
greedily for exactly --max-tokens tokens (EOS ignored), and runs in its own process, so its peak
memory is its own and the model is freed before the next one starts. Figures per runtime and
workload: load time, TTFT, prefill and decode tok/s, end-to-end latency, peak memory, and decode
speed as a percentage of the memory-bandwidth roofline. Rows are appended to a CSV; a PNG chart
compares the runtimes.

    python benchmarks/bench_runtime.py --quick                      # smoke run, tiny model
    python benchmarks/bench_runtime.py --quick --preset holo2-tiny  # smoke run, tiny Holo2 (Qwen3-VL)
    python benchmarks/bench_runtime.py --preset 0.5b --runs 3       # random weights, real shape
    python benchmarks/bench_runtime.py --preset holo2-0.6b --runtimes holo_mlx:float32,torch:float32,mlx_vlm:float32
    python benchmarks/bench_runtime.py --preset holo3-0.8b --workloads text,screenshot --screenshot 1280x720
    python benchmarks/bench_runtime.py --model models/Holo1.5-7B-mlx-8bit --hf-model Hcompany/Holo1.5-7B
    python benchmarks/bench_runtime.py --machine-only               # bandwidth and GEMM figures only
"""

import argparse
import copy
import importlib
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from common import (
    TEXT_PROMPT,
    append_csv,
    available_memory_bytes,
    format_table,
    grouped_bar_chart,
    memory_bandwidth_gbs,
    mlx_matmul_gflops,
    peak_rss_bytes,
    peak_rss_source,
    reset_peak_rss,
    summarize,
    system_info,
)
from holo_mlx.runtime import use_fast_blas

REPO = Path(__file__).resolve().parent.parent
MLX_FAMILIES = ("holo_mlx", "mlx_vlm")
MLX_VARIANTS = ("float32", "bfloat16", "8bit", "4bit")
TORCH_VARIANTS = ("float32", "bfloat16")
ALL_RUNTIMES = [f"{family}:{variant}" for family in MLX_FAMILIES for variant in MLX_VARIANTS] + [
    f"torch:{variant}" for variant in TORCH_VARIANTS]
QUICK_RUNTIMES = ["holo_mlx:float32", "torch:float32", "mlx_vlm:float32"]
# MLX's CPU backend hands only float32 matmuls to BLAS: bfloat16 ones (mlx-vlm computes in a bfloat16
# folder's dtype) and quantized ones run 25-60x slower (docs/benchmarks.md), minutes per screenshot.
SLOW_ON_CPU = {"mlx_vlm:bfloat16", "holo_mlx:8bit", "holo_mlx:4bit", "mlx_vlm:8bit", "mlx_vlm:4bit"}
FLOAT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
WORKLOADS = ("text", "screenshot", "screenshot_twice")
# screenshot_twice re-sends the screenshot request right after an identical one: what a vision or
# prefix cache saves. stream_generate, measured here, keeps nothing between requests, and neither do
# transformers or mlx-vlm's generate_step, so this row is the cost of a repeat without a cache (the
# server engine's caches are the server benchmark's business).
REPEATS = {"screenshot_twice": "screenshot"}
METRICS = ("ttft_s", "prefill_tps", "decode_tps", "e2e_s")
DEFAULTS = {"preset": "0.5b", "runs": 3, "warmup": 1, "max_tokens": 32}
QUICK = {"preset": "tiny", "runs": 1, "warmup": 0, "max_tokens": 4}

SCREENSHOT_INSTRUCTION = "Localize the Submit button in this screenshot. Answer with click(x, y)."
SCREENSHOT_SIZE = (1920, 1080)


# --- model folders ----------------------------------------------------------------------------

@dataclass
class Models:
    label: str
    mlx: dict[str, Path]  # variant -> converted folder (existing or to be converted)
    hf: Path | None  # Hugging Face source, for torch
    preset: str | None = None  # set: the folders are built on first use
    scales_dtype: str | None = None  # a preset's quantization scale dtype


def on_cpu_backend() -> bool:
    import mlx.core as mx

    return mx.default_device() == mx.cpu


def quantized_bits(variant: str) -> int | None:
    return int(variant.removesuffix("bit")) if variant.endswith("bit") else None


def folder_variant(folder: Path) -> str:
    """float32 / bfloat16 / 8bit / ... from a converted folder's config.json."""
    config = json.loads((folder / "config.json").read_text())
    if quantization := config.get("quantization"):
        return f"{quantization['bits']}bit"
    return config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype") or "bfloat16"


def preset_models(preset: str, cache_dir: Path) -> Models:
    """Folders under cache_dir/<preset>; built and converted by prepare() when first needed."""
    root = cache_dir / preset
    # Quantization scales are stored in the backend's compute dtype: mlx-vlm computes in the stored
    # dtype, and bfloat16 scales would put it on the CPU backend's slow bfloat16 path.
    scales = "float32" if on_cpu_backend() else "bfloat16"
    mlx = {variant: root / (f"mlx-{variant}-{scales}-scales" if quantized_bits(variant) else f"mlx-{variant}")
           for variant in MLX_VARIANTS}
    return Models(label=f"preset {preset}", mlx=mlx, hf=root / "hf-bfloat16", preset=preset, scales_dtype=scales)


def build_source(preset: str, folder: Path) -> None:
    """Random-weight HF checkpoint stored in bfloat16, as the published Holo1.5 and Holo2 checkpoints are.

    Built with torch's default dtype set to bfloat16 so no float32 copy of the model is ever held
    (a 7b float32 model alone is 33 GB).
    """
    import torch
    from transformers import CONFIG_MAPPING

    from holo_mlx.testing import build_checkpoint, published_config

    config = published_config(preset)
    with torch.device("meta"):
        # The config classes rewrite nested dicts in place; keep the preset's intact.
        params = sum(p.numel() for p in transformers_class(config)(
            CONFIG_MAPPING[config["model_type"]](**copy.deepcopy(config))).parameters())
    # The model plus one re-read shard (<= 5 GB) while build_checkpoint renames keys.
    needed, available = params * 2 + min(params * 2, 5 << 30), available_memory_bytes()
    if needed > available:
        raise SystemExit(f"building the {preset} preset needs ~{needed / 1e9:.0f} GB of memory, "
                         f"{available / 1e9:.0f} GB is available: benchmark a converted model with "
                         "--model/--hf-model instead")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        build_checkpoint(folder, preset, dtype="bfloat16")
    finally:
        torch.set_default_dtype(previous)
    if config["model_type"] == "qwen2_5_vl":  # the Holo2 presets' sections already fit their head_dim
        fit_mrope_section(folder / "config.json")


def transformers_class(config: dict):
    """The transformers model class a config.json names (Qwen2_5_VL..., Qwen3VL..., Qwen3VLMoe...)."""
    import transformers

    return getattr(transformers, config["architectures"][0])


def fit_mrope_section(config_file: Path) -> None:
    """Scale Qwen2.5-VL's M-RoPE [16, 24, 24] (sized for head_dim 128) to the preset's head_dim.

    holo_mlx.testing's 0.5b preset has head_dim 64 (896 / 14 heads) but Qwen2.5-VL's sections,
    which holo_mlx's config check rejects; the weights do not depend on the sections.
    """
    config = json.loads(config_file.read_text())
    sections = config["rope_scaling"]["mrope_section"]
    half_head = config["hidden_size"] // config["num_attention_heads"] // 2
    if sum(sections) != half_head:
        config["rope_scaling"]["mrope_section"] = [value * half_head // sum(sections) for value in sections]
        config_file.write_text(json.dumps(config, indent=2))


def prepare(models: Models, runtime: str) -> None:
    """Build the preset's source checkpoint and convert the runtime's folder if not cached yet (once,
    whichever benchmark or test worker asks first)."""
    from convert.convert import convert
    from holo_mlx.testing import build_once

    if models.preset is None:
        return

    def build_hf():
        print(f"building the {models.preset} random-weight checkpoint in {models.hf}", flush=True)
        build_source(models.preset, models.hf)
        (models.hf / "done").write_text("ok")

    build_once(models.hf / "done", build_hf)
    family, variant = runtime.split(":")
    folder, bits = models.mlx[variant], quantized_bits(variant)

    def convert_variant():
        print(f"converting to {folder}", flush=True)
        convert(str(models.hf), folder, force=True, quantize=bits is not None, q_bits=bits or 4,
                dtype=models.scales_dtype if bits else variant)
        (folder / "done").write_text("ok")

    if family != "torch":
        build_once(folder / "done", convert_variant)


def preset_folder(preset: str, cache_dir: Path) -> Path:
    """<cache_dir>/<preset>/mlx-float32 (what the CPU backend computes in), built on first use."""
    models = preset_models(preset, cache_dir)
    prepare(models, "holo_mlx:float32")
    return models.mlx["float32"]


def safetensors_shapes(folder: Path) -> list[tuple[str, list[int]]]:
    """(dtype, shape) of every tensor in a folder, from the safetensors headers only."""
    tensors = []
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as handle:
            header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
        tensors += [(entry["dtype"], entry["shape"]) for key, entry in header.items() if key != "__metadata__"]
    return tensors


SAFETENSORS_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "U8": 1, "I64": 8}


def held_bytes(folder: Path, float_bytes: int | None) -> int:
    """Weight bytes once loaded: float tensors at float_bytes each (None: as stored), others as stored."""
    return sum(math.prod(shape) * (float_bytes if float_bytes and dtype in ("F32", "F16", "BF16")
                                   else SAFETENSORS_BYTES[dtype])
               for dtype, shape in safetensors_shapes(folder))


def memory_shortfall(models: Models, runtime: str) -> str | None:
    """Why the runtime would not fit in available memory, or None.

    Float runtimes are estimated from the HF source (same tensors, before any conversion to disk);
    quantized folders are a fraction of the bfloat16 source that was already built in memory.
    """
    family, variant = runtime.split(":")
    if quantized_bits(variant) and not models.mlx[variant].exists():
        return None
    folder = models.hf if family == "torch" else models.mlx[variant]
    if not folder.exists():
        folder = models.hf
    float_bytes = 4 if family == "holo_mlx" and on_cpu_backend() else FLOAT_BYTES.get(variant)
    needed = held_bytes(folder, float_bytes) * 1.2 + (1 << 30)  # activations, KV cache, libraries
    available = available_memory_bytes()
    if needed > available:
        return f"needs ~{needed / 1e9:.1f} GB, {available / 1e9:.1f} GB available"
    return None


# --- runtimes (run inside the worker process) -------------------------------------------------

def expert_share(text_config) -> float:
    """Share of each MoE layer's experts that one decoded token reads: top-k of them (1 when dense)."""
    experts = getattr(text_config, "num_experts", 0) or 0
    return text_config.num_experts_per_tok / experts if experts else 1.0


class MLXBackend:
    """What holo_mlx and mlx-vlm share: MLX memory counters and the weights read per decoded token."""

    model = None

    @property
    def device(self) -> str:
        from holo_mlx.runtime import device_name

        return device_name()

    def reset_peak(self) -> None:
        import mlx.core as mx

        mx.reset_peak_memory()

    def peak_memory(self) -> tuple[int, str]:
        import mlx.core as mx

        return mx.get_peak_memory(), "MLX allocator peak (mx.get_peak_memory)"

    def compute_dtype(self) -> str:
        return str(self.model.language_model.model.norm.weight.dtype).removeprefix("mlx.core.")

    def decode_bytes(self) -> int:
        """Decoder layers, final norm and lm_head as held in memory (embed_tokens is one row per token,
        unless tied, when it is the lm_head; an MoE layer's experts count for the share a token reads)."""
        from mlx.utils import tree_flatten

        params = dict(tree_flatten(self.model.language_model.parameters()))
        tied = not any(name.startswith("lm_head.") for name in params)
        share = expert_share(self.model.config.text_config)
        return round(sum(value.nbytes * (share if ".switch_mlp." in name else 1) for name, value in params.items()
                         if tied or not name.startswith("model.embed_tokens.")))


class HoloMLX(MLXBackend):
    def __init__(self, folder: Path, variant: str, tokenizer):
        from holo_mlx import load_model

        self.model = load_model(folder)
        self.tokenizer = tokenizer

    def prepare(self, prompt):
        return prompt

    def generate(self, prompt, max_tokens: int, on_token) -> None:
        from holo_mlx.engine.sampling import SamplingParams
        from holo_mlx.generate import stream_generate

        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        for _ in stream_generate(self.model, self.tokenizer, prompt, params):
            on_token()


class MlxVlm(MLXBackend):
    """mlx-vlm's own loader and generation loop (generate_step: its prefill, its KV cache)."""

    def __init__(self, folder: Path, variant: str, tokenizer):
        from mlx_vlm.utils import load_model

        self.model = load_model(folder)

    def prepare(self, prompt):
        import mlx.core as mx
        import numpy as np

        inputs = {"input_ids": mx.array([prompt.input_ids]), "pixel_values": None}
        if prompt.images:
            inputs["pixel_values"] = mx.array(np.concatenate([image.pixel_values for image in prompt.images]))
            inputs["image_grid_thw"] = mx.array([list(image.grid_thw) for image in prompt.images])
        return inputs

    def generate(self, inputs, max_tokens: int, on_token) -> None:
        from mlx_vlm.generate import generate_step

        inputs = dict(inputs)
        steps = generate_step(inputs.pop("input_ids"), self.model, inputs.pop("pixel_values"), None,
                              max_tokens=max_tokens, temperature=0.0, **inputs)
        for _ in steps:  # generate_step has no EOS check: exactly max_tokens tokens
            on_token()


class Torch:
    """generate() of the transformers class the folder's config.json names, on the best torch device."""

    def __init__(self, folder: Path, variant: str, tokenizer):
        import torch

        self.torch = torch
        self.device = ("mps" if torch.backends.mps.is_available()
                       else "cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = getattr(torch, variant)
        model_class = transformers_class(json.loads((folder / "config.json").read_text()))
        self.model = model_class.from_pretrained(str(folder), dtype=self.dtype)
        self.model.to(self.device).eval()
        self.image_token_id = self.model.config.image_token_id

    def prepare(self, prompt):
        import numpy as np

        torch = self.torch
        ids = torch.tensor([prompt.input_ids], device=self.device)
        # transformers 5 places image tokens by mm_token_type_ids (1 at image tokens), not by id.
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "mm_token_type_ids": (ids == self.image_token_id).int()}
        if prompt.images:
            pixels = np.concatenate([image.pixel_values for image in prompt.images])
            inputs["pixel_values"] = torch.tensor(pixels, dtype=self.dtype, device=self.device)
            inputs["image_grid_thw"] = torch.tensor([list(image.grid_thw) for image in prompt.images],
                                                    device=self.device)
        return inputs

    def generate(self, inputs, max_tokens: int, on_token) -> None:
        from transformers.generation.streamers import BaseStreamer

        class Callback(BaseStreamer):
            prompt_seen = False

            def put(self, value):  # called with the prompt first, then with each new token
                if self.prompt_seen:
                    on_token()
                self.prompt_seen = True

            def end(self):
                pass

        with self.torch.inference_mode():
            self.model.generate(**inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                do_sample=False, streamer=Callback())

    def reset_peak(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> tuple[int, str]:
        if self.device == "cuda":
            return self.torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
        if self.device == "mps":
            return self.torch.mps.driver_allocated_memory(), "torch.mps.driver_allocated_memory (after request)"
        return peak_rss_bytes(), peak_rss_source()

    def compute_dtype(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def decode_bytes(self) -> int:
        """Decoder layers, final norm and lm_head (embed_tokens is one row per token; an MoE layer's
        experts count for the share a token reads)."""
        share = expert_share(self.model.config.text_config)
        params = [(p, share if ".mlp.experts." in name else 1)
                  for name, p in self.model.model.language_model.named_parameters()
                  if not name.startswith("embed_tokens.")]
        params.append((self.model.lm_head.weight, 1))  # the embedding itself when tied
        return round(sum(p.numel() * p.element_size() * part for p, part in params))


BACKENDS = {"holo_mlx": HoloMLX, "mlx_vlm": MlxVlm, "torch": Torch}
# Imported before the load is timed, so load_s is reading weights, not importing a library; filled
# in with the folder's model_type.
BACKEND_MODULES = {"holo_mlx": ["holo_mlx.generate"],
                   "mlx_vlm": ["mlx_vlm.utils", "mlx_vlm.generate", "mlx_vlm.models.{model_type}"],
                   "torch": ["transformers.models.{model_type}.modeling_{model_type}"]}


def build_prompts(folder: Path, workloads: list[str], screenshot_size: tuple[int, int]) -> tuple[object, dict]:
    """The same Prompt object for a workload and its repeat, so the repeat is recognised as one."""
    from holo_mlx.prompt import PromptBuilder
    from holo_mlx.testing import synthetic_screenshot

    builder = PromptBuilder.from_pretrained(folder)  # holo_mlx's default resize limits
    screenshot = builder.build([{"role": "user", "content": [
        {"type": "image", "image": synthetic_screenshot(*screenshot_size)},
        {"type": "text", "text": SCREENSHOT_INSTRUCTION}]}])
    prompts = {"text": builder.build([{"role": "user", "content": TEXT_PROMPT}]), "screenshot": screenshot}
    prompts["screenshot_twice"] = prompts[REPEATS["screenshot_twice"]]
    return builder.tokenizer, {name: prompts[name] for name in workloads}


def measure(backend, inputs, prompt_tokens: int, max_tokens: int) -> dict:
    """One request, timed from the call to each token's arrival."""
    stamps: list[float] = []
    backend.reset_peak()
    reset_peak_rss()
    start = time.perf_counter()
    backend.generate(inputs, max_tokens, lambda: stamps.append(time.perf_counter()))
    if len(stamps) != max_tokens:
        raise RuntimeError(f"generated {len(stamps)} tokens, expected exactly {max_tokens}")
    ttft = stamps[0] - start
    peak, source = backend.peak_memory()
    return {"ttft_s": ttft, "prefill_tps": prompt_tokens / ttft,
            "decode_tps": (len(stamps) - 1) / (stamps[-1] - stamps[0]), "e2e_s": stamps[-1] - start,
            "peak_memory": peak, "peak_memory_source": source, "peak_rss": peak_rss_bytes(),
            # The benchmark itself keeps the cores busy: above their count, something else competed.
            "load_average": os.getloadavg()[0]}


def run_worker(spec: dict) -> None:
    """Load one runtime, run every workload warmup + runs times, write the rows as JSON."""
    from tqdm import tqdm

    family, variant = spec["runtime"].split(":")
    folder = Path(spec["folder"])
    workloads, runs, warmup = spec["workloads"], spec["runs"], spec["warmup"]
    tokenizer, prompts = build_prompts(folder, workloads, tuple(spec["screenshot_size"]))
    progress = tqdm(total=(warmup + runs) * len(workloads), desc=spec["desc"], unit="req", file=sys.stderr)
    progress.set_postfix_str("loading")
    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    for module in BACKEND_MODULES[family]:
        importlib.import_module(module.format(model_type=model_type))
    start = time.perf_counter()
    backend = BACKENDS[family](folder, variant, tokenizer)
    load_s = time.perf_counter() - start
    inputs = {name: backend.prepare(prompt) for name, prompt in prompts.items()}
    results: dict[str, list[dict]] = {name: [] for name in workloads}
    last_sent = None
    for iteration in range(warmup + runs):
        for name in workloads:
            prompt = prompts[name]
            if name in REPEATS and last_sent is not prompt:  # the first send of the pair, untimed
                measure(backend, inputs[name], len(prompt.input_ids), spec["max_tokens"])
            result = measure(backend, inputs[name], len(prompt.input_ids), spec["max_tokens"])
            last_sent = prompt
            if iteration >= warmup:
                results[name].append(result)
            progress.set_postfix_str(f"{name} TTFT {result['ttft_s']:.2f}s decode {result['decode_tps']:.1f} tok/s")
            progress.update()
    progress.close()

    rows = []
    for name, measured in results.items():
        prompt = prompts[name]
        row = {"runtime": spec["runtime"], "family": family, "variant": variant, "workload": name,
               "stored": spec["stored"], "compute_dtype": backend.compute_dtype(),
               "device": backend.device, "load_s": load_s,
               "prompt_tokens": len(prompt.input_ids),
               "image_tokens": sum(image.num_tokens for image in prompt.images),
               "decode_bytes_per_token": backend.decode_bytes(),
               "peak_memory_gb": max(r["peak_memory"] for r in measured) / 1e9,
               "peak_memory_source": measured[0]["peak_memory_source"],
               "peak_rss_gb": max(r["peak_rss"] for r in measured) / 1e9, "peak_rss_source": peak_rss_source(),
               "load_average_1m": sum(r["load_average"] for r in measured) / len(measured)}
        for metric in METRICS:
            row.update({f"{metric}_{stat}": value
                        for stat, value in summarize([r[metric] for r in measured]).items()})
        rows.append(row)
    Path(spec["out"]).write_text(json.dumps(rows))


# --- orchestration ----------------------------------------------------------------------------

def select_runtimes(requested: list[str] | None, models: Models) -> list[str]:
    """Expand family names; with --model the MLX families have the one variant of that folder.

    By default everything available, except, for a preset on the CPU backend, SLOW_ON_CPU.
    """
    available = [f"{family}:{variant}" for family in MLX_FAMILIES for variant in models.mlx]
    available += [f"torch:{variant}" for variant in TORCH_VARIANTS] if models.hf else []
    if requested is None:
        if not (models.preset and on_cpu_backend()):
            return available
        print(f"left out on the CPU backend (minutes per screenshot; name them in --runtimes to run them): "
              f"{', '.join(runtime for runtime in available if runtime in SLOW_ON_CPU)}", flush=True)
        return [runtime for runtime in available if runtime not in SLOW_ON_CPU]
    selected = []
    for item in requested:
        matches = [runtime for runtime in available if runtime == item or runtime.split(":")[0] == item]
        if not matches:
            known = ", ".join(available) or "none"
            raise SystemExit(f"runtime {item!r} is not available here (available: {known})")
        selected += [runtime for runtime in matches if runtime not in selected]
    return selected


def machine_figures() -> dict[str, float]:
    # bfloat16 at 1024 only: at 2048 one matmul takes seconds on the CPU backend.
    figures = {"bandwidth_gbs": memory_bandwidth_gbs(),
               "matmul_f32_2048_gflops": mlx_matmul_gflops("float32", 2048),
               "matmul_f32_1024_gflops": mlx_matmul_gflops("float32", 1024),
               "matmul_bf16_1024_gflops": mlx_matmul_gflops("bfloat16", 1024)}
    print(f"machine: memory read {figures['bandwidth_gbs']:.1f} GB/s; MLX matmul GFLOP/s: float32 2048 "
          f"{figures['matmul_f32_2048_gflops']:.1f}, float32 1024 {figures['matmul_f32_1024_gflops']:.1f}, "
          f"bfloat16 1024 {figures['matmul_bf16_1024_gflops']:.1f}", flush=True)
    return figures


def run_runtime(runtime: str, models: Models, args, index: int, total: int, out: Path) -> list[dict]:
    """Run one runtime in a fresh process: its memory is its own and freed when it exits."""
    family, variant = runtime.split(":")
    folder = models.hf if family == "torch" else models.mlx[variant]
    stored = folder_variant(folder)
    if family != "torch" and quantized_bits(variant):
        config = json.loads((folder / "config.json").read_text())
        stored += f" ({config.get('torch_dtype', '?')} scales)"
    spec = {"runtime": runtime, "folder": str(folder), "workloads": args.workloads, "screenshot_size": args.screenshot,
            "runs": args.runs, "warmup": args.warmup, "max_tokens": args.max_tokens, "out": str(out), "stored": stored,
            "desc": f"[{index}/{total}] {runtime}"}
    result = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)])
    if result.returncode != 0 or not out.exists():
        print(f"{runtime} failed (exit code {result.returncode}); see its output above", file=sys.stderr)
        return []
    return json.loads(out.read_text())


def add_roofline(row: dict, bandwidth_gbs: float) -> None:
    """Decode tok/s as a share of bandwidth / weight bytes per token (the KV cache read is ignored:
    under 2% of the weights at these prompt lengths). Empty for a GPU with its own memory: torch's
    or MLX's CUDA device (an MLX "gpu" off macOS), whose bandwidth the CPU cannot measure."""
    if row["device"] == "cuda" or (row["device"] == "gpu" and sys.platform != "darwin"):
        row["roofline_tps"] = row["roofline_pct"] = ""
        return
    row["roofline_tps"] = bandwidth_gbs * 1e9 / row["decode_bytes_per_token"]
    row["roofline_pct"] = 100 * row["decode_tps_avg"] / row["roofline_tps"]


def torch_peer(runtime: str, measured: set[str]) -> str | None:
    """torch in the same dtype where there is one, else torch float32 (the reference path)."""
    variant = runtime.split(":")[1]
    return next((peer for peer in (f"torch:{variant}", "torch:float32") if peer in measured), None)


def ratio_rows(rows: list[dict]) -> list[dict]:
    """MLX ÷ torch and holo_mlx ÷ mlx-vlm per workload (TTFT ratio below 1: the first is faster)."""
    by_key = {(row["runtime"], row["workload"]): row for row in rows}
    measured = {row["runtime"] for row in rows}
    pairs = []
    for runtime in dict.fromkeys(row["runtime"] for row in rows):
        family, variant = runtime.split(":")
        if family in MLX_FAMILIES and (peer := torch_peer(runtime, measured)):
            pairs.append((runtime, peer))
        if family == "holo_mlx" and f"mlx_vlm:{variant}" in measured:
            pairs.append((runtime, f"mlx_vlm:{variant}"))
    ratios = []
    for first, second in pairs:
        for workload in dict.fromkeys(row["workload"] for row in rows):
            a, b = by_key.get((first, workload)), by_key.get((second, workload))
            if a and b:
                ratios.append({"pair": f"{first} / {second}", "workload": workload,
                               "prefill": a["prefill_tps_avg"] / b["prefill_tps_avg"],
                               "decode": a["decode_tps_avg"] / b["decode_tps_avg"],
                               "ttft": a["ttft_s_avg"] / b["ttft_s_avg"]})
    return ratios


def parse_args() -> argparse.Namespace:
    from holo_mlx.testing import PRESET_FAMILIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=list(PRESET_FAMILIES),
                        help=f"random weights of this shape, built and converted once (default {DEFAULTS['preset']})")
    source.add_argument("--model", help="a converted MLX folder (python -m convert) or hub id")
    parser.add_argument("--hf-model", help="with --model: its Hugging Face source (folder or hub id), for torch")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "bench",
                        help="where preset checkpoints and conversions are kept")
    parser.add_argument("--runtimes", type=lambda text: text.split(","),
                        help="comma-separated families (holo_mlx, mlx_vlm, torch) or family:variant "
                             f"({', '.join(ALL_RUNTIMES)}); default: all, but for a preset on the CPU backend "
                             f"those on slow CPU kernels ({', '.join(sorted(SLOW_ON_CPU))})")
    parser.add_argument("--workloads", type=lambda text: text.split(","), default=list(WORKLOADS),
                        help=f"comma-separated, from {', '.join(WORKLOADS)}")
    parser.add_argument("--screenshot", type=lambda text: tuple(map(int, text.lower().split("x"))),
                        default=SCREENSHOT_SIZE, metavar="WxH",
                        help="the screenshot workload's image size (default %dx%d)" % SCREENSHOT_SIZE)
    parser.add_argument("--runs", type=int, help=f"measured runs per workload (default {DEFAULTS['runs']})")
    parser.add_argument("--warmup", type=int, help=f"discarded runs first (default {DEFAULTS['warmup']})")
    parser.add_argument("--max-tokens", type=int, help=f"tokens generated per request (default {DEFAULTS['max_tokens']})")
    parser.add_argument("--csv", type=Path, default=REPO / "benchmarks" / "results" / "runtime.csv",
                        help="rows are appended here (default benchmarks/results/runtime.csv)")
    parser.add_argument("--chart", type=Path, help="PNG path (default: next to the CSV, named after the model)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: tiny preset, 1 run, no warm-up, 4 tokens, {', '.join(QUICK_RUNTIMES)}")
    parser.add_argument("--machine-only", action="store_true", help="print bandwidth and GEMM figures and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one runtime, in a child process
    args = parser.parse_args()
    for key, default in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None and not (key == "preset" and args.model):
            setattr(args, key, default)
    if args.runtimes is None and args.quick:
        args.runtimes = QUICK_RUNTIMES
    if unknown := set(args.workloads) - set(WORKLOADS):
        parser.error(f"unknown workload {sorted(unknown)[0]!r}; choose from {', '.join(WORKLOADS)}")
    if args.max_tokens is not None and args.max_tokens < 2:
        parser.error("--max-tokens must be at least 2 (decode speed needs two tokens)")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.hf_model and not args.model:
        parser.error("--hf-model goes with --model (a preset builds its own)")
    return args


def main() -> None:
    use_fast_blas()  # re-executes the process with OpenBLAS preloaded, so before anything else
    args = parse_args()
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    figures = machine_figures()
    if args.machine_only:
        return

    if args.model:
        from holo_mlx.loading import resolve_path

        folder = resolve_path(args.model)
        hf = resolve_path(args.hf_model) if args.hf_model else None
        models = Models(label=folder.name, mlx={folder_variant(folder): folder}, hf=hf)
    else:
        models = preset_models(args.preset, args.cache_dir)
    runtimes = select_runtimes(args.runtimes, models)
    info = system_info()
    run_id = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as work:
        for index, runtime in enumerate(runtimes, start=1):
            if reason := memory_shortfall(models, runtime):
                skipped.append(f"{runtime}: {reason}")
                print(f"skipping {runtime}: {reason}", flush=True)
                continue
            prepare(models, runtime)
            rows += run_runtime(runtime, models, args, index, len(runtimes), Path(work) / f"{index}.json")
    if not rows:
        raise SystemExit("no runtime produced results")

    for row in rows:
        add_roofline(row, figures["bandwidth_gbs"])
        row.update({"run_id": run_id, "model": models.label, "max_tokens": args.max_tokens,
                    "runs": args.runs, "warmup": args.warmup, **figures, **info})
    append_csv(args.csv, rows)

    print("\n" + format_table(rows, [
        ("runtime", "runtime"), ("workload", "workload"), ("prompt_tokens", "prompt"),
        ("load_s", "load s"), ("ttft_s_avg", "TTFT s"), ("ttft_s_p90", "TTFT p90"),
        ("prefill_tps_avg", "prefill tok/s"), ("decode_tps_avg", "decode tok/s"), ("e2e_s_avg", "e2e s"),
        ("peak_memory_gb", "peak GB"), ("peak_rss_gb", "RSS GB"), ("roofline_pct", "roofline %"),
        ("load_average_1m", "load avg")]))
    ratios = ratio_rows(rows)
    if ratios:
        print("\nratios (prefill, decode: above 1 the first is faster; TTFT: below 1 the first is faster)")
        print(format_table(ratios, [("pair", "pair"), ("workload", "workload"), ("prefill", "prefill ×"),
                                    ("decode", "decode ×"), ("ttft", "TTFT ×")]))
    for line in skipped:
        print(f"skipped {line}")

    chart = args.chart or args.csv.with_name(f"runtime-{models.label.replace(' ', '-')}.png")
    grouped_bar_chart(
        chart, rows, [("prefill_tps_avg", "prefill tok/s"), ("decode_tps_avg", "decode tok/s"),
                      ("ttft_s_avg", "TTFT s (lower is better)")],
        group_key="workload", series_key="runtime",
        title=f"{models.label}, {args.max_tokens} tokens: {info['os'].split()[0]} {info['cpu']}, MLX {info['mlx_device']}, "
              f"OpenBLAS preloaded: {info['openblas_preloaded']}")
    print(f"\nappended {len(rows)} rows to {args.csv}; chart {chart}")


if __name__ == "__main__":
    main()
