"""Holo3 (Qwen3.5 hybrid, dense and MoE) beyond its parity with transformers (tests/test_parity.py):
its test vocabulary (Qwen3.5's, converted from tiktoken), what its config refuses, its converted
(mlx-vlm) layout, what may be quantized, and the engine paths that a recurrent state makes
delicate (batched rows, prefix-cache resumption, two ranks), on the holo3-tiny and holo3-moe-tiny
fixtures.
"""

import copy
import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors.numpy import load_file
from transformers import AutoTokenizer

from convert.convert import convert
from holo_mlx import load
from holo_mlx.engine.sampling import SamplingParams
from holo_mlx.models import ConfigError, ShardingError, family_for
from holo_mlx.models.base import Span
from holo_mlx.models.cache import KVLayerCache, RecurrentLayerCache
from holo_mlx.models.qwen2_5_vl.weights import to_mlx_name
from holo_mlx.models.qwen3_5.language import SharedExpertMoeBlock
from holo_mlx.prompt import PromptBuilder
from holo_mlx.testing import holo3_published_config, qwen3_5_tiktoken, qwen3_5_tokenizer_dir, synthetic_screenshot
from test_convert import copy_checkpoint
from test_distributed import probe
from test_scheduler import sequential, tokens
# The toy hybrid's engine tests, collected here again to run on this family's `loaded` (below).
from test_hybrid import (test_a_follow_up_turn_resumes_from_the_end_of_the_previous_turn,  # noqa: F401
                         test_a_prompt_diverging_between_two_snapshots_resumes_from_the_earlier,
                         test_batched_rows_equal_each_row_alone, test_the_prefix_cache_budget_counts_the_snapshots,
                         user)

FAMILY = family_for(holo3_published_config())


