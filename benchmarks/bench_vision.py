"""Vision tower speed: holo_mlx vs transformers (torch float32) vs mlx-vlm on the same weights.

Random weights at a real vision shape (default: Holo1.5-7B's Qwen2.5-VL tower, 32 blocks of width
1280; the holo2-* presets are Qwen3-VL towers with DeepStack mergers), one synthetic screenshot
resized by the normal pipeline with the family's image settings. Prints seconds per encode (median
of runs that alternate between the runtimes) and the max difference of the features, and of the
DeepStack features where the tower has them, against torch.

    python benchmarks/bench_vision.py --width 1280 --height 720 --runs 5 --skip-mlx-vlm
    python benchmarks/bench_vision.py --preset holo2-4b --width 1920 --height 1080 --runs 3
"""

import argparse
import copy
import importlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from holo_mlx.runtime import keep_freed_buffers, use_fast_blas

# transformers' tower class per model_type; holo_mlx and mlx-vlm both call theirs VisionModel.
TORCH_TOWERS = {"qwen2_5_vl": "Qwen2_5_VisionTransformerPretrainedModel", "qwen3_vl": "Qwen3VLVisionModel",
                "qwen3_vl_moe": "Qwen3VLMoeVisionModel"}


def torch_tower(config: dict):
    """transformers' vision tower for a config.json, with random weights."""
    import torch
    from transformers import CONFIG_MAPPING

    model_type = config["model_type"]
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    # The config classes rewrite nested dicts in place; keep the preset's intact.
    hf_config = CONFIG_MAPPING[model_type](**copy.deepcopy(config)).vision_config
    torch.manual_seed(0)
    tower = getattr(module, TORCH_TOWERS[model_type])(hf_config).eval()
    with torch.no_grad():
        for param in tower.parameters():
            param.normal_(0, 0.02)
    return tower


def mlx_tower(package: str, raw: dict, weights: dict):
    """`package`.vision.VisionModel (holo_mlx's or mlx-vlm's) built from the vision config, weights loaded."""
    config_class = importlib.import_module(f"{package}.config").VisionConfig
    tower = importlib.import_module(f"{package}.vision").VisionModel(config_class.from_dict(raw))
    tower.load_weights([(key[len("vision_tower."):], value) for key, value in weights.items()])
    return tower


def levels(output, width: int) -> list[np.ndarray]:
    """Any runtime's output as [merger features, DeepStack level 1, ...]: transformers' output object,
    mlx-vlm's Qwen3-VL (features, [levels]) pair, or one array (holo_mlx's Qwen3-VL tower puts the
    levels side by side)."""
    if hasattr(output, "pooler_output"):
        deepstack = getattr(output, "deepstack_features", None) or []
        return [output.pooler_output.numpy(), *(level.numpy() for level in deepstack)]
    if isinstance(output, tuple):
        return [np.array(output[0]), *(np.array(level) for level in output[1])]
    return np.split(np.array(output), output.shape[-1] // width, axis=-1)


def image_settings(preset: str, family):
    """The family's ImageProcessorConfig read from the preset's preprocessor_config.json."""
    from holo_mlx.testing import preprocessor_config

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(preset)))
        return family.image_processor(Path(folder))


def max_diffs(outputs: list[np.ndarray], reference: list[np.ndarray]) -> str:
    """Max |diff| of the features, then of the DeepStack features where there are any."""
    text = f"{np.abs(outputs[0] - reference[0]).max():.2e}"
    if len(reference) > 1:
        deepstack = max(float(np.abs(ours - theirs).max()) for ours, theirs in zip(outputs[1:], reference[1:]))
        text += f", DeepStack ({len(reference) - 1} levels) {deepstack:.2e}"
    return text


def main() -> None:
    use_fast_blas()
    keep_freed_buffers()  # as holo_mlx.load does
    import mlx.core as mx
    import torch
    from PIL import Image

    from holo_mlx.image import preprocess_image
    from holo_mlx.models import family_for
    from holo_mlx.testing import HOLO2_PRESETS, PRESETS, published_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="7b", choices=[*sorted(PRESETS), *HOLO2_PRESETS])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (MLX compiles kernels once)")
    parser.add_argument("--skip-mlx-vlm", action="store_true")
    args = parser.parse_args()

    config = published_config(args.preset)
    raw, model_type, family = config["vision_config"], config["model_type"], family_for(config)
    width = raw["out_hidden_size"]
    reference = torch_tower(config)
    state = {f"visual.{k}": mx.array(v.numpy()) for k, v in reference.state_dict().items()}
    weights = family.sanitize(state)  # the checkpoint-to-module key mapping the loader uses
    ours = mlx_tower(f"holo_mlx.models.{family.name}", raw, weights)

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8))
    processed = preprocess_image(image, image_settings(args.preset, family),
                                 max_side=family.max_side, max_pixels=family.max_pixels)
    pixels, grid = processed.pixel_values, processed.grid_thw
    deepstack = raw.get("deepstack_visual_indexes")
    print(f"{args.width}x{args.height} -> {processed.resized_size}, grid {grid}, {len(pixels)} patches, "
          f"{processed.num_tokens} tokens; vision depth {raw['depth']} width {raw['hidden_size']}"
          + (f", DeepStack after blocks {deepstack}" if deepstack else ""))

    torch_pixels, torch_grid = torch.tensor(pixels), torch.tensor([grid])

    def run_torch():
        with torch.no_grad():
            return levels(reference(torch_pixels, torch_grid), width)

    def run_ours():
        return levels(ours(mx.array(pixels), [grid]), width)

    runtimes = {f"torch float32 ({torch.get_num_threads()} thr)": run_torch, "holo_mlx float32": run_ours}
    if not args.skip_mlx_vlm:
        vlm = mlx_tower(f"mlx_vlm.models.{model_type}", raw, weights)

        def run_vlm():
            out = vlm(mx.array(pixels), mx.array([grid]), output_hidden_states=False)
            mx.eval(out)
            return levels(out, width)

        runtimes["mlx-vlm float32"] = run_vlm

    # Runs alternate between the runtimes, so a slow spell of a shared machine hits them alike.
    outputs, seconds = {}, {label: [] for label in runtimes}
    for _ in range(args.warmup):
        for run in runtimes.values():
            run()
    for _ in range(args.runs):
        for label, run in runtimes.items():
            start = time.perf_counter()
            outputs[label] = run()
            seconds[label].append(time.perf_counter() - start)
    median = {label: float(np.median(times)) for label, times in seconds.items()}
    for label, times in seconds.items():
        print(f"{label:>24}: {median[label]:7.2f} s median ({', '.join(f'{t:.2f}' for t in times)})")
    torch_label, ours_label = list(runtimes)[:2]
    print(f"{'max |diff| vs torch':>24}: {max_diffs(outputs[ours_label], outputs[torch_label])}")
    if "mlx-vlm float32" in outputs:
        print(f"{'mlx-vlm max |diff|':>24}: {max_diffs(outputs['mlx-vlm float32'], outputs[torch_label])}")
    print(f"{'holo_mlx / torch time':>24}: {median[ours_label] / median[torch_label]:.2f}")
    print(f"{'same, run by run':>24}: " + ", ".join(
        f"{ours / theirs:.2f}" for ours, theirs in zip(seconds[ours_label], seconds[torch_label])))
    if "mlx-vlm float32" in median:
        print(f"{'holo_mlx / mlx-vlm time':>24}: {median[ours_label] / median['mlx-vlm float32']:.2f}")


if __name__ == "__main__":
    main()
