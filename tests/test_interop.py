"""Converted folders of every family: mlx-vlm interop both ways, quantized models, bfloat16 checkpoints."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from convert.convert import convert
from holo_mlx import load, load_model
from holo_mlx.engine.sampling import SamplingParams
from holo_mlx.generate import prompt_logits, stream_generate
from holo_mlx.models.rope import rope_index
from holo_mlx.runtime import compute_dtype
from holo_mlx.testing import synthetic_screenshot

MESSAGES = [{"role": "user", "content": [
    {"type": "image", "image": synthetic_screenshot(333, 217, 1)},
    {"type": "text", "text": "Click the Submit button."}]}]


def full_logits(model, prompt) -> np.ndarray:
    """Teacher-forced logits (length, vocab) of our model for a prompt."""
    grids = [image.grid_thw for image in prompt.images]
    features = model.encode_images([image.pixel_values for image in prompt.images], grids)
    positions, _ = rope_index(prompt.input_ids, grids, image_token_id=model.config.image_token_id,
                              spatial_merge_size=model.config.vision_config.spatial_merge_size)
    embeds, deepstack = model.embed(prompt.input_ids, features)
    return np.array(model(embeds, mx.array(positions)[:, None, :], deepstack=deepstack)[0])


def mlx_vlm_logits(model, prompt) -> np.ndarray:
    pixels = mx.array(np.concatenate([image.pixel_values for image in prompt.images]))
    grids = mx.array([list(image.grid_thw) for image in prompt.images])
    output = model(mx.array([prompt.input_ids]), pixels, image_grid_thw=grids)
    return np.array(output.logits[0])


# Per family: a checkpoint in transformers 5's layout and one as published (mlx-vlm converts it).
SOURCES = {"holo1.5": ("hf_nested_checkpoint", "hf_root_checkpoint"),
           "holo2": ("holo2_nested_checkpoint", "holo2_root_checkpoint"),
           "holo2-moe": ("holo2_moe_nested_checkpoint", "holo2_moe_root_checkpoint"),
           # published as transformers 5 writes them
           "holo3": ("holo3_checkpoint", "holo3_checkpoint"), "holo3-moe": ("holo3_moe_checkpoint", "holo3_moe_checkpoint")}


@pytest.fixture(scope="module", params=list(SOURCES))
def sources(request) -> tuple[Path, Path]:
    nested, published = SOURCES[request.param]
    return request.getfixturevalue(nested), request.getfixturevalue(published)


@pytest.fixture(scope="module")
def converted(sources, module_tmp_factory, request) -> Path:
    return convert(str(sources[0]), module_tmp_factory("ours", until=request) / "f32", dtype="float32")


@pytest.fixture(scope="module")
def reference(sources):
    model, prompts = load(sources[0])
    prompt = prompts.build(MESSAGES)
    return prompt, full_logits(model, prompt)


@pytest.fixture(scope="module")
def mlx_vlm_folder(sources, module_tmp_factory, request) -> Path:
    """mlx-vlm's own float32 conversion of the checkpoint as published."""
    from mlx_vlm.convert import convert as mlx_vlm_convert

    folder = module_tmp_factory("mlx-vlm", until=request) / "f32"
    mlx_vlm_convert(hf_path=str(sources[1]), mlx_path=str(folder), dtype="float32")
    return folder


def test_our_folder_loads_in_mlx_vlm_with_equal_logits(converted, mlx_vlm_folder, reference):
    """mlx-vlm computes the same on our folder as on its own conversion, and (but Holo2 MoE) the
    same as holo-mlx. Its qwen3_vl_moe is ~7e-4 from transformers on these fixtures on its own
    folder too (docs/benchmarks.md), so that comparison with ours is left to the first check."""
    from mlx_vlm.utils import load_model as mlx_vlm_load_model

    prompt, ours = reference
    theirs = mlx_vlm_logits(mlx_vlm_load_model(converted), prompt)
    own = mlx_vlm_logits(mlx_vlm_load_model(mlx_vlm_folder), prompt)
    difference = np.abs(theirs - ours).max()
    print(f"mlx-vlm on our folder: max |logit diff| {difference:.2e} from holo-mlx, "
          f"{np.abs(theirs - own).max():.2e} from mlx-vlm on its own folder")
    assert np.abs(theirs - own).max() <= 1e-5
    if json.loads((converted / "config.json").read_text())["model_type"] != "qwen3_vl_moe":
        assert difference <= 1e-4