@pytest.fixture(scope="module", params=["holo3_checkpoint", "holo3_moe_checkpoint"])
def checkpoint(request):
    """Each model test runs on the dense and the MoE fixture."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load(checkpoint)


def prompt_logits(model, prompt) -> np.ndarray:
    """Logits at every position of one decoder pass over a prompt, no cache."""
    grids = [image.grid_thw for image in prompt.images]
    features = model.encode_images([image.pixel_values for image in prompt.images], grids) if grids else None
    embeds, _ = model.embed(prompt.input_ids, features)
    positions, _ = model.positions(prompt.input_ids, grids)
    return np.array(model.logits(model.hidden([Span(embeds, mx.array(positions[:, None]))])[0])[0])


# --- tokenizer --------------------------------------------------------------------------------------

MIXED_TEXTS = [
    "Click the 'Submit' button, then type: I'm done (it's 10:45 pm).",
    "中文测试：请点击「确定」按钮。你好，世界！",
    "مرحبا بالعالم، هذا اختبار ١٢٣",
    "नमस्ते दुनिया — ภาษาไทย",  # combining marks, which Qwen3.5's pattern keeps with their letters
    "emoji 😀👍🏽🇫🇷 and a family 👨‍👩‍👧 ♥️",
    "def f(x):\n    return {'a': x ** 2}  # 12345678\n\n\n\tindent\r\n",
    "spaces      then\n  \n   \t  tabs and a decomposed e\u0301 and ｆｕｌｌ width",
    "<|im_start|>user\nhi<|im_end|>\n<think>\n\n</think>\n\n<tool_call>\n<function=click>",
]


def test_the_converted_tokenizer_encodes_as_qwen3_5s_tiktoken_vocabulary():
    tokenizer, reference = AutoTokenizer.from_pretrained(qwen3_5_tokenizer_dir()), qwen3_5_tiktoken()
    for text in MIXED_TEXTS + ["".join(MIXED_TEXTS)]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == reference.encode(text), text
        assert tokenizer.decode(ids) == reference.decode(ids)
    assert len(tokenizer) == 248077
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in reference._special_tokens} == reference._special_tokens
    named = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
             "<|video_pad|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
    assert tokenizer.convert_tokens_to_ids(named) == [248044, 248045, 248046, 248053, 248054, 248056, 248057,
                                                      248058, 248059, 248066, 248067, 248068, 248069]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (248046, 248044)
    # The tags a model answers with survive skip_special_tokens; the turn markers do not.
    assert tokenizer.decode(tokenizer.encode("<think>a</think><tool_call><|im_end|>"), skip_special_tokens=True) \
        == "<think>a</think><tool_call>"


# --- config -----------------------------------------------------------------------------------------

def test_it_reads_the_published_config():
    config = FAMILY.config(holo3_published_config())
    text = config.text_config
    assert FAMILY.name == "qwen3_5"
    assert text.layer_types == ["linear_attention"] * 3 + ["full_attention", "linear_attention"]
    assert (text.rotary_dim, text.mrope_section, text.rope_theta) == (16, [3, 3, 2], 1e7)
    assert config.vision_config.deepstack_visual_indexes == []
    assert (config.image_token_id, config.eos_token_id, config.text_config.vocab_size) == (248056, [248046], 248320)
    assert text.num_experts == 0


def test_it_reads_the_published_moe_config():
    config = FAMILY.config(holo3_published_config("holo3-moe-tiny"))
    text = config.text_config
    assert family_for(holo3_published_config("holo3-moe-tiny")) is FAMILY and config.model_type == "qwen3_5_moe"
    assert (text.num_experts, text.num_experts_per_tok, text.moe_intermediate_size,
            text.shared_expert_intermediate_size, text.intermediate_size) == (6, 2, 64, 128, 0)


def test_without_layer_types_it_places_attention_every_full_attention_interval():
    raw = holo3_published_config()
    raw["text_config"].pop("layer_types")
    raw["text_config"]["full_attention_interval"] = 2
    assert FAMILY.config(raw).text_config.layer_types == ["linear_attention", "full_attention"] * 2 + ["linear_attention"]


@pytest.mark.parametrize("change, message", [
    (lambda text: text.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=8,
                              shared_expert_intermediate_size=8), "'qwen3_5' is dense but text_config has num_experts"),
    (lambda text: text.pop("intermediate_size"), "a dense text_config needs intermediate_size"),
    (lambda text: text.update(attention_bias=True), "attention_bias"),
    (lambda text: text["rope_parameters"].pop("mrope_section"), "refusing to guess"),
    (lambda text: text["rope_parameters"].update(rope_type="yarn"), "rope_type 'yarn'"),
    (lambda text: text["rope_parameters"].update(mrope_interleaved=False), "interleaves"),
    (lambda text: text["rope_parameters"].update(partial_rotary_factor=0.5), "does not cover the 32 rotary"),
    (lambda text: text.update(layer_types=["linear_attention"] * 4), "must name 5 layers"),
    (lambda text: text.update(layer_types=["sliding_attention"] * 5), "must name 5 layers"),
    (lambda text: text.update(linear_num_value_heads=3), "not a multiple"),
    (lambda text: text.pop("linear_key_head_dim"), "incomplete config.json"),
])
def test_what_it_cannot_run_is_a_config_error(change, message):
    raw = copy.deepcopy(holo3_published_config())
    change(raw["text_config"])
    with pytest.raises(ConfigError, match=message):
        FAMILY.config(raw)


@pytest.mark.parametrize("change, message", [
    (lambda text: text.update(num_experts=0, intermediate_size=256), "'qwen3_5_moe' is MoE but text_config has no"),
    (lambda text: text.update(num_experts_per_tok=7), "num_experts_per_tok in 1..num_experts"),
    (lambda text: text.pop("shared_expert_intermediate_size"), "shared_expert_intermediate_size"),
    (lambda text: text.update(norm_topk_prob=False), "renormalizes"),
])
def test_what_it_cannot_run_of_an_moe_config_is_a_config_error(change, message):
    raw = copy.deepcopy(holo3_published_config("holo3-moe-tiny"))
    change(raw["text_config"])
    with pytest.raises(ConfigError, match=message):
        FAMILY.config(raw)


def test_a_vision_config_with_deepstack_is_refused():
    raw = holo3_published_config()
    raw["vision_config"]["deepstack_visual_indexes"] = [0]
    with pytest.raises(ConfigError, match="no DeepStack"):
        FAMILY.config(raw)


# --- the model --------------------------------------------------------------------------------------

def test_its_layers_keep_recurrent_state_and_kv(loaded):
    model, builder = loaded
    kinds = [type(cache) for cache in model.make_cache()]
    assert kinds == [RecurrentLayerCache] * 3 + [KVLayerCache, RecurrentLayerCache]
    assert builder.mark_message_ends  # the prompt builder marks where messages end, for its snapshots



def test_its_prompts_mark_where_each_earlier_message_ends_or_the_next_user_turn_starts(holo3_checkpoint):
    # Qwen3.5's template refuses a history without a user turn and gives a last assistant turn an empty
    # think block: after those, the snapshot is taken where the next user turn's content starts, which
    # a later prompt with the same system prompt or the same earlier steps shares too.
    builder = PromptBuilder.from_pretrained(holo3_checkpoint, mark_message_ends=True)
    prompt = builder.build([{"role": "system", "content": "You are Holo."},
                            user("Open the settings.", synthetic_screenshot(96, 64, 1)),
                            {"role": "assistant", "content": "Done."}, user("Now close it.")])
    heads = [builder.tokenizer.decode(prompt.input_ids[:end]) for end in prompt.message_ends]
    ends = ["You are Holo.<|im_end|>\n<|im_start|>user\n", "Open the settings.<|im_end|>\n",
            "Done.<|im_end|>\n<|im_start|>user\n", "Now close it.<|im_end|>\n"]
    assert len(heads) == len(ends) and all(head.endswith(end) for head, end in zip(heads, ends))

def test_a_prompt_prefilled_in_chunks_through_its_caches_equals_one_pass(loaded):
    """Chunks shorter and longer than the convolution's kernel, one across the image: each layer's
    state carries over exactly."""
    model, builder = loaded
    prompt = builder.build([user("Click OK.", synthetic_screenshot(333, 217, 3))])
    grids = [image.grid_thw for image in prompt.images]
    embeds, _ = model.embed(prompt.input_ids, model.encode_images([prompt.images[0].pixel_values], grids))
    positions = mx.array(model.positions(prompt.input_ids, grids)[0][:, None])
    cache, parts, bounds = model.make_cache(), [], [0, 1, 3, 9, 40, len(prompt.input_ids)]
    for start, end in zip(bounds, bounds[1:]):
        hidden = model.hidden([Span(embeds[:, start:end], positions[..., start:end], cache)])[0]
        parts.append(np.array(model.logits(hidden)[0]))
    np.testing.assert_allclose(np.concatenate(parts), prompt_logits(model, prompt), atol=1e-5, rtol=0)


class Ranks:
    """What shard() asks of a group: its size, and this process's rank (the first)."""

    def __init__(self, count: int):
        self.count = count

    def size(self) -> int:
        return self.count

    def rank(self) -> int:
        return 0


