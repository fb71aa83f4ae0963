"""Load a model folder: ours, mlx-vlm's / mlx-community's, or a Hugging Face checkpoint as is.

With a group of ranks (mlx.launch) the model splits itself (its `shard` or `pipeline`) on the
lazily loaded weights before they are evaluated, so a rank reads each tensor once and keeps only
its slice (or its layers): no process ever holds the whole decoder.
"""

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import kernels
from .distributed import weight_bytes
from .folders import LoadError, read_config, resolve_path
from .models import Family, ShardingError, VisionLanguageModel, family_for
from .runtime import compute_dtype, keep_freed_buffers, wire_weights


def load_model(path_or_repo: str | Path, group: mx.distributed.Group | None = None,
               pipeline: bool = False) -> VisionLanguageModel:
    """Build the model of the folder's family and load its weights, in float32 on the CPU backend
    (see runtime.py), with the kernels of the default device; `model.family` is the Family. With a
    group of ranks (mlx.launch), this rank's part of the decoder only: its tensor-parallel slice of
    every layer (`model.shard`), or with `pipeline` its run of whole layers (`model.pipeline`)."""
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
        modules = {name for name, _ in model.named_modules()}
        try:
            model.pipeline(group)
        except ShardingError as error:
            raise LoadError(f"{path}: {error}") from None
        # Another rank's modules are gone: their weights are never read from the files.
        dropped = modules - {name for name, _ in model.named_modules()}
        weights = {key: value for key, value in weights.items() if key.rpartition(".")[0] not in dropped}
    if quantization := raw_config.get("quantization"):
        nn.quantize(
            model,
            group_size=quantization["group_size"],
            bits=quantization["bits"],
            # Quantize exactly the modules the folder stores quantized (vision may be kept dense), each
            # with its own settings where the folder gives some (mlx-lm's MoE routers at 8 bits).
            class_predicate=lambda name, module: f"{name}.scales" in weights and (
                quantization[name] if isinstance(quantization.get(name), dict) else True),
        )
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as error:
        raise LoadError(f"{path}: weights do not match the config: {error}") from None
    del weights  # the model holds what it keeps: a rank's full tensors go once its slices are made
    if group is not None and not pipeline:  # before anything is evaluated: the weights are still lazy reads
        try:
            model.shard(group)
        except ShardingError as error:
            raise LoadError(f"{path}: {error}") from None
    model.apply(lambda p: p.astype(compute_dtype(p.dtype)) if mx.issubdtype(p.dtype, mx.floating) else p)
    wire_weights(weight_bytes(model.parameters()))
    if group is not None:  # module by module: a module's whole tensors are freed once its slices are made
        for _, module in tree_flatten(model.leaf_modules(), is_leaf=lambda node: isinstance(node, nn.Module)):
            mx.eval(module.parameters())
    mx.eval(model.parameters())
    return model
