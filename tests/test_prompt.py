import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from transformers import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from holo_mlx.image import MAX_PIXELS, preprocess_image
from holo_mlx.prompt import PromptBuilder, load_tokenizer

IMAGE_TOKEN_ID = 151655  # <|image_pad|>

VISION_START, VISION_END = 151652, 151653


class ImageOnlyProcessor(Qwen2_5_VLProcessor):
    """The real processor; only its video-processor class check is skipped (it needs torchvision)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


@pytest.fixture(scope="module")
def builder(hf_root_checkpoint) -> PromptBuilder:
    return PromptBuilder.from_pretrained(hf_root_checkpoint)


@pytest.fixture(scope="module")
def hf_processor(hf_root_checkpoint, builder) -> Qwen2_5_VLProcessor:
    values = json.loads((hf_root_checkpoint / "preprocessor_config.json").read_text())
    values["max_pixels"] = MAX_PIXELS  # the budget PromptBuilder uses by default
    image_processor = Qwen2VLImageProcessorPil(**values)
    return ImageOnlyProcessor(
        image_processor=image_processor,
        tokenizer=builder.tokenizer,
        video_processor=None,
        chat_template=builder.tokenizer.chat_template,
    )


def screenshot(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def hf_reference(processor, messages: list[dict], images: list[Image.Image]) -> dict:
    """What transformers produces: same messages with bare image parts, images given alongside."""
    bare = [
        {**m, "content": m["content"] if isinstance(m["content"], str)
         else [{"type": "image"} if p["type"] == "image" else p for p in m["content"]]}
        for m in messages
    ]
    text = processor.apply_chat_template(bare, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=images or None, return_tensors="np")


def assert_matches_hf(builder, processor, messages: list[dict], images: list[Image.Image]) -> None:
    prompt = builder.build(messages)
    reference = hf_reference(processor, messages, images)
    assert prompt.input_ids == reference["input_ids"][0].tolist()
    assert len(prompt.images) == len(images)
    if images:
        np.testing.assert_array_equal(
            np.concatenate([image.pixel_values for image in prompt.images]), reference["pixel_values"]
        )
        grids = [tuple(grid) for grid in reference["image_grid_thw"].tolist()]
        assert [image.grid_thw for image in prompt.images] == grids
    assert_image_runs(prompt.input_ids, [image.num_tokens for image in prompt.images])


def assert_image_runs(ids: list[int], run_lengths: list[int]) -> None:
    """Each image is exactly <|vision_start|>, num_tokens x <|image_pad|>, <|vision_end|>, in order."""
    assert ids.count(IMAGE_TOKEN_ID) == sum(run_lengths)
    starts = [i for i, token in enumerate(ids) if token == VISION_START]
    assert len(starts) == len(run_lengths)
    for start, length in zip(starts, run_lengths):
        assert ids[start + 1 : start + 1 + length] == [IMAGE_TOKEN_ID] * length
        assert ids[start + 1 + length] == VISION_END


def test_text_only(builder, hf_processor):
    messages = [{"role": "user", "content": "Where is the login button?"}]
    assert_matches_hf(builder, hf_processor, messages, [])
    prompt = builder.build(messages)
    assert prompt.images == []
    assert builder.tokenizer.decode(prompt.input_ids).endswith("<|im_start|>assistant\n")


def test_one_image(builder, hf_processor):
    image = screenshot(333, 217, seed=0)
    messages = [{"role": "user", "content": [
        {"type": "image", "image": png(image)},
        {"type": "text", "text": "Click the search box."},
    ]}]
    assert_matches_hf(builder, hf_processor, messages, [image])
    assert builder.build(messages).images[0].num_tokens == 96


def test_two_images_in_one_message(builder, hf_processor):
    first, second = screenshot(640, 400, seed=1), screenshot(120, 90, seed=2)
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Before:"},
        {"type": "image", "image": first},
        {"type": "text", "text": "After:"},
        {"type": "image", "image": png(second)},
        {"type": "text", "text": "What changed?"},
    ]}]
    assert_matches_hf(builder, hf_processor, messages, [first, second])


def test_multi_turn_with_earlier_image_and_system(builder, hf_processor):
    first, second = screenshot(500, 300, seed=3), screenshot(300, 500, seed=4)
    messages = [
        {"role": "system", "content": "You are a GUI agent. Answer with click(x, y)."},
        {"role": "user", "content": [{"type": "image", "image": first}, {"type": "text", "text": "Open."}]},
        {"role": "assistant", "content": "click(412, 37)"},
        {"role": "user", "content": [{"type": "image", "image": second}, {"type": "text", "text": "Save."}]},
    ]
    assert_matches_hf(builder, hf_processor, messages, [first, second])
    text = builder.tokenizer.decode(builder.build(messages).input_ids)
    assert text.startswith("<|im_start|>system\nYou are a GUI agent.")
    assert "You are a helpful assistant." not in text


def test_preprocessed_image_passes_through(builder):
    image = screenshot(200, 150, seed=5)
    processed = preprocess_image(image, builder.image_config)
    with_raw = builder.build([{"role": "user", "content": [{"type": "image", "image": image}]}])
    with_processed = builder.build([{"role": "user", "content": [{"type": "image", "image": processed}]}])
    assert with_processed.input_ids == with_raw.input_ids
    assert with_processed.images[0] is processed
    assert with_raw.images[0].digest == processed.digest


def test_builder_budget_applies_to_images(builder):
    small = PromptBuilder(builder.tokenizer, builder.image_config, image_token_id=builder.image_token_id,
                          image_placeholder=builder.image_placeholder, max_pixels=28 * 28 * 4)
    prompt = small.build([{"role": "user", "content": [{"type": "image", "image": screenshot(640, 400, 6)}]}])
    assert prompt.images[0].num_tokens <= 4
    assert_image_runs(prompt.input_ids, [prompt.images[0].num_tokens])


def test_no_generation_prompt(builder):
    messages = [{"role": "user", "content": "hi"}]
    with_prompt = builder.build(messages).input_ids
    without = builder.build(messages, add_generation_prompt=False).input_ids
    assert with_prompt[: len(without)] == without
    assert builder.tokenizer.decode(with_prompt[len(without):]) == "<|im_start|>assistant\n"


def test_build_text_adds_nothing(builder):
    prompt = builder.build_text("def main():\n    return 1")
    assert prompt.images == []
    assert builder.tokenizer.decode(prompt.input_ids) == "def main():\n    return 1"
    assert prompt.input_ids == builder.tokenizer("def main():\n    return 1")["input_ids"]


def test_placeholder_count_must_match_images(builder):
    with pytest.raises(ValueError, match="1 <|image_pad|> placeholders for 0 images"):
        builder.build([{"role": "user", "content": "look: <|image_pad|>"}])
    with pytest.raises(ValueError, match="placeholders for 0 images"):
        builder.build_text("<|vision_start|><|image_pad|><|vision_end|>")


def test_unknown_part_type_rejected(builder):
    with pytest.raises(ValueError, match="unsupported content part type 'audio'"):
        builder.build([{"role": "user", "content": [{"type": "audio", "audio": b""}]}])


@pytest.mark.parametrize("template_file", ["chat_template.json", "chat_template.jinja"])
def test_chat_template_outside_tokenizer_config(hf_root_checkpoint, tmp_path, template_file):
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copy(hf_root_checkpoint / name, tmp_path / name)
    config = json.loads((hf_root_checkpoint / "tokenizer_config.json").read_text())
    template = config.pop("chat_template")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    stored = json.dumps({"chat_template": template}) if template_file.endswith(".json") else template
    (tmp_path / template_file).write_text(stored)
    assert load_tokenizer(tmp_path).chat_template == template


def test_message_ends_fall_where_each_message_of_the_conversation_ends(hf_root_checkpoint):
    # What a model with recurrent layers needs for its prefix-cache snapshots: after each message's
    # <|im_end|>\n, counted in the expanded ids (an image's tokens before it included).
    marking = PromptBuilder.from_pretrained(hf_root_checkpoint, mark_message_ends=True)
    messages = [{"role": "system", "content": "You are Holo."},
                {"role": "user", "content": [{"type": "image", "image": png(screenshot(120, 90, 1))},
                                             {"type": "text", "text": "Where is OK?"}]},
                {"role": "assistant", "content": "At the bottom."},
                {"role": "user", "content": "Click it."}]
    prompt = marking.build(messages)
    tokenizer = marking.tokenizer
    assert len(prompt.message_ends) == len(messages)
    for count, end in enumerate(prompt.message_ends, start=1):
        head = tokenizer.decode(prompt.input_ids[:end])
        assert head.endswith("<|im_end|>\n")
        assert head.count("<|im_end|>") == count
    assert prompt.message_ends[-1] < len(prompt.input_ids)  # the generation prompt follows
    unmarked = PromptBuilder.from_pretrained(hf_root_checkpoint).build(messages)
    assert unmarked.input_ids == prompt.input_ids and unmarked.message_ends == []