@pytest.mark.distributed
def test_a_rank_count_that_does_not_divide_the_linear_key_heads_is_refused(holo3_checkpoint):
    model, _ = load(holo3_checkpoint)  # its own copy: shard() changes the modules it reaches
    with pytest.raises(ShardingError, match="linear_num_key_heads = 2 does not split over 3 ranks"):
        model.shard(Ranks(3))


@pytest.fixture(scope="module")
def quantized_moe(holo3_moe_checkpoint, module_tmp_factory):
    """The MoE fixture in 4 bits, in groups of 32: its experts' 64 columns are two groups."""
    return convert(str(holo3_moe_checkpoint), module_tmp_factory("quantized") / "q4", quantize=True, q_bits=4,
                   q_group_size=32)


@pytest.fixture(scope="module")
def probed(holo3_checkpoint, holo3_moe_checkpoint, quantized_moe):
    """Every model of the two-rank tests, one process and two ranks (test_distributed.probe)."""
    return probe(holo3_checkpoint, holo3_moe_checkpoint, quantized_moe)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_generate_what_one_process_does(checkpoint, probed):
    answers = probed[str(checkpoint)]
    assert answers["tensor"]["text"] == answers["alone"]["text"]
    assert answers["pipeline"]["text"] == answers["alone"]["text"]


@pytest.mark.distributed
def test_a_quantized_moe_folder_splits_too(holo3_moe_checkpoint, quantized_moe, probed, tmp_path):
    """Tensor parallelism slices the quantized experts and shared expert in place as it does the float
    ones, by whole quantization groups: the experts' 64 columns are two groups of 32, one of 64."""
    answers = probed[str(quantized_moe)]
    assert answers["tensor"]["text"] == answers["alone"]["text"]
    model, _ = load(convert(str(holo3_moe_checkpoint), tmp_path / "q4-64", quantize=True, q_bits=4))
    with pytest.raises(ShardingError, match="moe_intermediate_size's quantization groups = 1 does not split"):
        model.shard(Ranks(2))


def test_the_moe_block_splits_its_experts_and_shared_expert_and_keeps_its_gates_whole(holo3_moe_checkpoint):
    model, _ = load(holo3_moe_checkpoint)
    block = model.language_model.model.layers[0].mlp
    assert isinstance(block, SharedExpertMoeBlock)
    block.shard(Ranks(2))
    assert block.switch_mlp.gate_proj.weight.shape == (6, 32, 128)
    assert block.switch_mlp.down_proj.weight.shape == (6, 128, 32)
    assert block.shared_expert.up_proj.weight.shape == (64, 128)
    assert block.shared_expert.down_proj.weight.shape == (128, 64)
    # in place: the block's one all-sum adds the routed and shared shares together
    assert type(block.shared_expert.down_proj).__name__ == "Linear"
    assert block.gate.weight.shape == (6, 128) and block.shared_expert_gate.weight.shape == (1, 128)


