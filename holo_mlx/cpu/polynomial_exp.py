"""exp, the SwiGLU gate and log-softmax for MLX's CPU backend.

MLX's x86-64 CPU backend evaluates exp one element at a time, which made silu and the attention
softmax the largest costs of a prefill and of the vision tower after the GEMMs (docs/benchmarks.md,
CPU kernels). Here exp is plain arithmetic instead: exp(x) = 2^n * 2^f with n = round(x log2 e),
the float 2^n built from its exponent bits and 2^f a degree-7 polynomial (relative error 2.2e-7).

The arithmetic is split into small mx.compile kernels on purpose: MLX's fuser breaks a graph
with two outputs, or with maximum (a scalar loop: it checks for NaN), into many passes;
one pass for the exponent bits, one for the polynomial and one that combines them vectorize.
"""

import logging
from functools import cache

import mlx.core as mx
import mlx.nn as nn

log = logging.getLogger(__name__)

LOG2E = 1.4426950408889634
# Taylor coefficients of 2^f = exp(f ln 2); |f| <= 0.5 keeps the degree-7 remainder below 1e-7.
EXP2_COEFFICIENTS = (1.0, 0.6931471805599453, 0.2402265069591007, 0.05550410866482158, 0.009618129107628477,
                     0.0013333558146428443, 0.00015403530393381606, 1.525273380405984e-05)
MANTISSA = 8388608.0  # 2^23: a float32's exponent field starts at bit 23
# Adding 1.5 * 2^23 rounds to an integer; the extra 128 (even, so ties round alike) leaves the
# float32 exponent bias 127 after the subtraction in _exponent_bits.
ROUNDER = (12582912.0 + 128) * MANTISSA
MASKED = -1e9  # a masked score: finite, as the kernels need, and exp(MASKED - max) is exactly 0


def _rounded(x: mx.array) -> mx.array:
    """(round(x log2 e) + ROUNDER) * 2^23: both kernels evaluate this same expression, so the
    compiler rounds it identically in each, fused multiply-add or not."""
    return x * (LOG2E * MANTISSA) + ROUNDER


def _exponent_bits(x: mx.array) -> mx.array:
    """The int32 bits of the float 2^n, n = round(x log2 e); 0 (the float 0.0) below 2^-126."""
    biased = _rounded(x) - (ROUNDER - 127 * MANTISSA)  # (n + 127) * 2^23
    return ((biased + mx.abs(biased)) * 0.5).astype(mx.int32)  # max(biased, 0) that vectorizes


def _fraction_power(x: mx.array) -> mx.array:
    """2^f for f = x log2 e - n in [-0.5, 0.5] (Estrin's scheme: shorter dependency chains)."""
    f = x * LOG2E - (_rounded(x) - ROUNDER) * (1 / MANTISSA)
    c = EXP2_COEFFICIENTS
    f2 = f * f
    return (c[0] + c[1] * f + f2 * (c[2] + c[3] * f)) + (f2 * f2) * ((c[4] + c[5] * f) + f2 * (c[6] + c[7] * f))


def _silu_gate(x: mx.array, power: mx.array, bits: mx.array, up: mx.array) -> mx.array:
    """silu(x) * up from e = exp(-|x|) = power * bits, a form that never overflows:
    sigmoid(x) = 1 / (1 + e) for x >= 0 and e / (1 + e) below."""
    e = power * bits
    return x * (mx.where(x >= 0, 1.0, e) / (1 + e)) * up


@cache
def _compiled():
    """The compiled kernels, or None where the CPU backend cannot compile (MLX builds its CPU
    kernels with the system C++ compiler): then MLX's own exp, as the polynomial unfused is slower.
    Traced per shape, as shapeless CPU kernels run several times slower (docs/benchmarks.md)."""
    kernels = mx.compile(_exponent_bits), mx.compile(_fraction_power), mx.compile(_silu_gate)
    try:
        mx.eval(kernels[0](mx.zeros(4)))
    except Exception as error:
        log.warning("mx.compile unavailable on the CPU backend (%s); using mx.exp", error)
        return None
    return kernels


# MLX keeps every traced shape of a compiled function (~36 KB each) until the function is
# dropped, and attention scores come in ever new shapes: start afresh past this many.
MAX_TRACED_SHAPES = 512
_traced_shapes: set[tuple[int, ...]] = set()


def _kernels_for(shape: tuple[int, ...]):
    if shape not in _traced_shapes:
        if len(_traced_shapes) >= MAX_TRACED_SHAPES:
            _traced_shapes.clear()
            _compiled.cache_clear()
        _traced_shapes.add(shape)
    return _compiled()


def exp_nonpositive(x: mx.array) -> mx.array:
    """exp(x) for finite x <= 0 (shifted scores and logits); 0 below exp(-87)."""
    kernels = _kernels_for(x.shape)
    if kernels is None:
        return mx.exp(x)
    exponent_bits, fraction_power, _ = kernels
    return fraction_power(x) * exponent_bits(x).view(mx.float32)


def silu_gate(x: mx.array, up: mx.array) -> mx.array:
    """silu(x) * up, SwiGLU's gate."""
    kernels = _kernels_for(x.shape)
    if kernels is None:
        return nn.silu(x) * up
    exponent_bits, fraction_power, gate = kernels
    negative = -mx.abs(x)
    return gate(x, fraction_power(negative), exponent_bits(negative).view(mx.float32), up)


def log_softmax(logits: mx.array) -> mx.array:
    """Log-probabilities over the last axis (a vocabulary row per sampled token)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - mx.log(exp_nonpositive(shifted).sum(axis=-1, keepdims=True))
