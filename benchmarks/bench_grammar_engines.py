"""Grammar engines on the Qwen2.5 tokenizer: llguidance (ours) against xgrammar and outlines-core.

    pip install xgrammar outlines-core      # optional rivals; those not installed are skipped
    python benchmarks/bench_grammar_engines.py

For each engine and schema: time to compile, time to compute the next-token mask (for ours, the
whole `JsonConstraint.allowed()`: the mask as the sampler gets it), and whether answers are
valid. The answers are random walks (each next token drawn uniformly among the
allowed ones), which is what random weights do and the hardest case for correctness: every walk
that the engine lets finish must parse and validate against the schema. No model is loaded.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np

from holo_mlx.agent import NavigationStep, bounded_schema, localization_schema

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = {
    "click": localization_schema(1400, 700),
    "navigation": bounded_schema(NavigationStep.model_json_schema(), max_chars=40, max_coordinate=1400),
}


def llguidance_engine(tokenizer, vocab_size, eos):
    from holo_mlx.constrain import Grammars

    grammars = Grammars(tokenizer, vocab_size, set(eos))
    grammars.tokenizer  # built once per server, not per schema: outside the compile time

    def compile(schema):
        grammar = grammars.json_schema(schema)

        def matcher():
            constraint = grammar.constraint()
            return constraint.allowed, lambda mask: np.flatnonzero(np.array(mask)), constraint.advance
        return matcher
    return compile


def xgrammar_engine(tokenizer, vocab_size, eos):
    import xgrammar

    compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=eos))

    def compile(schema):
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)

        def matcher():
            state, mask = xgrammar.GrammarMatcher(compiled), xgrammar.allocate_token_bitmask(1, vocab_size)

            def fill():
                state.fill_next_token_bitmask(mask, 0)
                return mask[0].numpy()
            return fill, lambda words: unpack(words, vocab_size), state.accept_token
        return matcher
    return compile


def outlines_core_engine(tokenizer, vocab_size, eos):
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    from holo_mlx.tokens import token_bytes

    table, special = token_bytes(tokenizer), set(tokenizer.all_special_ids)
    by_bytes: dict[bytes, list[int]] = {}
    for token in range(len(tokenizer)):
        if token not in special:
            by_bytes.setdefault(table.bytes_of(token), []).append(token)
    vocabulary = Vocabulary(eos[0], by_bytes)

    def compile(schema):
        index = Index(build_regex_from_schema(json.dumps(schema), whitespace_pattern=""), vocabulary)

        def matcher():
            guide = Guide(index)
            return guide.get_tokens, np.asarray, guide.advance
        return matcher
    return compile


def unpack(words: np.ndarray, vocab_size: int) -> np.ndarray:
    return np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little")[:vocab_size])


def walk(matcher, rng, eos, tokenizer, max_tokens=400):
    """One random answer: (text, finished, seconds per mask); the first mask's time includes making the matcher."""
    start = time.perf_counter()
    fill, choices, advance = matcher()
    tokens, times = [], []
    for _ in range(max_tokens):
        mask = fill()
        times.append(time.perf_counter() - start)
        token = int(rng.choice(choices(mask)))
        if token in eos:
            return tokenizer.decode(tokens), True, times
        start = time.perf_counter()
        advance(token)
        tokens.append(token)
    return tokenizer.decode(tokens), False, times


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import cached_checkpoint

    from holo_mlx.prompt import load_tokenizer

    tokenizer = load_tokenizer(cached_checkpoint(config_layout="root", key_layout="flat", dtype="float32"))
    vocab_size, eos = 152064, [151645, 151643]
    walks = 40
    print(f"{walks} random walks per schema; 'start': a request's matcher and first mask; 'mask': advancing by a token "
          "and the next mask")
    print(f"{'engine':14s} {'schema':10s} {'compile':>9s} {'start':>8s} {'mask p50':>9s} {'mask mean':>9s} "
          f"{'valid/finished':>14s}")
    for name, engine in (("llguidance", llguidance_engine), ("xgrammar", xgrammar_engine),
                         ("outlines-core", outlines_core_engine)):
        try:
            compile = engine(tokenizer, vocab_size, eos)
        except ImportError:
            print(f"{name:14s} (not installed)")
            continue
        for schema_name, schema in SCHEMAS.items():
            start = time.perf_counter()
            matcher = compile(schema)
            compile_ms = (time.perf_counter() - start) * 1000
            rng, firsts, times, valid, finished = np.random.default_rng(0), [], [], 0, 0
            for _ in range(walks):
                text, done, walk_times = walk(matcher, rng, eos, tokenizer)
                firsts.append(walk_times[0])
                times += walk_times[1:]
                finished += done
                try:
                    jsonschema.validate(json.loads(text), schema)
                    valid += 1
                except (ValueError, jsonschema.ValidationError):
                    pass
            print(f"{name:14s} {schema_name:10s} {compile_ms:7.0f}ms {statistics.median(firsts) * 1000:6.1f}ms "
                  f"{statistics.median(times) * 1e6:7.0f}us {statistics.fmean(times) * 1e6:7.0f}us "
                  f"{valid:7d}/{finished:<6d}", flush=True)


if __name__ == "__main__":
    main()
