"""Streaming detokenization equals tokenizer.decode, token by token, on the real Qwen2.5-VL tokenizer."""

import pytest
from transformers import AutoTokenizer

from holo_mlx.testing import tokenizer_files_dir
from holo_mlx.tokens import StreamingDecoder


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tokenizer_files_dir())


def stream(tokenizer, ids: list[int]) -> list[str]:
    decoder = StreamingDecoder(tokenizer)
    return [decoder.add(token) for token in ids] + [decoder.finish()]


def test_stream_equals_decode_with_characters_split_across_tokens(tokenizer):
    ids = tokenizer.encode("Click « Envoyer » 🙂 at (412, 87) — 完成<|im_end|>\n")
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids)
    assert all("\ufffd" not in piece for piece in pieces)  # partial characters are held back, not mangled


def test_ids_past_the_tokenizer_vocabulary_decode_to_nothing(tokenizer):
    # Qwen2.5-VL's embedding has 151,936 rows for 151,669 tokens; a sampler can pick a padded row.
    padded = len(tokenizer) + 100
    ids = tokenizer.encode("The button") + [padded] + tokenizer.encode(" works")
    assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids) == "The button works"
