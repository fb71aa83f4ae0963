"""Weight names: Qwen3.5's published key layouts mapped onto mlx-vlm's, in MLX's conventions.

transformers saves `model.language_model.*`, `model.visual.*` and `lm_head.*` (Qwen2.5-VL's renames
apply) with two torch conventions that a converted (mlx-vlm layout) folder no longer has: the
depthwise conv1d kernel as (channels, 1, kernel), MLX's being (channels, kernel, 1), and zero-centred
RMSNorms (the decoder's norms and each head's q/k norm scale by 1 + weight), which MLX's RMSNorm
takes with the 1 added. The multi-token-prediction head (`mtp.*`, a draft model) is not run
(a converted folder keeps it as published, in mtp.safetensors). The
MoE variant's experts (one module each as published, or fused) are stacked as Qwen3-VL's.

Which weights may be quantized is Qwen3-VL's rule: the 2-D matrices and the experts; A_log, dt_bias,
the norms (1-D) and the conv1d kernel (3-D) stay in float, as do the router and the shared expert's gate.
"""

import mlx.core as mx

from ..qwen2_5_vl.weights import MLX_PREFIXES, to_mlx_name
from ..qwen2_5_vl.weights import sanitize as rename
from ..qwen3_vl.weights import quantizable as qwen3_vl_quantizable
from ..qwen3_vl.weights import stack_experts

DRAFT_HEAD = "mtp."
# Qwen publishes these two in float32 in bfloat16 checkpoints: the per-head decay (exp of A_log) is
# raised to the power of every token's step, and the gated norm scales the recurrent read-out.
FLOAT32_WEIGHTS = (".linear_attn.A_log", ".linear_attn.norm.weight")
ZERO_CENTRED = (".input_layernorm.weight", ".post_attention_layernorm.weight", ".q_norm.weight", ".k_norm.weight")
FINAL_NORM = "language_model.model.norm.weight"


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    weights = {key: value for key, value in weights.items() if not key.startswith(DRAFT_HEAD)}
    out = rename(weights)
    for key in weights:
        name = to_mlx_name(key)
        if name is None or key.startswith(MLX_PREFIXES):  # a converted folder is in MLX's conventions
            continue
        if name.endswith(".linear_attn.conv1d.weight"):
            out[name] = out[name].moveaxis(2, 1)
        elif name.endswith(ZERO_CENTRED) or name == FINAL_NORM:
            out[name] = out[name] + 1.0
    return stack_experts(out)


def quantizable(name: str, shape: tuple[int, ...], quantize_vision: bool) -> bool:
    """Qwen3-VL's rule, and the shared expert's gate in float: one row whose sigmoid scales the
    shared expert's whole output for every token, too small for quantizing to save anything."""
    return not name.endswith(".mlp.shared_expert_gate.weight") and qwen3_vl_quantizable(name, shape, quantize_vision)
