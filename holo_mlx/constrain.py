"""Structured output: JSON schemas enforced token by token during decoding, with llguidance.

A schema becomes a grammar over the model's own tokens. Before each token, the grammar says which
tokens may come next and everything else is masked out of the logits, so the answer parses and
validates whatever the weights are. End-of-sequence is allowed only where the grammar may end,
and it is the only choice once the grammar is complete: a finished answer always stops.

The answer also always ends within max_tokens (the always-closing guarantee). A fixed closing
policy (Closer) gives, from any grammar state, a way to the end of the grammar; each request keeps
such a closing path and its length in tokens. Far from the end of the budget nothing changes.
Near it, a token is let through only if the answer can still close in the tokens left after it,
and once little is left the mask follows the closing path exactly.

llguidance (also mlx-vlm's engine) won over xgrammar and outlines-core on this tokenizer:
docs/agents.md gives the measurements.
"""

import json
import re
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

# What one token may add to the tokens a closing path needs. A plain token (letters, digits,
# spaces, non-ASCII bytes) opens nothing in JSON: at most it splits a UTF-8 character (up to 3
# continuation bytes) or starts an exponent that needs its digit. Nor, inside free text (a JSON
# string), does a token that is not RISKY: it writes text, or ends it the way the closing path does.
PLAIN_BYTES = bytes(byte for byte in range(256) if byte >= 0x80 or chr(byte).isalnum() or byte == 0x20)
PLAIN_REACH = 4
RISKY = re.compile(rb'".*[\[{]', re.DOTALL)  # ends a string and opens a value: `":[{"`, `"},{"`
# Other tokens (`[{"`, ` {"`, a special token) can open several levels and their required keys:
# within REACH spare tokens of the end each allowed one is checked, and masked if no closing would
# fit after it. Farther away one token is trusted to add less than REACH (an array item of some 40
# required fields opened at once); a request that sees one add more raises its own reach to match.
REACH = 128
CHECKED = 64  # kinds of tokens checked per step (more are masked); more spaces allowed: they are free
SHORTEST_LIMIT = 1024  # longest shortest answer looked for (a longer one has no guarantee)

CLOSING_BYTES = b'"}]'
# After the closers, `,` (which ends a number before the next key) and `:` (where spaces may come
# before it, as in grammars without JSON_OPTIONS): the cheapest values, also after the space of
# JSON_OPTIONS' `": ` (tokens like ` []` carry it), then openers; a lone space (no progress where
# spaces are free) and `-` (for numbers that must be negative) last.
VALUES = ["0", '""', "[]", "{}", "null", "false", "true"]
CHEAP_VALUES = [*VALUES, *(" " + value for value in VALUES), "[", "{", " [", " {", " ", "-", " -"]
TEXT_PROBE = " the"  # a token allowed only inside free text (a JSON string's content)


class SchemaError(ValueError):
    """The schema is not valid JSON Schema, or uses something the grammar engine does not support."""


def first_line(message: str) -> str:
    """llguidance's errors carry a dump of the parser state after the first line."""
    return message.strip().splitlines()[0] if message.strip() else "unknown grammar error"


def mask_of(matcher: llguidance.LLMatcher, vocab_size: int) -> np.ndarray:
    """The tokens the matcher allows next, as bools over the vocabulary."""
    words = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)  # bit i of word j: token 32 * j + i
    return np.unpackbits(words, bitorder="little")[:vocab_size].astype(bool)


