"""Vision tower speed: holo_mlx vs transformers (torch float32) vs mlx-vlm on the same weights.

Random weights at a real Qwen2.5-VL vision shape (default: Holo1.5-7B's, 32 blocks of width
1280), one synthetic screenshot resized by the normal pipeline. Prints seconds per encode (median
of runs that alternate between the runtimes) and the max difference of the features against torch.

    python benchmarks/bench_vision.py --width 1280 --height 720 --runs 5 --skip-mlx-vlm
"""

import argparse
import time

import numpy as np

from holo_mlx.runtime import keep_freed_buffers, use_fast_blas


def main() -> None:
    use_fast_blas()
    keep_freed_buffers()  # as holo_mlx.load does
    import mlx.core as mx
    import torch
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from holo_mlx.models.qwen2_5_vl.config import VisionConfig
    from holo_mlx.image import ImageProcessorConfig, preprocess_image
    from holo_mlx.testing import PREPROCESSOR_CONFIG, PRESETS, root_layout_config
    from holo_mlx.models.qwen2_5_vl.vision import VisionModel
    from holo_mlx.models.qwen2_5_vl.weights import sanitize
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="7b", choices=sorted(PRESETS))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (MLX compiles kernels once)")
    parser.add_argument("--skip-mlx-vlm", action="store_true")
    args = parser.parse_args()

    raw = root_layout_config(args.preset)["vision_config"]
    torch.manual_seed(0)
    hf_config = Qwen2_5_VLConfig(**root_layout_config(args.preset)).vision_config
    reference = Qwen2_5_VisionTransformerPretrainedModel(hf_config).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0, 0.02)
    state = {f"visual.{k}": mx.array(v.numpy()) for k, v in reference.state_dict().items()}
    weights = sanitize(state)
    ours = VisionModel(VisionConfig.from_dict(raw))
    ours.load_weights([(k[len("vision_tower."):], v) for k, v in weights.items()])

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8))
    image_config = ImageProcessorConfig(
        image_mean=tuple(PREPROCESSOR_CONFIG["image_mean"]), image_std=tuple(PREPROCESSOR_CONFIG["image_std"]),
        min_pixels=PREPROCESSOR_CONFIG["min_pixels"], max_pixels=PREPROCESSOR_CONFIG["max_pixels"])
    processed = preprocess_image(image, image_config)
    pixels, grid = processed.pixel_values, processed.grid_thw
    print(f"{args.width}x{args.height} -> {processed.resized_size}, grid {grid}, {len(pixels)} patches, "
          f"{processed.num_tokens} tokens; vision depth {raw['depth']} width {raw['hidden_size']}")

    torch_pixels, torch_grid = torch.tensor(pixels), torch.tensor([grid])

    def run_torch():
        with torch.no_grad():
            return reference(torch_pixels, torch_grid).pooler_output.numpy()

    def run_ours():
        out = ours(mx.array(pixels), [grid])
        mx.eval(out)
        return np.array(out)

    runtimes = {f"torch float32 ({torch.get_num_threads()} thr)": run_torch, "holo_mlx float32": run_ours}
    if not args.skip_mlx_vlm:
        from mlx_vlm.models.qwen2_5_vl.config import VisionConfig as VlmVisionConfig
        from mlx_vlm.models.qwen2_5_vl.vision import VisionModel as VlmVisionModel

        vlm = VlmVisionModel(VlmVisionConfig.from_dict({**raw, "model_type": "qwen2_5_vl"}))
        vlm.load_weights([(k[len("vision_tower."):], v) for k, v in weights.items()])

        def run_vlm():
            out = vlm(mx.array(pixels), mx.array([grid]), output_hidden_states=False)
            mx.eval(out)
            return np.array(out)

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
    print(f"{'max |diff| vs torch':>24}: {np.abs(outputs[ours_label] - outputs[torch_label]).max():.2e}")
    print(f"{'holo_mlx / torch time':>24}: {median[ours_label] / median[torch_label]:.2f}")
    print(f"{'same, run by run':>24}: " + ", ".join(
        f"{ours / theirs:.2f}" for ours, theirs in zip(seconds[ours_label], seconds[torch_label])))
    if "mlx-vlm float32" in median:
        print(f"{'holo_mlx / mlx-vlm time':>24}: {median[ours_label] / median['mlx-vlm float32']:.2f}")

if __name__ == "__main__":
    main()
