"""The kernels the models call, bound once to those of the device they run on by select().

On a GPU they are MLX's and mlx-lm's, as mlx-lm's models use them: fused attention, mlx-lm's
compiled SwiGLU, a compiled log-softmax and rotary, the vision tower over all its rows at once and
mlx-lm's gated delta rule (a Metal kernel). MLX's CPU backend gets holo_mlx/cpu's instead (its exp
is scalar, its streams single-threaded, mlx-lm's gated delta rule a loop over tokens there).

load_model() selects for the default device; importing this module selects for it too, so models
built without load_model() run. Call them through the module (`kernels.attention(...)`): a name
imported from here keeps the function it was bound to at that time.
"""

from functools import partial

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.activations import swiglu as compiled_swiglu
from mlx_lm.models.gated_delta import gated_delta_update

from .cpu import attention as cpu_attention
from .cpu import gated_delta as cpu_gated_delta
from .cpu import polynomial_exp as cpu_kernels
from .cpu import tower as cpu_tower


def rotate_half(x: mx.array) -> mx.array:
    half = x.shape[-1] // 2
    return mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rotary(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """x rotated by the angles of cos and sin (rotate-half layout)."""
    return x * cos + rotate_half(x) * sin


@partial(mx.compile, shapeless=True)
def _rotary_sum(x: mx.array, rotated: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    return x * cos + rotated * sin


def compiled_rotary(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """rotary() with its arithmetic fused in one shapeless kernel; the half swap stays outside, as
    its slices are sized by the shape, which a shapeless compile cannot trace."""
    return _rotary_sum(x, rotate_half(x), cos, sin)


def tower_on_all_rows(tower, *inputs) -> mx.array:
    """The vision tower's own pass over every row at once: a GPU spreads each kernel over itself."""
    return tower.rows(*inputs)


def select(device: mx.Device | mx.DeviceType | None = None) -> None:
    """Bind attention, swiglu, log_softmax, apply_rotary, run_tower and gated_delta for `device` (by
    default the default device). Calling it again rebinds them."""
    global attention, swiglu, log_softmax, apply_rotary, run_tower, gated_delta
    if (mx.default_device() if device is None else device) == mx.gpu:
        attention = mx.fast.scaled_dot_product_attention
        swiglu = compiled_swiglu
        log_softmax = nn.log_softmax
        apply_rotary = compiled_rotary
        run_tower = tower_on_all_rows
        gated_delta = gated_delta_update
    else:
        attention = cpu_attention.attention
        swiglu = cpu_kernels.silu_gate
        log_softmax = cpu_kernels.log_softmax
        # Uncompiled: rotary is a small share of the CPU's work, and its compiled kernels are
        # traced per shape (see cpu/polynomial_exp.py).
        apply_rotary = rotary
        run_tower = cpu_tower.run_tower
        gated_delta = cpu_gated_delta.gated_delta_update


select()
