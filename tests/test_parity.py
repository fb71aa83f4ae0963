"""Every family against transformers on the same weights (float32): Holo1.5 (Qwen2_5_VLForConditionalGeneration),
Holo2 (Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration), each config layout, and Holo3
(Qwen3_5ForConditionalGeneration, Qwen3_5MoeForConditionalGeneration)."""

import functools

import mlx.core as mx
import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from holo_mlx import load
from holo_mlx.engine.sampling import SamplingParams
from holo_mlx.generate import stream_generate
from holo_mlx.models.rope import rope_index
from holo_mlx.testing import synthetic_screenshot

MAX_PIXELS = 1_003_520
LOGIT_TOLERANCE = 1e-4


def conversations():
    first, second = synthetic_screenshot(333, 217, 1), synthetic_screenshot(120, 250, 2)
    return {
        "text": [{"role": "user", "content": "Which button submits the form?"}],
        "one_image": [{"role": "user", "content": [
            {"type": "image", "image": first}, {"type": "text", "text": "Click the OK button."}]}],
        "two_images": [{"role": "user", "content": [
            {"type": "image", "image": first}, {"type": "text", "text": "and"},
            {"type": "image", "image": second}, {"type": "text", "text": "What changed?"}]}],
        "multi_turn": [
            {"role": "system", "content": "You are a GUI agent."},
            {"role": "user", "content": [{"type": "image", "image": second}, {"type": "text", "text": "Describe it."}]},
            {"role": "assistant", "content": "A form with a button."},
            {"role": "user", "content": "Where is the button?"},
        ],
    }


@functools.cache
def reference_tokenizer(path):
    """transformers' tokenizer of a checkpoint, loaded once for all its tests (Qwen3.5's takes seconds)."""
    return AutoTokenizer.from_pretrained(path)


def reference_inputs(path, messages):
    """What transformers' processor produces: template, PIL image processor with the checkpoint's
    settings (Holo1.5 capped at MAX_PIXELS, as the model is loaded below), pad expansion."""
    tokenizer = reference_tokenizer(path)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = [part["image"] for m in messages if isinstance(m["content"], list)
              for part in m["content"] if part["type"] == "image"]
    inputs = {}
    if images:
        processor = Qwen2VLImageProcessorPil.from_pretrained(path)
        if processor.patch_size == 14:
            processor = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=MAX_PIXELS)
        processed = processor(images=images, return_tensors="np")
        inputs = {"pixel_values": processed["pixel_values"], "image_grid_thw": processed["image_grid_thw"]}
        for grid in processed["image_grid_thw"]:
            text = text.replace("<|image_pad|>", "<|placeholder|>" * int(np.prod(grid) // 4), 1)
        text = text.replace("<|placeholder|>", "<|image_pad|>")
    inputs["input_ids"] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return inputs


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """transformers' references run on tiny tensors, where torch's second intra-op thread mostly waits
    on the first (and spins on a busy machine): one thread computes them sooner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CHECKPOINTS = ["hf_root_checkpoint", "hf_nested_checkpoint", "holo2_root_checkpoint", "holo2_nested_checkpoint",
               "holo2_bf16_checkpoint", "holo2_moe_root_checkpoint", "holo2_moe_nested_checkpoint",
               "holo3_checkpoint", "holo3_moe_checkpoint"]


@pytest.fixture(scope="module", params=CHECKPOINTS)
def models(request):
    path = request.getfixturevalue(request.param)
    reference = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    holo1 = request.param.startswith("hf_")
    # Holo2 with the family's own limits (its processor's); Holo1.5 without the cookbook's max_side.
    model, prompts = load(path, max_side=None, max_pixels=MAX_PIXELS) if holo1 else load(path)
    return path, reference, model, prompts


@pytest.mark.parametrize("name", list(conversations()))
def test_inputs_features_positions_and_logits_match(models, name):
    path, reference, model, prompts = models
    messages = conversations()[name]
    expected = reference_inputs(path, messages)
    prompt = prompts.build(messages)
    assert prompt.input_ids == expected["input_ids"]

    ids = torch.tensor([expected["input_ids"]])
    hf_args = {"input_ids": ids, "mm_token_type_ids": (ids == model.config.image_token_id).int()}
    features = None
    if prompt.images:
        pixel_values = np.concatenate([image.pixel_values for image in prompt.images])
        np.testing.assert_allclose(pixel_values, expected["pixel_values"], atol=1e-6, rtol=0)
        assert [list(image.grid_thw) for image in prompt.images] == expected["image_grid_thw"].tolist()
        hf_args["pixel_values"] = torch.tensor(expected["pixel_values"])
        hf_args["image_grid_thw"] = torch.tensor(expected["image_grid_thw"])
        features = model.encode_images([image.pixel_values for image in prompt.images],
                                       [image.grid_thw for image in prompt.images])
        with torch.no_grad():
            output = reference.model.get_image_features(hf_args["pixel_values"], hf_args["image_grid_thw"])
        # One row per image token: the merger's features, then each DeepStack level's (Holo2).
        levels = [output.pooler_output, *(getattr(output, "deepstack_features", None) or [])]
        reference_features = np.concatenate([torch.cat(level).numpy() for level in levels], axis=-1)
        np.testing.assert_allclose(np.array(features), reference_features, atol=1e-4, rtol=0)

    grids = [image.grid_thw for image in prompt.images]
    positions, delta = rope_index(prompt.input_ids, grids, image_token_id=model.config.image_token_id, spatial_merge_size=2)
    if prompt.images:
        with torch.no_grad():
            reference_positions, reference_delta = reference.model.get_rope_index(
                ids, hf_args["mm_token_type_ids"], hf_args["image_grid_thw"])
        np.testing.assert_array_equal(positions, reference_positions[:, 0].numpy())
        assert delta == int(reference_delta)
    else:
        np.testing.assert_array_equal(positions, np.tile(np.arange(len(prompt.input_ids)), (3, 1)))
        assert delta == 0

    embeds, deepstack = model.embed(prompt.input_ids, features)
    logits = model(embeds, mx.array(positions)[:, None, :], deepstack=deepstack)
    with torch.no_grad():
        reference_logits = reference(**hf_args).logits[0].numpy()
    difference = np.abs(np.array(logits[0]) - reference_logits)
    print(f"{name}: max |logit diff| {difference.max():.2e} over {difference.shape[0]} positions")
    assert difference.max(axis=-1).max() <= LOGIT_TOLERANCE


@pytest.mark.parametrize("name", ["text", "one_image"])
def test_greedy_decoding_matches_transformers(models, name):
    path, reference, model, prompts = models
    messages = conversations()[name]
    expected = reference_inputs(path, messages)
    ids = torch.tensor([expected["input_ids"]])
    hf_args = {"input_ids": ids, "mm_token_type_ids": (ids == model.config.image_token_id).int()}
    if "pixel_values" in expected:
        hf_args["pixel_values"] = torch.tensor(expected["pixel_values"])
        hf_args["image_grid_thw"] = torch.tensor(expected["image_grid_thw"])
    with torch.no_grad():
        output = reference.generate(**hf_args, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    reference_tokens = output[0, ids.shape[1]:].tolist()

    params = SamplingParams(max_tokens=32, min_tokens=32)
    chunks = list(stream_generate(model, prompts.tokenizer, prompts.build(messages), params))
    assert [chunk.token for chunk in chunks] == reference_tokens
    assert chunks[-1].finish_reason == "length"
    assert "".join(chunk.text for chunk in chunks) == prompts.tokenizer.decode(reference_tokens)
