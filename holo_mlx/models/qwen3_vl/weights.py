"""Weight names: Qwen3-VL's published key layouts mapped onto mlx-vlm's, as for Qwen2.5-VL, and
the MoE experts split and stacked as mlx-lm's SwitchGLU holds them; and which weights may be quantized.

Hugging Face stores each layer's experts as two tensors, in an orientation that changed between
transformers 4.57 (gate_up_proj (experts, hidden, 2 * moe), down_proj (experts, moe, hidden)) and
5 (gate_up_proj (experts, 2 * moe, hidden), down_proj (experts, hidden, moe)); SwitchGLU wants
gate_proj / up_proj (experts, moe, hidden) and down_proj (experts, hidden, moe). The two
orientations never both fit: in 4.57's, gate_up's last axis is twice down_proj's middle one.
Qwen3.5 MoE checkpoints (qwen3_5/) are published, and saved by transformers 5, with one module per
expert instead (`experts.<e>.gate_proj.weight`, ...), which are stacked.
"""

import re

import mlx.core as mx

from ..base import matrix_weights
from ..qwen2_5_vl.weights import sanitize as rename


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    return stack_experts(rename(weights))


PER_EXPERT = re.compile(r"(.*\.mlp\.)experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


def stack_experts(out: dict[str, mx.array]) -> dict[str, mx.array]:
    """Hugging Face's expert tensors, fused (either orientation) or one module per expert, as
    SwitchGLU stacks, in place."""
    per_expert: dict[tuple[str, str], dict[int, mx.array]] = {}
    for key in list(out):
        if match := PER_EXPERT.fullmatch(key):
            per_expert.setdefault((match[1], match[3]), {})[int(match[2])] = out.pop(key)
    for (prefix, name), experts in per_expert.items():
        out[f"{prefix}switch_mlp.{name}.weight"] = mx.stack([experts[index] for index in range(len(experts))])
    for key in [key for key in out if key.endswith(".mlp.experts.gate_up_proj")]:
        prefix = key.removesuffix("experts.gate_up_proj")
        gate_up, down = out.pop(key), out.pop(prefix + "experts.down_proj")
        if gate_up.shape[2] == 2 * down.shape[1]:  # transformers 4.57
            gate_up, down = gate_up.transpose(0, 2, 1), down.transpose(0, 2, 1)
        gate, up = mx.split(gate_up, 2, axis=1)
        out[prefix + "switch_mlp.gate_proj.weight"] = gate
        out[prefix + "switch_mlp.up_proj.weight"] = up
        out[prefix + "switch_mlp.down_proj.weight"] = down
    return out


def quantizable(name: str, shape: tuple[int, ...], quantize_vision: bool) -> bool:
    """The default's matrices and the MoE experts (3-D SwitchGLU weights); the router stays in float:
    a small matrix whose rounding would move tokens to other experts."""
    if name.endswith(".mlp.gate.weight"):
        return False
    return (".switch_mlp." in name and len(shape) == 3) or matrix_weights(name, shape, quantize_vision)
