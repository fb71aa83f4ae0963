"""python -m convert on real tiny checkpoints: tensors, layout, quantization, interop, failures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest

import convert.convert as converter
from convert.convert import SIDE_FILES, ConversionError, convert
from holo_mlx.models.qwen2_5_vl.config import ModelConfig
from holo_mlx.loading import load_model
from holo_mlx.models.qwen2_5_vl.weights import PATCH_EMBED_KEY, sanitize, to_mlx_name

REPO = Path(__file__).resolve().parent.parent
DOWN_PROJ = "language_model.model.layers.1.mlp.down_proj.weight"


def load_folder(folder: Path) -> dict[str, mx.array]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(mx.load(str(file)))
    return tensors


def copy_checkpoint(source: Path, target: Path, shards: list[dict[str, mx.array]], config: dict | None = None) -> Path:
    """A checkpoint folder with the source's side files and these tensors, one file per dict."""
    target.mkdir(parents=True)
    for name in SIDE_FILES:
        if (source / name).exists():
            (target / name).symlink_to(source / name)
    config = config or json.loads((source / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(config))
    for index, tensors in enumerate(shards):
        mx.save_safetensors(str(target / f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"), tensors)
    return target


def folder_entries(folder: Path) -> set[str]:
    return {entry.name for entry in folder.iterdir()}


@pytest.fixture(scope="module")
def q4_folder(hf_root_checkpoint, module_tmp_factory) -> Path:
    return convert(str(hf_root_checkpoint), module_tmp_factory("q4") / "out", quantize=True, q_bits=4)


@pytest.mark.parametrize("checkpoint", ["hf_root_checkpoint", "hf_nested_checkpoint"])
def test_float32_conversion_keeps_every_tensor(checkpoint, request, tmp_path):
    source = request.getfixturevalue(checkpoint)
    out = convert(str(source), tmp_path / "out")

    hf = load_folder(source)
    converted = load_folder(out)
    assert set(converted) == {to_mlx_name(key) for key in hf}
    for key, value in hf.items():
        name = to_mlx_name(key)
        expected = value.transpose(0, 2, 3, 4, 1) if name == PATCH_EMBED_KEY else value
        assert converted[name].dtype == mx.float32
        assert mx.array_equal(converted[name], expected), name

    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(converted)
    for file in set(index["weight_map"].values()):
        tensors, metadata = mx.load(str(out / file), return_metadata=True)
        assert metadata == {"format": "mlx"}
        assert {n for n, f in index["weight_map"].items() if f == file} == set(tensors)

    config = json.loads((out / "config.json").read_text())
    assert "text_config" not in config and config["hidden_size"] == 128
    assert config["rope_scaling"] == {"type": "mrope", "mrope_section": [4, 6, 6]}
    assert config["rope_theta"] == 1000000.0
    vision = config["vision_config"]
    assert vision["in_chans"] == vision["in_channels"] == 3
    assert vision["spatial_patch_size"] == vision["patch_size"] == 14
    assert "quantization" not in config
    assert ModelConfig.from_dict(config).text_config.mrope_section == [4, 6, 6]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.json",
                 "preprocessor_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name


def test_dtype_defaults_to_the_checkpoints_and_can_be_overridden(hf_bf16_checkpoint, tmp_path):
    stored = convert(str(hf_bf16_checkpoint), tmp_path / "bf16")
    assert {value.dtype for value in load_folder(stored).values()} == {mx.bfloat16}
    assert json.loads((stored / "config.json").read_text())["torch_dtype"] == "bfloat16"
    half = convert(str(hf_bf16_checkpoint), tmp_path / "f16", dtype="float16")
    assert {value.dtype for value in load_folder(half).values()} == {mx.float16}


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_text_weights_and_float_vision_tower(bits, hf_root_checkpoint, tmp_path):
    out = convert(str(hf_root_checkpoint), tmp_path / "out", quantize=True, q_bits=bits, q_group_size=64)
    reference = sanitize(load_folder(hf_root_checkpoint))
    converted = load_folder(out)

    for name in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight",
                 "language_model.model.layers.0.self_attn.q_proj.weight", DOWN_PROJ):
        module = name.removesuffix(".weight")
        weight, scales, biases = converted[name], converted[f"{module}.scales"], converted[f"{module}.biases"]
        assert weight.dtype == mx.uint32
        assert weight.shape[-1] == reference[name].shape[-1] * bits // 32
        restored = mx.dequantize(weight, scales, biases, group_size=64, bits=bits)
        step = (reference[name].max() - reference[name].min()).item() / (2**bits - 1)
        assert mx.abs(restored - reference[name]).max().item() <= step, name
    assert not any(name.startswith("vision_tower.") and name.endswith(".scales") for name in converted)
    assert not any("norm" in name and name.endswith(".scales") for name in converted)
    assert mx.array_equal(converted["vision_tower.blocks.0.attn.qkv.weight"],
                          reference["vision_tower.blocks.0.attn.qkv.weight"])

    config = json.loads((out / "config.json").read_text())
    expected = {"group_size": 64, "bits": bits, "mode": "affine"}
    assert config["quantization"] == config["quantization_config"] == expected


def test_quantize_vision_keeps_the_patch_embedding_and_norms(hf_root_checkpoint, tmp_path):
    out = convert(str(hf_root_checkpoint), tmp_path / "out", quantize=True, q_bits=8, quantize_vision=True)
    converted = load_folder(out)
    for module in ("vision_tower.blocks.0.attn.qkv", "vision_tower.blocks.1.mlp.down_proj",
                   "vision_tower.merger.mlp.0"):
        assert converted[f"{module}.weight"].dtype == mx.uint32 and f"{module}.scales" in converted
    assert converted[PATCH_EMBED_KEY].dtype == mx.float32 and converted[PATCH_EMBED_KEY].ndim == 5
    assert "vision_tower.merger.ln_q.scales" not in converted
    assert "vision_tower.blocks.0.norm1.scales" not in converted


def test_mlx_vlm_and_holo_mlx_load_our_quantized_folder(q4_folder):
    from mlx_vlm.utils import load_model as mlx_vlm_load_model

    for model in (mlx_vlm_load_model(q4_folder), load_model(q4_folder)):
        assert isinstance(model.language_model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
        assert isinstance(model.language_model.model.embed_tokens, nn.QuantizedEmbedding)
        assert type(model.vision_tower.blocks[0].attn.qkv) is nn.Linear


def test_quantized_folders_are_not_converted_again(q4_folder, tmp_path):
    with pytest.raises(ConversionError, match="is already quantized; convert from a float checkpoint"):
        convert(str(q4_folder), tmp_path / "out")


def test_folders_written_by_mlx_vlm_are_accepted(hf_root_checkpoint, tmp_path):
    from mlx_vlm.convert import convert as mlx_vlm_convert

    # mlx-vlm 0.7.10 rejects the vision model_type transformers 5 writes ("qwen2_5_vl_vision");
    # published Holo1.5 configs say "qwen2_5_vl".
    config = json.loads((hf_root_checkpoint / "config.json").read_text())
    config["vision_config"]["model_type"] = "qwen2_5_vl"
    source = copy_checkpoint(hf_root_checkpoint, tmp_path / "src", [], config)
    (source / "model.safetensors").symlink_to(hf_root_checkpoint / "model.safetensors")
    theirs = tmp_path / "mlx-vlm"
    mlx_vlm_convert(hf_path=str(source), mlx_path=str(theirs), dtype="float32")
    tensors = load_folder(theirs)
    assert sanitize(tensors).keys() == tensors.keys()  # already mlx-vlm names, kept as they are
    ModelConfig.from_dict(json.loads((theirs / "config.json").read_text()))
    load_model(theirs)

    # Re-converting their float folder gives exactly our conversion of the original (their
    # config drops torch_dtype, hence the explicit dtype).
    ours = load_folder(convert(str(hf_root_checkpoint), tmp_path / "ours"))
    again = load_folder(convert(str(theirs), tmp_path / "again", dtype="float32"))
    assert again.keys() == ours.keys()
    assert all(mx.array_equal(again[name], ours[name]) for name in ours)


def test_failure_after_writing_leaves_nothing(hf_root_checkpoint, tmp_path, monkeypatch):
    tensors = load_folder(hf_root_checkpoint)
    text = {k: v for k, v in tensors.items() if not k.startswith("visual.")}
    vision = {k: v for k, v in tensors.items() if k.startswith("visual.")}
    vision["visual.merger.mlp.2.weight"] = vision["visual.merger.mlp.2.weight"].astype(mx.int32)
    source = copy_checkpoint(hf_root_checkpoint, tmp_path / "src", [text, vision])
    parent = tmp_path / "models"
    parent.mkdir()
    # Small output shards, so shards are already on disk when the second input shard fails.
    monkeypatch.setattr(converter, "MAX_SHARD_BYTES", 1 << 20)

    with pytest.raises(ConversionError, match="vision_tower.merger.mlp.2.weight is mlx.core.int32"):
        convert(str(source), parent / "out")
    assert folder_entries(parent) == set()


def test_small_shards_make_a_consistent_index(hf_root_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(converter, "MAX_SHARD_BYTES", 1 << 20)
    out = convert(str(hf_root_checkpoint), tmp_path / "out", quantize=True)
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    files = sorted(set(weight_map.values()))
    assert len(files) > 3 and files[-1] == f"model-{len(files):05d}-of-{len(files):05d}.safetensors"
    assert {path.name for path in out.glob("*.safetensors")} == set(files)
    assert set(weight_map) == set(load_folder(out))


def test_refuses_to_overwrite_without_force(hf_root_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists; pass --force"):
        convert(str(hf_root_checkpoint), out)
    assert folder_entries(out) == {"keep.txt"}

    convert(str(hf_root_checkpoint), out, force=True)
    assert "keep.txt" not in folder_entries(out) and (out / "config.json").exists()
    assert folder_entries(tmp_path) == {"out"}


def test_folder_without_weights(hf_root_checkpoint, tmp_path):
    source = copy_checkpoint(hf_root_checkpoint, tmp_path / "src", [])
    with pytest.raises(ConversionError, match="no \\*.safetensors weights"):
        convert(str(source), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_architecture(hf_root_checkpoint, tmp_path):
    config = json.loads((hf_root_checkpoint / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    source = copy_checkpoint(hf_root_checkpoint, tmp_path / "src", [], config)
    with pytest.raises(ConversionError, match="unsupported architecture.*llama"):
        convert(str(source), tmp_path / "out")


@pytest.mark.parametrize("change, message", [
    ("drop", f"missing tensor {DOWN_PROJ}$"),
    ("add", "unexpected tensor language_model.model.layers.1.mlp.extra_proj.weight$"),
    ("reshape", f"{DOWN_PROJ} has shape \\(256, 128\\) but config.json implies \\(128, 256\\)"),
])
def test_tensor_set_is_checked_before_writing(change, message, hf_root_checkpoint, tmp_path):
    tensors = load_folder(hf_root_checkpoint)
    key = "model.layers.1.mlp.down_proj.weight"
    if change == "drop":
        del tensors[key]
    elif change == "add":
        tensors["model.layers.1.mlp.extra_proj.weight"] = tensors[key]
    else:
        tensors[key] = tensors[key].T
    source = copy_checkpoint(hf_root_checkpoint, tmp_path / "src", [tensors])
    with pytest.raises(ConversionError, match=message):
        convert(str(source), tmp_path / "out")
    assert folder_entries(tmp_path) == {"src"}


@pytest.mark.parametrize("stores_lm_head", [True, False])
def test_tied_embeddings_need_no_lm_head(stores_lm_head, hf_root_checkpoint, tmp_path):
    from mlx_vlm.utils import load_model as mlx_vlm_load_model

    config = json.loads((hf_root_checkpoint / "config.json").read_text())
    config["tie_word_embeddings"] = True
    tensors = load_folder(hf_root_checkpoint)
    if not stores_lm_head:
        del tensors["lm_head.weight"]
    source = copy_checkpoint(hf_root_checkpoint, tmp_path / "src", [tensors], config)
    out = convert(str(source), tmp_path / "out")
    assert "language_model.lm_head.weight" not in load_folder(out)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    mlx_vlm_load_model(out)
    load_model(out)


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    # The converter does no matrix products: skip the OpenBLAS re-exec, which doubles start-up.
    environment = {**os.environ, "PYTHONPATH": str(REPO), "HOLO_MLX_NO_BLAS_REEXEC": "1", **env}
    return subprocess.run([sys.executable, "-m", "convert", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_cli_unreachable_hub_is_one_clear_line(tmp_path):
    result = run_cli("--hf-path", "Hcompany/Holo1.5-7B", cwd=tmp_path,
                     HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: Hcompany/Holo1.5-7B is not a local folder, and the Hugging Face Hub is unreachable "
        "(offline?) with no cached copy"
    ]
    assert not (tmp_path / "models").exists()


def test_cli_default_destination_and_flags(hf_root_checkpoint, tmp_path):
    result = run_cli("--hf-path", str(hf_root_checkpoint), "-q", "--q-bits", "8", "--q-group-size", "32",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "models" / f"{hf_root_checkpoint.name}-mlx-8bit"
    assert result.stdout.strip() == f"wrote {out.relative_to(tmp_path)}"
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 8, "mode": "affine"}



@pytest.mark.parametrize("checkpoint", ["holo2_moe_root_checkpoint", "holo2_moe_nested_checkpoint"])
def test_holo2_moe_converts_in_mlx_vlms_layout_with_quantized_experts(checkpoint, request, tmp_path):
    from holo_mlx.models import family_for

    source = request.getfixturevalue(checkpoint)
    family = family_for(json.loads((source / "config.json").read_text()))
    reference = family.sanitize(load_folder(source))
    experts = "language_model.model.layers.0.mlp.switch_mlp.gate_proj"
    assert reference[f"{experts}.weight"].shape == (4, 48, 128)  # (experts, moe, hidden) from either orientation

    out = convert(str(source), tmp_path / "f32")
    converted = load_folder(out)
    assert set(converted) == set(reference)
    assert all(mx.array_equal(converted[name], value) for name, value in reference.items())
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["rope_scaling"] == {"rope_type": "default", "mrope_interleaved": True,
                                                     "mrope_section": [12, 10, 10]}
    assert config["text_config"]["rope_theta"] == 5e6 and "rope_parameters" not in config["text_config"]
    assert family.config(config).text_config.num_experts == 4

    quantized = load_folder(convert(str(source), tmp_path / "q8", quantize=True, q_bits=8))
    assert quantized[f"{experts}.weight"].dtype == mx.uint32 and f"{experts}.scales" in quantized
    assert quantized["language_model.model.layers.0.mlp.gate.weight"].dtype == mx.float32  # the router
    assert not any(name.startswith("vision_tower.") and name.endswith(".scales") for name in quantized)
