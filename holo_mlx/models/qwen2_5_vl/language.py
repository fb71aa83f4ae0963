"""Qwen2 decoder with multimodal rotary embeddings (M-RoPE, one block of frequencies per axis).

Attribute names equal the checkpoint keys under `language_model.`.
"""

import mlx.nn as nn

from ..decoder import Attention, Decoder, DecoderLayer, LanguageModel, MRoPE
from ..layers import MLP
from .config import TextConfig


class Qwen2Model(Decoder):
    def __init__(self, config: TextConfig):
        super().__init__()
        dim = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, dim)
        self.layers = [
            DecoderLayer(Attention(dim, config.num_attention_heads, config.num_key_value_heads, config.head_dim,
                                   bias=True),
                         MLP(dim, config.intermediate_size, bias=False), dim, config.rms_norm_eps)
            for _ in range(config.num_hidden_layers)
        ]
        self.norm = nn.RMSNorm(dim, eps=config.rms_norm_eps)
        self.rope = MRoPE(config.head_dim, config.rope_theta, config.mrope_section, interleaved=False)


def language_model(config: TextConfig) -> LanguageModel:
    return LanguageModel(Qwen2Model(config), config.hidden_size, config.vocab_size, config.tie_word_embeddings)
