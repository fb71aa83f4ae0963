"""The always-closing guarantee: a structured answer parses and validates even when max_tokens runs
out. Through the real server with random weights (only the constraint can make the JSON valid),
and for grammars beyond the server's JSON, against an adversary picking the tokens."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import llguidance
import numpy as np
import pytest
from transformers import AutoTokenizer

from holo_mlx.constrain import JSON_OPTIONS, Grammars
from test_server import error_of
from test_structured import FORM, assert_valid, response_format

# Strict schemas whose integers, numbers, strings and arrays are unbounded: left alone, random
# weights write until max_tokens and the JSON does not parse.
INTEGER_AND_STRING = {"type": "object", "properties": {"x": {"type": "integer"}, "s": {"type": "string"}},
                      "required": ["x", "s"], "additionalProperties": False}
ARRAYS = {"type": "object",
          "properties": {"values": {"type": "array", "items": {"type": "number"}},
                         "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["values", "tags"], "additionalProperties": False}


def strict_object(properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


NESTED = strict_object({"items": {"type": "array", "items": strict_object({
                            "a": {"type": "string"}, "b": {"type": "number"},
                            "c": {"type": "array", "items": {"type": "integer"}}})},
                        "o": strict_object({"p": strict_object({"q": {"type": "string"}})})})
# An array item of twelve required fields takes some 85 tokens: one token (`[{"`) opens more than
# max_tokens=80 can close, while the shortest answer (`{"rows": []}`) is 5 tokens.
WIDE_ROWS = strict_object({"rows": {"type": "array",
                                    "items": strict_object({f"f{i}": {"type": "integer"} for i in range(12)})}})
SEEDS = range(8)


@pytest.fixture(scope="module")
def grammars(hf_root_checkpoint):
    """Grammars as the server builds them, for the shortest answers the server compares with max_tokens."""
    config = json.loads((hf_root_checkpoint / "config.json").read_text())
    eos = config["eos_token_id"]
    return Grammars(AutoTokenizer.from_pretrained(hf_root_checkpoint), config["vocab_size"],
                    set(eos if isinstance(eos, list) else [eos]))


@pytest.fixture(scope="module")
def opening(grammars) -> list[np.ndarray]:
    """The tokens that end a string and open a value (`":[{"`), then all those with a `{` or `[`."""
    pieces = [grammars.hf_tokenizer.decode([t]) for t in range(grammars.vocab_size)]
    return [np.array([bool(re.search(pattern, piece, re.DOTALL)) for piece in pieces])
            for pattern in (r'".*[{\[]', r"[{\[]")]


def ask_many(client, schema: dict, max_tokens: int, seeds=SEEDS, **kwargs) -> list:
    """Sampled answers (temperature 1), one per seed, decoded together in the batch."""
    def ask(seed: int):
        return client.chat.completions.create(
            model="holo-tiny", messages=[{"role": "user", "content": f"Fill the form ({seed})."}],
            max_tokens=max_tokens, temperature=1.0, seed=seed, response_format=response_format(schema), **kwargs)

    with ThreadPoolExecutor(len(seeds)) as pool:
        return list(pool.map(ask, seeds))


@pytest.mark.parametrize("schema, budgets", [(INTEGER_AND_STRING, (12, 20, 40)), (ARRAYS, (12, 20, 40)),
                                             (NESTED, (20, 40))], ids=["integer-string", "arrays", "nested"])
def test_every_answer_parses_and_validates_within_max_tokens(client, schema, budgets):
    for max_tokens in budgets:
        responses = ask_many(client, schema, max_tokens)
        for response in responses:
            choice = response.choices[0]
            assert response.usage.completion_tokens <= max_tokens
            assert_valid(choice.message.content, schema)
        finishes = [r.choices[0].finish_reason for r in responses]
        assert "length" in finishes, finishes  # the budget did close answers early, and said so
    assert len({r.choices[0].message.content for r in responses}) > 1  # at 40 tokens, not all the shortest answer


def test_an_item_that_cannot_close_in_time_is_never_opened(client):
    # Far from the end, one token opening an item with twelve required fields is checked too.
    for response in ask_many(client, WIDE_ROWS, 80):
        assert response.usage.completion_tokens <= 80
        assert_valid(response.choices[0].message.content, WIDE_ROWS)


def test_streamed_answers_close_too(client):
    for max_tokens in (20, 40):
        for seed in range(4):
            chunks = list(client.chat.completions.create(
                model="holo-tiny", messages=[{"role": "user", "content": "Stream it."}], max_tokens=max_tokens,
                temperature=1.0, seed=seed, stream=True, response_format=response_format(NESTED)))
            content = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices[0].delta.content]
            assert len(content) <= max_tokens
            assert chunks[-1].choices[0].finish_reason in ("stop", "length")
            assert_valid("".join(content), NESTED)


def test_finish_reason_is_length_when_the_budget_closed_the_answer(client, grammars):
    # One token more than the shortest answer: the answer is forced shut and the end fits, yet it
    # was cut short, as an answer that ran into max_tokens is.
    shortest = grammars.json_schema(INTEGER_AND_STRING).shortest_answer_tokens()
    for response in ask_many(client, INTEGER_AND_STRING, shortest + 1, seeds=range(3)):
        assert response.choices[0].finish_reason == "length"
        assert response.usage.completion_tokens == shortest + 1  # its end-of-sequence came within the budget
        assert_valid(response.choices[0].message.content, INTEGER_AND_STRING)
    # An answer that ends on its own, with tokens to spare, still says "stop".
    for response in ask_many(client, FORM, 200, seeds=range(3)):
        assert response.choices[0].finish_reason == "stop"
        assert response.usage.completion_tokens < 200


def test_max_tokens_below_the_shortest_answer_is_refused(server, client, grammars):
    shortest = grammars.json_schema(FORM).shortest_answer_tokens()
    body = {"messages": [{"role": "user", "content": "hi"}], "response_format": response_format(FORM)}
    refused = server.post("/v1/chat/completions", {**body, "max_tokens": shortest - 1})
    assert refused.status_code == 400, refused.text
    error = error_of(refused)
    assert error["param"] == "max_tokens" and str(shortest) in error["message"]
    completion = server.post("/v1/completions", {"prompt": "a", "max_tokens": shortest - 1, "guided_json": FORM})
    assert completion.status_code == 400 and error_of(completion)["param"] == "max_tokens"
    # Exactly enough: the shortest answer itself, complete.
    response = client.chat.completions.create(model="holo-tiny", messages=body["messages"], max_tokens=shortest,
                                              temperature=1.0, response_format=response_format(FORM))
    assert response.choices[0].finish_reason == "length"
    assert_valid(response.choices[0].message.content, FORM)


# Beyond the server's JSON: tool calls between special tokens, as the tools grammar writes them,
# and JSON with free whitespace, whose tokens can end a key and open an array item at once (`":[{"`).
CALL = strict_object({"name": {"const": "click"}, "arguments": strict_object({"x": {"type": "integer"},
                                                                             "label": {"type": "string"}})})
CALLS = (f'start: call ("\\n" call)*\n'
         f'call: <[151657]> "\\n" body "\\n" <[151658]>\n'  # <tool_call>, </tool_call>
         f'body: %json {json.dumps({**CALL, "x-guidance": JSON_OPTIONS})}\n')
ROWS_BY_NAME = {"type": "object", "additionalProperties": {
    "type": "array", "items": strict_object({f"f{i}": {"type": "integer"} for i in range(6)})}}


def calls_valid(text: str) -> None:
    assert re.fullmatch(r"<tool_call>\n.*?\n</tool_call>(\n<tool_call>\n.*?\n</tool_call>)*", text, re.DOTALL), text
    for body in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, re.DOTALL):
        jsonschema.validate(json.loads(body), CALL)


@pytest.mark.parametrize("grammar, valid", [
    (lambda grammars: grammars.json_schema(WIDE_ROWS), lambda text: assert_valid(text, WIDE_ROWS)),
    (lambda grammars: grammars.lark(llguidance.LLMatcher.grammar_from_json_schema(ROWS_BY_NAME)),
     lambda text: assert_valid(text, ROWS_BY_NAME)),
    (lambda grammars: grammars.lark(CALLS), calls_valid),
], ids=["wide-rows", "free-whitespace", "tool-calls"])
def test_whatever_allowed_tokens_are_picked_the_answer_closes(grammars, opening, grammar, valid):
    """An adversary for the mask: each token drawn among the allowed ones, mostly among those that
    open something (`{`, `[`), best after ending a string, as a model fond of structure would."""
    grammar, tokenizer = grammar(grammars), grammars.hf_tokenizer
    end = set(grammars.eos_token_ids)
    rng = np.random.default_rng(0)
    shortest = grammar.shortest_answer_tokens()
    for max_tokens in (shortest, shortest + 8, shortest + 20, 64, 96):
        for _ in range(5):
            constraint, tokens = grammar.constraint(), []
            while len(tokens) < max_tokens:
                allowed = np.array(constraint.allowed(max_tokens - len(tokens)))
                pool = allowed
                for preferred in opening:  # each kind, when allowed, taken 7 times in 10
                    if (allowed & preferred).any() and rng.random() < 0.7:
                        pool = allowed & preferred
                        break
                token = int(rng.choice(np.flatnonzero(pool)))
                constraint.advance(token)
                if token in end:
                    break
                tokens.append(token)
            valid(tokenizer.decode(tokens))
