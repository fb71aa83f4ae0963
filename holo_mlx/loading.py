"""Load a model folder: ours, mlx-vlm's / mlx-community's, or a Hugging Face checkpoint as is."""

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from . import kernels
from .models import Family, VisionLanguageModel, family_for
from .runtime import compute_dtype, keep_freed_buffers, wire_weights


class LoadError(RuntimeError):
    pass


def resolve_path(path_or_repo: str | Path) -> Path:
    """A local folder, or a hub id fetched with huggingface_hub (config, weights, tokenizer files)."""
    path = Path(path_or_repo)
    if path.is_dir():
        return path
    if path.exists() or str(path_or_repo).startswith((".", "/")) or str(path_or_repo).count("/") != 1:
        raise LoadError(f"{path_or_repo}: not a model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(
            str(path_or_repo),
            allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer.model"],
        ))
    except Exception as error:  # offline, unknown repo, gated: the hub's own message says which
        raise LoadError(f"could not fetch {path_or_repo} from the Hugging Face hub: {error}") from None


def read_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.exists():
        raise LoadError(f"{path}: no config.json (convert a checkpoint with `python -m convert`)")
    return json.loads(file.read_text())


def load_model(path_or_repo: str | Path, group: mx.distributed.Group | None = None,
               pipeline: bool = False) -> VisionLanguageModel:
    """Build the model of the folder's family and load its weights, in float32 on the CPU backend
    (see runtime.py), with the kernels of the default device; `model.family` is the Family. With a
    group of ranks (mlx.launch), this rank's part of the decoder only (distributed.py): its
    tensor-parallel slice of every layer, or with `pipeline` its run of whole layers."""
    from .distributed import ShardingError, layer_index, tensor_parallel, weight_bytes
    from .distributed import pipeline as pipeline_stage

    keep_freed_buffers()
    kernels.select()
    path = resolve_path(path_or_repo)
    raw_config = read_config(path)
    family: Family = family_for(raw_config)
    config = family.config(raw_config)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise LoadError(f"{path}: no *.safetensors weights")
    weights = {}
    for file in files:
        weights.update(mx.load(str(file)))
    weights = family.sanitize(weights)

    generation = path / "generation_config.json"
    if generation.exists():
        extra = json.loads(generation.read_text()).get("eos_token_id") or []
        config.eos_token_id = sorted(set(config.eos_token_id) | set(extra if isinstance(extra, list) else [extra]))
    model = family.model(config)
    model.family = family
    if group is not None and pipeline:
        try:
            pipeline_stage(model, group)
        except ShardingError as error:
            raise LoadError(f"{path}: {error}") from None
        layers = model.language_model.model.layers  # another rank's layers: never read from the files
        weights = {key: value for key, value in weights.items()
                   if (index := layer_index(key)) is None or layers[index] is not None}
    if quantization := raw_config.get("quantization"):
        nn.quantize(
            model,
            group_size=quantization["group_size"],
            bits=quantization["bits"],
            # Quantize exactly the modules the folder stores quantized (vision may be kept dense).
            class_predicate=lambda name, module: f"{name}.scales" in weights,
        )
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as error:
        raise LoadError(f"{path}: weights do not match the config: {error}") from None
    del weights  # the model holds what it keeps: a rank's full tensors go once its slices are made
    if group is not None and not pipeline:  # before anything is evaluated: the weights are still lazy reads
        try:
            tensor_parallel(model, group)
        except ShardingError as error:
            raise LoadError(f"{path}: {error}") from None
    model.apply(lambda p: p.astype(compute_dtype(p.dtype)) if mx.issubdtype(p.dtype, mx.floating) else p)
    wire_weights(weight_bytes(model.parameters()))
    if group is not None:  # layer by layer: a layer's whole tensors are freed once its slices are made
        for _, layer in model.language_model.model.own_layers():
            mx.eval(layer.parameters())
    mx.eval(model.parameters())
    return model
