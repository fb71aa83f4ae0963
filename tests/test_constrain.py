"""JSON-schema constraints (holo_mlx/constrain.py) on the real Qwen2.5 tokenizer and the tiny model."""

import json

import jsonschema
import numpy as np
import pytest

from holo_mlx import load
from holo_mlx.agent import NavigationStep, bounded_schema, localization_schema
from holo_mlx.constrain import Grammars, SchemaError
from holo_mlx.engine.sampling import SamplingParams
from holo_mlx.generate import stream_generate

VOCAB = 152064  # the model's; the tokenizer has about 151.6k tokens
EOS = {151645, 151643}


@pytest.fixture(scope="module")
def loaded(hf_root_checkpoint):
    return load(hf_root_checkpoint)


@pytest.fixture(scope="module")
def grammars(loaded):
    return Grammars(loaded[1].tokenizer, VOCAB, EOS)


def random_answer(grammar, tokenizer, rng) -> tuple[str, int]:
    """Draw each token uniformly among the allowed ones (what random weights do); (text, end token)."""
    constraint, tokens = grammar.constraint(), []
    while True:
        token = int(rng.choice(np.flatnonzero(np.array(constraint.allowed()))))
        constraint.advance(token)
        if token in EOS:
            return tokenizer.decode(tokens), token
        tokens.append(token)


@pytest.mark.parametrize("schema", [
    localization_schema(1400, 700),
    bounded_schema(NavigationStep.model_json_schema(), max_chars=24, max_coordinate=1400),
])
def test_every_random_walk_ends_in_a_valid_answer(grammars, loaded, schema):
    rng, grammar = np.random.default_rng(0), grammars.json_schema(schema)
    for _ in range(10):
        text, _ = random_answer(grammar, loaded[1].tokenizer, rng)
        jsonschema.validate(json.loads(text), schema)


def test_the_mask_covers_the_model_vocabulary_and_ends_only_with_the_grammar(grammars, loaded):
    constraint = grammars.json_schema({"type": "boolean"}).constraint()
    allowed = np.array(constraint.allowed())
    assert allowed.shape == (VOCAB,) and allowed.dtype == bool
    assert not allowed[len(loaded[1].tokenizer):].any()  # padding past the tokenizer's tokens
    assert not allowed[list(EOS)].any()  # nothing written yet: no end
    constraint.advance(loaded[1].tokenizer.encode("true")[0])
    assert set(np.flatnonzero(np.array(constraint.allowed()))) == EOS  # complete: only the end


def test_generation_stops_at_the_end_of_the_grammar(grammars, loaded):
    model, prompts = loaded
    schema = localization_schema(640, 480)
    prompt = prompts.build([{"role": "user", "content": "Click OK."}])
    params = SamplingParams(max_tokens=64, temperature=1.0, seed=3, constraint=grammars.json_schema(schema).constraint())
    chunks = list(stream_generate(model, prompts.tokenizer, prompt, params))
    assert chunks[-1].finish_reason == "stop" and chunks[-1].token in EOS
    jsonschema.validate(json.loads("".join(chunk.text for chunk in chunks)), schema)


@pytest.mark.parametrize("schema", [{"type": "shape"}, {"not": {"type": "string"}}, "{", ["a"],
                                    {"oneOf": [{"type": "integer"}, {"type": "number"}]}])
def test_unusable_schemas_raise_schema_error(grammars, schema):
    with pytest.raises(SchemaError):
        grammars.json_schema(schema)