def test_only_matrices_may_be_quantized(loaded):
    model, _ = loaded
    shapes = {name: value.shape for name, value in tree_flatten(model.parameters())}
    prefix = "language_model.model.layers.0.linear_attn."
    kept = [prefix + name for name in ("A_log", "dt_bias", "conv1d.weight", "norm.weight")]
    kept += ["language_model.model.layers.3.self_attn.q_norm.weight", "language_model.model.layers.0.input_layernorm.weight"]
    quantized = [prefix + "in_proj_qkv.weight", prefix + "out_proj.weight", "language_model.model.layers.3.self_attn.q_proj.weight"]
    mlp = "language_model.model.layers.0.mlp."
    if model.config.text_config.num_experts:  # the experts are quantized, the router and the shared expert's gate not
        kept += [mlp + "gate.weight", mlp + "shared_expert_gate.weight"]
        quantized += [mlp + "switch_mlp.gate_proj.weight", mlp + "switch_mlp.down_proj.weight",
                      mlp + "shared_expert.up_proj.weight"]
    for name in kept:
        assert not FAMILY.quantizable(name, shapes[name], False), name
    for name in quantized:
        assert FAMILY.quantizable(name, shapes[name], False), name


def test_the_converted_folder_is_mlx_vlms_layout_and_computes_the_same(loaded, checkpoint, tmp_path):
    model, builder = loaded
    folder = convert(str(checkpoint), tmp_path / "mlx", dtype="float32")
    weights = {name: value for file in sorted(folder.glob("model-*.safetensors")) for name, value in load_file(file).items()}
    assert not any(name.startswith("mtp.") or ".experts." in name for name in weights)  # MoE: experts stacked
    assert weights["language_model.model.layers.0.linear_attn.conv1d.weight"].shape == (256, 4, 1)
    original = load_file(checkpoint / "model.safetensors")
    # The draft head is not run but kept, as published, in a file the index lists.
    draft = {name: value for name, value in original.items() if name.startswith("mtp.")}
    assert draft and set(load_file(folder / "mtp.safetensors")) == set(draft)
    for name, value in load_file(folder / "mtp.safetensors").items():
        np.testing.assert_array_equal(value, draft[name])
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert {name for name, file in index.items() if file == "mtp.safetensors"} == set(draft)
    # Norms carry their 1 once: the converted folder's are read as they are.
    np.testing.assert_array_equal(weights["language_model.model.norm.weight"],
                                  original["model.language_model.norm.weight"] + 1)
    converted = load(folder)
    assert converted[0].config.text_config.layer_types == model.config.text_config.layer_types
    assert json.loads((folder / "config.json").read_text())["text_config"]["full_attention_interval"] == 4
    prompt = builder.build([user("Click OK.", synthetic_screenshot(333, 217, 7))])
    np.testing.assert_array_equal(prompt_logits(converted[0], prompt), prompt_logits(model, prompt))
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    assert tokens(sequential(converted, prompt, params)) == tokens(sequential(loaded, prompt, params))


def test_a_bfloat16_conversion_keeps_what_qwen_publishes_in_float32(holo3_checkpoint, tmp_path):
    """Qwen's bfloat16 checkpoints store A_log and the gated norm in float32; convert keeps them so
    (and the draft head in the folder's dtype), and the folder still loads."""
    kept = (".linear_attn.A_log", ".linear_attn.norm.weight")
    source = {name: value if name.endswith(kept) else value.astype(mx.bfloat16)
              for name, value in mx.load(str(holo3_checkpoint / "model.safetensors")).items()}
    config = json.loads((holo3_checkpoint / "config.json").read_text())
    config["dtype"] = config["text_config"]["dtype"] = "bfloat16"
    published = copy_checkpoint(holo3_checkpoint, tmp_path / "published", [source], config)
    folder = convert(str(published), tmp_path / "mlx")
    converted = {name: value for file in folder.glob("*.safetensors") for name, value in mx.load(str(file)).items()}
    float32 = {name for name, value in converted.items() if value.dtype == mx.float32}
    assert float32 == {name for name in converted if name.endswith(kept)} and len(float32) == 2 * 4  # 4 DeltaNet layers
    for name, value in source.items():
        if name.endswith(kept):
            np.testing.assert_array_equal(np.array(converted[to_mlx_name(name)]), np.array(value))
    assert {converted[name].dtype for name in converted if name.startswith("mtp.")} == {mx.bfloat16}
    load(folder)
