"""Converted folders: mlx-vlm interop both ways, quantized models, bfloat16 checkpoints."""

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


@pytest.fixture(scope="module")
def converted(hf_nested_checkpoint, tmp_path_factory) -> Path:
    return convert(str(hf_nested_checkpoint), tmp_path_factory.mktemp("ours") / "f32", dtype="float32")


@pytest.fixture(scope="module")
def reference(hf_nested_checkpoint):
    model, prompts = load(hf_nested_checkpoint)
    prompt = prompts.build(MESSAGES)
    return prompt, full_logits(model, prompt)


def test_our_folder_loads_in_mlx_vlm_with_equal_logits(converted, reference):
    from mlx_vlm.utils import load_model as mlx_vlm_load_model

    prompt, ours = reference
    theirs = mlx_vlm_logits(mlx_vlm_load_model(converted), prompt)
    difference = np.abs(theirs - ours).max()
    print(f"mlx-vlm on our folder: max |logit diff| {difference:.2e}")
    assert difference <= 1e-4


def test_our_folder_loads_with_mlx_vlm_load(converted):
    """mlx_vlm.load (model + processor), as a user of mlx-vlm would call it on our folder."""
    import mlx_vlm

    model, processor = mlx_vlm.load(str(converted))
    assert model.config.model_type == "qwen2_5_vl"
    assert processor is not None


def test_mlx_vlm_folder_loads_in_holo_mlx_with_equal_logits(hf_root_checkpoint, tmp_path):
    from mlx_vlm.convert import convert as mlx_vlm_convert

    folder = tmp_path / "mlx-vlm-f32"
    mlx_vlm_convert(hf_path=str(hf_root_checkpoint), mlx_path=str(folder), dtype="float32")
    theirs_model, prompts = load(folder)
    prompt = prompts.build(MESSAGES)
    ours_model, _ = load(hf_root_checkpoint)
    difference = np.abs(full_logits(theirs_model, prompt) - full_logits(ours_model, prompt)).max()
    print(f"holo_mlx on mlx-vlm's folder: max |logit diff| {difference:.2e}")
    assert difference <= 1e-4


def test_converted_float32_equals_the_hugging_face_folder(converted, reference):
    prompt, expected = reference
    model = load_model(converted)
    np.testing.assert_array_equal(full_logits(model, prompt), expected)


@pytest.mark.parametrize("bits, min_agreement", [(8, 0.95), (4, 0.5)])
def test_quantized_models_load_generate_and_stay_close(hf_nested_checkpoint, tmp_path, reference, bits,
                                                       min_agreement):
    prompt, expected = reference
    folder = convert(str(hf_nested_checkpoint), tmp_path / f"q{bits}", quantize=True, q_bits=bits)
    model, prompts = load(folder)
    assert model.language_model.model.layers[0].self_attn.q_proj.bits == bits
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