class Closer:
    """The closing policy over one tokenizer's vocabulary: from a grammar state, forced tokens as
    they come, otherwise the first token in a fixed order (closers `"]}` longest first, `,`, the
    cheapest values, then the shortest tokens) that leaves no free text open. Deterministic: the
    same state always gets the same path."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, vocab_size: int, eos_token_ids: list[int]):
        self.vocab_size, self.eos, self.end = vocab_size, eos_token_ids, tokenizer.eos_token
        self.pieces = [tokenizer.decode_bytes([t]) for t in range(vocab_size)]
        special = np.array([tokenizer.is_special_token(t) for t in range(vocab_size)])
        self.single = {piece[0]: t for t, piece in reversed(list(enumerate(self.pieces)))
                       if len(piece) == 1 and not special[t]}
        # `]` and `}` before `"` at equal length: close the object rather than open a key.
        closers = sorted((t for t, piece in enumerate(self.pieces)
                          if piece and not special[t] and not piece.strip(CLOSING_BYTES)),
                         key=lambda t: (-len(self.pieces[t]), self.pieces[t].replace(b'"', b"\x7f")))
        values = [tokens[0] for tokens in map(tokenizer.tokenize_str, [",", ":", *CHEAP_VALUES]) if len(tokens) == 1]
        self.candidates = closers + values
        # The fallback's order: the candidates, then the other tokens by length.
        lengths = np.array([len(piece) for piece in self.pieces], dtype=np.int64)
        key = lengths * vocab_size + np.arange(vocab_size)
        key[special | (lengths == 0)] += vocab_size * (lengths.max() + 1)
        key[self.candidates] = np.arange(len(self.candidates)) - len(self.candidates)
        by_order = np.argsort(key)
        self.rank = np.empty(vocab_size, dtype=np.int64)
        self.rank[by_order] = np.arange(vocab_size)
        [self.probe] = tokenizer.tokenize_str(TEXT_PROBE)
        self.plain = np.array([bool(piece) and not piece.strip(PLAIN_BYTES) for piece in self.pieces]) & ~special
        self.not_end = np.ones(vocab_size, dtype=bool)
        self.not_end[eos_token_ids] = False
        self.unplain = ~self.plain & self.not_end & (lengths > 0)
        self.risky = np.array([RISKY.search(piece) is not None for piece in self.pieces]) | special
        self.blank = np.array([not piece.strip(b" \t\n\r") for piece in self.pieces]) & self.unplain
        # A non-plain token's kind: itself less the plain bytes it ends with (` "abc` -> ` "`).
        kinds: dict[bytes, int] = {}
        self.kind = np.array([kinds.setdefault(piece.rstrip(PLAIN_BYTES), len(kinds)) for piece in self.pieces])
        self.lengths = lengths

    def path(self, matcher: llguidance.LLMatcher, limit: int, known: list[int] = (),
             ends: tuple[tuple[int, ...], ...] = ()) -> list[int] | None:
        """The policy's tokens from the matcher's state to where the grammar may end (end-of-sequence
        not included); None when they would be more than `limit`. With `known`, a closing path from
        a state just before, it ends as soon as `known`, or `known` but its first token, closes: a
        detour (a string opened and closed) costs only the detour. `ends`: the grammar's own ways out
        of free text (Grammar.text_ends), tried first there."""
        matcher, path, forced = matcher.deep_copy(), [], False
        while not matcher.is_accepting():
            for rest in (known, known[1:]) if known and not forced else ():
                if len(path) + len(rest) <= limit and self.closes(matcher, rest):
                    return path + rest
            step = matcher.compute_ff_tokens()
            forced = bool(step)  # forced tokens (a required key) do not end a detour
            step = step or self._step(matcher, ends)
            if step is None or len(path) + len(step) > limit or not matcher.consume_tokens(step):
                return None
            path += step
        return path

    def closes(self, matcher: llguidance.LLMatcher, path: list[int], first: list[int] = ()) -> bool:
        """Whether `first`, then `path`, then end-of-sequence are valid from the matcher's state."""
        return matcher.validate_tokens([*first, *path, self.end]) == len(first) + len(path) + 1

    def to_check(self, matcher: llguidance.LLMatcher, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The allowed non-plain tokens whose closing is checked: (the tokens, the shortest allowed
        token of each kind, shortest first, and each token's kind as an index into those). In free
        text only the risky ones; spaces only where few are allowed."""
        tokens = allowed & self.unplain
        if self._in_text(matcher):
            tokens &= self.risky
        elif np.count_nonzero(tokens & self.blank) > CHECKED:
            tokens &= ~self.blank
        tokens = np.flatnonzero(tokens)
        tokens = tokens[np.argsort(self.lengths[tokens], kind="stable")]
        _, first, kind_of = np.unique(self.kind[tokens], return_index=True, return_inverse=True)
        by_length = np.argsort(first)  # the kinds in the order of their shortest tokens
        renumbered = np.empty_like(by_length)
        renumbered[by_length] = np.arange(len(by_length))
        return tokens, tokens[first[by_length]], renumbered[kind_of]

    def _step(self, matcher: llguidance.LLMatcher, ends: tuple[tuple[int, ...], ...] = ()) -> list[int] | None:
        if ends and self._in_text(matcher):
            for end in ends:  # one token at a time cannot leave text whose end is several tokens long
                if matcher.validate_tokens(list(end)) == len(end) and not self._in_text(self._then(matcher, *end)):
                    return list(end)
        choice = self._best(matcher, (t for t in self.candidates if matcher.validate_tokens([t]) == 1))
        if choice is None:  # no preferred token fits (an enum's letters, a pattern, a split character)
            allowed = np.flatnonzero(mask_of(matcher, self.vocab_size) & self.not_end)
            if len(allowed) > 16:
                allowed = allowed[np.argpartition(self.rank[allowed], 16)[:16]]
            choice = self._best(matcher, sorted(allowed.tolist(), key=self.rank.__getitem__))
        return None if choice is None else [choice]

    def _best(self, matcher: llguidance.LLMatcher, tokens) -> int | None:
        """The first of the allowed `tokens` that leaves no free text open, nor opens it with its
        first byte (`"}` closes a string, `}}"` writes `}}` into it first), else the least bad."""
        best, opens = None, {}  # opens: first byte -> free text open after it
        for token in tokens:
            piece = self.pieces[token]
            start = self.single.get(piece[0]) if len(piece) > 1 else None
            if start is not None and piece[0] not in opens:
                opens[piece[0]] = self._in_text(self._then(matcher, start))
            opened = opens.get(piece[0]) if start is not None else None
            if best is not None and (False, bool(opened)) >= best[0]:
                continue  # cannot do better than the best so far
            after = self._in_text(self._then(matcher, token))
            score = (after, after if opened is None else opened)
            if score == (False, False):
                return token
            if best is None or score < best[0]:
                best = (score, token)
        return None if best is None else best[1]

    @staticmethod
    def _then(matcher: llguidance.LLMatcher, *tokens: int) -> llguidance.LLMatcher:
        after = matcher.deep_copy()
        after.consume_tokens(list(tokens))
        return after

    def _in_text(self, matcher: llguidance.LLMatcher) -> bool:
        return not matcher.is_accepting() and matcher.validate_tokens([self.probe]) == 1


class JsonConstraint:
    """One request's grammar state (engine.sampling.Constraint): a mask before each token, then the token.

    Given the tokens left (allowed's `remaining`), it keeps the answer closable within them: it
    holds a closing path from the current state, whose head is always allowed, masks the tokens
    after which no closing would fit (see REACH), and follows the path alone once fewer than
    PLAIN_REACH tokens are spare."""

    def __init__(self, grammar: "Grammar"):
        grammars = grammar.grammars
        self.matcher = llguidance.LLMatcher(grammars.tokenizer, grammar.text)
        self.words = llguidance.numpy.allocate_token_bitmask(1, grammars.vocab_size)
        self.vocab_size, self.closer, self.ends = grammars.vocab_size, grammars.closer, grammar.text_ends
        self.path = list(grammar.shortest) if grammar.shortest is not None else None
        self.growth = 0  # the most the tokens since self.path was last checked can have added to it
        self.reach = REACH
        self.checked: dict[int, list[int]] = {}  # this step's checked tokens -> the closing path after each
        self.closed_early = False  # the budget overrode the grammar's choice: finish_reason "length"

    def allowed(self, remaining: int | None = None) -> mx.array:
        llguidance.numpy.fill_next_token_bitmask(self.matcher, self.words)
        # Bit i of word j allows token 32 * j + i.
        bits = np.unpackbits(self.words.view(np.uint8), bitorder="little")[: self.vocab_size].astype(bool)
        self.checked = {}
        if remaining is not None and self.path is not None:
            bits = self._fitting(bits, remaining)
        return mx.array(bits)

    def _fitting(self, bits: np.ndarray, remaining: int) -> np.ndarray:
        """The tokens of `bits` after which the answer can still close in the remaining - 1 tokens."""
        if remaining - 1 - len(self.path) - self.growth >= self.reach:
            return bits  # far from the end whatever the tokens since the last check added: no work
        if self.growth and not self.closer.closes(self.matcher, self.path):
            known, self.path = len(self.path), self.closer.path(self.matcher, remaining, known=self.path, ends=self.ends)
            if self.path is None:  # a token added more than its reach: no closing fits, the grammar alone
                return bits
            self.reach = max(self.reach, len(self.path) - known)
        self.growth = 0
        spare = remaining - 1 - len(self.path)
        if spare >= self.reach:
            return bits
        head = np.zeros_like(bits)
        if self.path:
            head[self.path[0]] = True
        else:
            head[self.closer.eos] = bits[self.closer.eos]
        if spare < PLAIN_REACH:
            self.closed_early = self.closed_early or np.count_nonzero(bits) > np.count_nonzero(head)
            return head
        # A token of a kind fits if its kind's shortest one closes with PLAIN_REACH tokens to spare:
        # they differ by plain bytes. Kinds past the CHECKED shortest are masked unchecked.
        tokens, leaders, kind_of = self.closer.to_check(self.matcher, bits)
        fits = np.zeros(len(leaders), dtype=bool)
        for number, leader in enumerate(leaders[:CHECKED].tolist()):
            path = self._after(leader, remaining - 1)
            if path is not None:
                self.checked[leader] = path
                fits[number] = len(path) + PLAIN_REACH <= remaining - 1
        keep = bits.copy()
        keep[tokens] = fits[kind_of]
        keep[list(self.checked)] = True
        return keep | head

    def _after(self, token: int, limit: int) -> list[int] | None:
        """A closing path of at most `limit` tokens after `token`: the current one when the token
        left it valid (text inside a string), else the policy's back to it."""
        after = self.matcher.deep_copy()
        after.consume_token(token)
        return self.closer.path(after, limit, known=self.path, ends=self.ends)

    def advance(self, token: int) -> None:
        # Once the grammar has stopped (its end-of-sequence was sampled), later tokens are past the
        # end of the answer: single-request decoding computes one step ahead.
        if self.matcher.is_stopped():
            return
        if not self.matcher.consume_token(token):
            raise SchemaError(f"the grammar engine cannot follow this schema: {first_line(self.matcher.get_error())}")
        if self.path is None:
            return
        if token in self.checked:
            self.path = self.checked[token]
        elif not self.growth and self.path and token == self.path[0]:
            self.path = self.path[1:]
        else:
            self.growth += PLAIN_REACH if self.closer.plain[token] else self.reach


@dataclass(frozen=True)
class Grammar:
    """A compiled schema; each request that uses it needs its own constraint()."""

    text: str
    grammars: "Grammars"
    shortest: tuple[int, ...] | None = None  # the closing policy's answer from the start; None: none found
    text_ends: tuple[tuple[int, ...], ...] = ()  # tokens of texts that end the grammar's free text (lark's)

    def constraint(self) -> JsonConstraint:
        return JsonConstraint(self)

    def shortest_answer_tokens(self) -> int | None:
        """Tokens of the shortest answer found (end-of-sequence not counted): with fewer max_tokens
        no valid answer fits. None when the closing policy found none within SHORTEST_LIMIT."""
        return None if self.shortest is None else len(self.shortest)


class Grammars:
    """Compiles JSON schemas against one model's tokenizer."""

    def __init__(self, hf_tokenizer, vocab_size: int, eos_token_ids: set[int]):
        self.hf_tokenizer, self.vocab_size = hf_tokenizer, vocab_size
        self.eos_token_ids = sorted(eos_token_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._closer: Closer | None = None
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

    @property
    def closer(self) -> Closer:
        """Built on first use, from the tokenizer."""
        tokenizer = self.tokenizer
        with self._lock:
            if self._closer is None:
                self._closer = Closer(tokenizer, self.vocab_size, self.eos_token_ids)
            return self._closer

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
        return self.lark(text)

    def lark(self, text: str, text_ends: tuple[str, ...] = ()) -> Grammar:
        """Grammar for llguidance's Lark-like syntax (JSON schemas inline as `%json {...}`, with
        JSON_OPTIONS under "x-guidance" for the same spacing); SchemaError when unusable. `text_ends`:
        the texts that end its free text where that is no JSON string (whose `"` the closing policy
        knows), which the closing policy then writes to close it."""
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(text, self.tokenizer)
        if is_error:
            raise SchemaError(messages[0])
        matcher = llguidance.LLMatcher(self.tokenizer, text)
        self._probe(matcher.deep_copy())
        ends = tuple(tuple(self.tokenizer.tokenize_str(end)) for end in text_ends)
        shortest = self.closer.path(matcher, SHORTEST_LIMIT, ends=ends)
        return Grammar(text, self, None if shortest is None else tuple(shortest), ends)

    @staticmethod
    def _probe(matcher: llguidance.LLMatcher) -> None:
        """Walk the grammar's forced opening, as decoding will: a schema that can only recurse forever
        (`{"$ref": "#"}` as a required property) fails here, before any request is admitted."""
        forced = matcher.compute_ff_tokens()
        if not matcher.is_error() and forced:
            matcher.consume_tokens(forced)
        if matcher.is_error():
            raise SchemaError(f"the grammar engine cannot follow this schema: {first_line(matcher.get_error())}")

    def json_object(self) -> Grammar:
        """Any JSON object (OpenAI's `json_object` mode)."""
        return self.json_schema({"type": "object"})