def test_our_folder_loads_with_mlx_vlm_load(converted, sources):
    """mlx_vlm.load (model + processor), as a user of mlx-vlm would call it on our folder."""
    import mlx_vlm

    model, processor = mlx_vlm.load(str(converted))
    assert model.config.model_type == json.loads((sources[0] / "config.json").read_text())["model_type"]
    assert processor is not None


def test_mlx_vlm_folder_loads_in_holo_mlx_with_equal_logits(sources, mlx_vlm_folder):
    theirs_model, prompts = load(mlx_vlm_folder)
    prompt = prompts.build(MESSAGES)
    ours_model, _ = load(sources[1])
    difference = np.abs(full_logits(theirs_model, prompt) - full_logits(ours_model, prompt)).max()
    print(f"holo_mlx on mlx-vlm's folder: max |logit diff| {difference:.2e}")
    assert difference <= 1e-4


def test_mlx_vlm_quantized_folder_loads_in_holo_mlx_with_equal_logits(sources, tmp_path):
    """mlx-vlm's 4-bit conversion, with the per-module settings it records (Qwen3.5 MoE's router and
    shared expert gate at 8 bits), computes in holo-mlx what it computes in mlx-vlm."""
    from mlx_vlm.convert import convert as mlx_vlm_convert
    from mlx_vlm.utils import load_model as mlx_vlm_load_model

    folder = tmp_path / "q4"
    mlx_vlm_convert(hf_path=str(sources[1]), mlx_path=str(folder), dtype="float32", quantize=True, q_bits=4)
    model, prompts = load(folder)
    prompt = prompts.build(MESSAGES)
    difference = np.abs(full_logits(model, prompt) - mlx_vlm_logits(mlx_vlm_load_model(folder), prompt)).max()
    print(f"holo_mlx on mlx-vlm's 4-bit folder: max |logit diff| {difference:.2e} from mlx-vlm")
    if json.loads((folder / "config.json").read_text())["model_type"] != "qwen3_vl_moe":  # see above
        assert difference <= 1e-4


def test_converted_float32_equals_the_hugging_face_folder(converted, reference):
    prompt, expected = reference
    model = load_model(converted)
    np.testing.assert_array_equal(full_logits(model, prompt), expected)


# Random tiny weights give near ties, which 8-bit rounding flips at a few positions; 4-bit rounding
# about half of them. holo3-moe-tiny flips more: its random router's near ties send tokens to other
# experts (8-bit: 0.84, 4-bit: 0.43 on its 248k vocabulary), while its quantized folder computes what
# mlx-vlm's own conversion does (test_mlx_vlm_quantized_folder_loads_in_holo_mlx_with_equal_logits).
ROUTE_FLIPS = {"holo3-moe": 0.1}


@pytest.mark.parametrize("bits, min_agreement", [(8, 0.9), (4, 0.5)])
def test_quantized_models_load_generate_and_stay_close(sources, tmp_path, reference, bits, min_agreement, request):
    min_agreement -= ROUTE_FLIPS.get(request.node.callspec.params["sources"], 0.0)
    prompt, expected = reference
    folder = convert(str(sources[0]), tmp_path / f"q{bits}", quantize=True, q_bits=bits)
    model, prompts = load(folder)
    layer = next(layer for layer in model.language_model.model.layers if "self_attn" in layer)  # a hybrid's too
    assert layer.self_attn.q_proj.bits == bits
    if "switch_mlp" in layer.mlp:  # MoE: the experts are quantized, the router (and a shared expert's gate) not
        assert layer.mlp.switch_mlp.gate_proj.bits == bits and "scales" not in layer.mlp.gate
        assert "scales" not in layer.mlp.get("shared_expert_gate", {})
    quantized = full_logits(model, prompt)
    agreement = float(np.mean(quantized.argmax(-1) == expected.argmax(-1)))
    drift = float(np.abs(quantized - expected).max())
    print(f"{bits}-bit: top-1 agreement {agreement:.3f} over {len(expected)} positions, "
          f"max |logit diff| {drift:.3e}")
    assert agreement >= min_agreement
    chunks = list(stream_generate(model, prompts.tokenizer, prompt, SamplingParams(max_tokens=4, ignore_eos=True)))
    assert len(chunks) == 4


def test_bfloat16_checkpoint_runs_in_float32_on_cpu(hf_bf16_checkpoint):
    model, prompts = load(hf_bf16_checkpoint)
    # float32 on the CPU backend (bf16 matmuls are slow there), as stored on a GPU
    assert model.dtype == compute_dtype(mx.bfloat16)
    logits = prompt_logits(model, prompts.build(MESSAGES))
    assert np.isfinite(np.array(logits)).all()
