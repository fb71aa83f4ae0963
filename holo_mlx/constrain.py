"""Structured output: JSON schemas enforced token by token during decoding, with llguidance.

A schema becomes a grammar over the model's own tokens. Before each token, the grammar says which
tokens may come next and everything else is masked out of the logits, so the answer parses and
validates whatever the weights are. End-of-sequence is allowed only where the grammar may end,
and it is the only choice once the grammar is complete: a finished answer always stops.

llguidance (also mlx-vlm's engine) won over xgrammar and outlines-core on this tokenizer:
docs/agents.md gives the measurements.
"""

import json
import threading
from dataclasses import dataclass

import llguidance
import llguidance.hf
import llguidance.numpy
import mlx.core as mx
import numpy as np

# No free whitespace, and json.dumps' separators: the JSON that models trained on Python-written
# examples produce, so the grammar steers them as little as possible.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class SchemaError(ValueError):
    """The schema is not valid JSON Schema, or uses something the grammar engine does not support."""


def first_line(message: str) -> str:
    """llguidance's errors carry a dump of the parser state after the first line."""
    return message.strip().splitlines()[0] if message.strip() else "unknown grammar error"


class JsonConstraint:
    """One request's grammar state (generate.Constraint): a mask before each token, then the token."""

    def __init__(self, grammar: str, tokenizer: llguidance.LLTokenizer, vocab_size: int):
        self.matcher = llguidance.LLMatcher(tokenizer, grammar)
        self.words = llguidance.numpy.allocate_token_bitmask(1, vocab_size)
        self.vocab_size = vocab_size

    def allowed(self) -> mx.array:
        llguidance.numpy.fill_next_token_bitmask(self.matcher, self.words)
        # Bit i of word j allows token 32 * j + i.
        bits = np.unpackbits(self.words.view(np.uint8), bitorder="little")[: self.vocab_size]
        return mx.array(bits.astype(bool))

    def advance(self, token: int) -> None:
        # Once the grammar has stopped (its end-of-sequence was sampled), later tokens are past the
        # end of the answer: single-request decoding computes one step ahead.
        if self.matcher.is_stopped():
            return
        if not self.matcher.consume_token(token):
            raise SchemaError(f"the grammar engine cannot follow this schema: {first_line(self.matcher.get_error())}")


@dataclass(frozen=True)
class Grammar:
    """A compiled schema; each request that uses it needs its own constraint()."""

    text: str
    grammars: "Grammars"

    def constraint(self) -> JsonConstraint:
        return JsonConstraint(self.text, self.grammars.tokenizer, self.grammars.vocab_size)


class Grammars:
    """Compiles JSON schemas against one model's tokenizer."""

    def __init__(self, hf_tokenizer, vocab_size: int, eos_token_ids: set[int]):
        self.hf_tokenizer, self.vocab_size = hf_tokenizer, vocab_size
        self.eos_token_ids = sorted(eos_token_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        """Built on first use: it walks the whole vocabulary."""
        with self._lock:
            if self._tokenizer is None:
                # The model's vocabulary is padded past the tokenizer's: the grammar never allows the padding.
                self._tokenizer = llguidance.hf.from_tokenizer(self.hf_tokenizer, n_vocab=self.vocab_size,
                                                               eos_token=self.eos_token_ids)
            return self._tokenizer

    def json_schema(self, schema: dict | str) -> Grammar:
        """Grammar for a JSON schema (a dict or its JSON text); SchemaError when unusable."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as error:
                raise SchemaError(f"the schema is not valid JSON: {error}") from None
        if not isinstance(schema, dict):
            raise SchemaError("the schema must be a JSON object")
        try:
            text = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except ValueError as error:
            raise SchemaError(str(error)) from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(text, self.tokenizer)
        if is_error:
            raise SchemaError(messages[0])
        self._probe(text)
        return Grammar(text, self)

    def _probe(self, grammar: str) -> None:
        """Walk the grammar's forced opening, as decoding will: a schema that can only recurse forever
        (`{"$ref": "#"}` as a required property) fails here, before any request is admitted."""
        matcher = llguidance.LLMatcher(self.tokenizer, grammar)
        forced = matcher.compute_ff_tokens()
        if not matcher.is_error() and forced:
            matcher.consume_tokens(forced)
        if matcher.is_error():
            raise SchemaError(f"the grammar engine cannot follow this schema: {first_line(matcher.get_error())}")

    def json_object(self) -> Grammar:
        """Any JSON object (OpenAI's `json_object` mode)."""
        return self.json_schema({"type": "object"})
