"""Presence, frequency and repetition penalties and logit bias: the engine (pipelined: step N+1 is
queued before the host reads token N) against a greedy reference computed one token at a time,
batched rows against their runs alone, and the server's fields through the openai client."""

import mlx.core as mx
import numpy as np
import openai
import pytest

from holo_mlx import load
from holo_mlx.engine.sampling import SamplingParams, TokenChooser, choose
from holo_mlx.generate import prompt_logits
from holo_mlx.prompt import Prompt, load_tokenizer
from holo_mlx.testing import synthetic_screenshot
from test_scheduler import run_batched, sequential, tokens, user


STEPS = 12
REPEATED = 23824  # the token the random-weight model repeats greedily
VOCAB = 152064  # Qwen2.5-VL's, which the tiny checkpoint keeps


@pytest.fixture(scope="module")
def loaded(hf_root_checkpoint):
    return load(hf_root_checkpoint)


def prompt_for(loaded, text, image=None):
    return loaded[1].build(user(text, image))


def greedy(loaded, prompt, **adjustments) -> list[int]:
    return tokens(sequential(loaded, prompt, SamplingParams(max_tokens=STEPS, ignore_eos=True, **adjustments)))


def reference(loaded, prompt, **adjustments) -> list[int]:
    """Greedy decoding outside the engine: each step a fresh prefill of the prompt and the tokens so
    far, the model's last logits adjusted by vLLM's formulas in numpy (float32), then argmax."""
    model, _ = loaded
    params = SamplingParams(**adjustments)
    output: list[int] = []
    for _ in range(STEPS):
        logits = np.array(prompt_logits(model, Prompt(prompt.input_ids + output, prompt.images)))
        for token, bias in params.logit_bias.items():
            logits[token] += np.float32(bias)
        counts = np.bincount(np.array(output, dtype=np.int64), minlength=logits.shape[0]).astype(np.float32)
        repeated = counts > 0
        repeated[prompt.input_ids] = True
        penalty = np.float32(params.repetition_penalty)
        logits = np.where(repeated, np.where(logits > 0, logits / penalty, logits * penalty), logits)
        frequency, presence = np.float32(params.frequency_penalty), np.float32(params.presence_penalty)
        logits = logits - frequency * counts - presence * (counts > 0)
        output.append(int(np.argmax(logits)))
    return output


# --- engine ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("adjustments", [
    {"frequency_penalty": 0.1},  # small: the token repeats a few times before its count outweighs the rest
    {"presence_penalty": 1.5},
    {"frequency_penalty": 0.6, "presence_penalty": 0.4},
])
def test_frequency_and_presence_penalties_equal_the_reference(loaded, adjustments):
    prompt = prompt_for(loaded, "Count to three.")
    plain = greedy(loaded, prompt)
    assert plain.count(REPEATED) > STEPS // 2  # greedy output repeats itself
    penalized = greedy(loaded, prompt, **adjustments)
    assert penalized != plain
    assert penalized == reference(loaded, prompt, **adjustments)


def test_repetition_penalty_covers_the_prompt_and_equals_the_reference(loaded):
    # The model's first two greedy tokens written into the prompt (token ids, as /v1/completions
    # takes them): only the prompt can penalize the first token generated.
    base = prompt_for(loaded, "Count to three.")
    favourites = greedy(loaded, base)[:2]
    prompt = Prompt(base.input_ids[:-5] + favourites + base.input_ids[-5:], [])
    plain = greedy(loaded, prompt)
    assert plain[:2] == favourites
    penalized = greedy(loaded, prompt, repetition_penalty=1.3)
    assert penalized[0] != plain[0]
    assert penalized == reference(loaded, prompt, repetition_penalty=1.3)


def test_repetition_penalty_divides_positive_logits_and_multiplies_negative_ones():
    # Token 0 was in the prompt: 2.0 / 2 = 1.0 falls below token 2's 1.5, -1.0 * 2 = -2.0 below token 3's -1.5.
    params = SamplingParams(repetition_penalty=2.0)
    choosers = [TokenChooser(params, set(), 4, prompt_ids=[0]) for _ in range(2)]
    logits = mx.array([[2.0, -9.0, 1.5, -9.0], [-1.0, -9.0, -9.0, -1.5]])
    assert choose(logits, choosers, [None, None]).tokens.tolist() == [2, 3]
    # Each chosen token now counts as output: the second step penalizes it as well.
    assert choose(logits, choosers, [None, None]).tokens.tolist() == [0, 0]


def test_logit_bias_forces_or_removes_a_token(loaded):
    prompt = prompt_for(loaded, "Where is OK?")
    forced = 4000
    assert greedy(loaded, prompt, logit_bias={forced: 100.0}) == [forced] * STEPS
    plain = greedy(loaded, prompt)
    banned = {token: -100.0 for token in set(plain)}
    without = greedy(loaded, prompt, logit_bias=banned)
    assert not set(without) & set(plain)
    assert without == reference(loaded, prompt, logit_bias=banned)


def test_log_probabilities_stay_the_models(loaded):
    # A +100 bias picks a token the model finds unlikely; its reported log-probability is the model's.
    model, _ = loaded
    prompt = prompt_for(loaded, "Where is OK?")
    chunks = sequential(loaded, prompt, SamplingParams(max_tokens=1, logprobs=2, logit_bias={4000: 100.0}))
    logits = prompt_logits(model, prompt)
    expected = (logits - mx.logsumexp(logits))[4000].item()
    assert chunks[0].token == 4000 and chunks[0].logprob.logprob == pytest.approx(expected, abs=1e-4)
    assert chunks[0].logprob.top[0][0] == int(mx.argmax(logits).item())


@pytest.mark.parametrize("stagger", [0, 3])
def test_penalized_and_plain_rows_of_a_batch_equal_their_runs_alone(loaded, stagger):
    screenshot = synthetic_screenshot(300, 200, 5)
    requests = [
        (prompt_for(loaded, "Count to three."), SamplingParams(max_tokens=STEPS, ignore_eos=True)),
        (prompt_for(loaded, "Count to three."),
         SamplingParams(max_tokens=STEPS, ignore_eos=True, frequency_penalty=1.0, presence_penalty=0.5)),
        (prompt_for(loaded, "Describe.", screenshot), SamplingParams(max_tokens=STEPS, ignore_eos=True,
                                                                     repetition_penalty=1.6)),
        (prompt_for(loaded, "Describe.", screenshot), SamplingParams(max_tokens=STEPS, ignore_eos=True)),
        (prompt_for(loaded, "Where is OK?"),
         SamplingParams(max_tokens=STEPS, ignore_eos=True, logit_bias={REPEATED: -100.0, 4000: 5.0})),
        (prompt_for(loaded, "Say hello."), SamplingParams(max_tokens=STEPS, ignore_eos=True, temperature=0.9,
                                                          top_p=0.95, seed=3, logit_bias={4000: 10.0},
                                                          frequency_penalty=2.0)),
        (prompt_for(loaded, "Say hello."), SamplingParams(max_tokens=STEPS, ignore_eos=True, temperature=0.9,
                                                          top_p=0.95, seed=3)),
    ]
    batched, _, _ = run_batched(loaded, requests, stagger=stagger)
    alone = [tokens(sequential(loaded, prompt, params)) for prompt, params in requests]
    assert [tokens(chunks) for chunks in batched] == alone
    # The penalized rows and their plain neighbours differ: a penalty leaking across rows would show.
    assert alone[0] != alone[1] and alone[2] != alone[3] and alone[5] != alone[6]


def test_a_seeded_top_p_row_of_bfloat16_logits_ignores_a_penalized_batch_mate():
    # Penalized scores are float32 (bfloat16 would round a small penalty away); a top-p row is
    # normalized in float32 as well, so a penalized batch-mate does not change its draws.
    sampled = SamplingParams(temperature=1.0, top_p=0.9, seed=11)
    penalized = SamplingParams(frequency_penalty=0.5)
    vocab, rng = 2000, np.random.default_rng(0)
    alone, beside = TokenChooser(sampled, set(), vocab), [TokenChooser(sampled, set(), vocab),
                                                          TokenChooser(penalized, set(), vocab)]
    for _ in range(200):  # without the float32 normalization a few of these draws differ
        logits = mx.array(rng.standard_normal((2, vocab))).astype(mx.bfloat16)
        batched = choose(logits, beside, [None, None]).tokens[0].item()
        assert choose(logits[:1], [alone], [None]).tokens.item() == batched


# --- server ----------------------------------------------------------------------------------------

def chat_tokens(client, **fields) -> list[str]:
    fields.setdefault("extra_body", {"ignore_eos": True})
    response = client.chat.completions.create(
        model="holo-tiny", messages=[{"role": "user", "content": "Count to three."}], max_tokens=STEPS,
        temperature=0, logprobs=True, **fields)
    return [entry.token for entry in response.choices[0].logprobs.content]


def most_repeats(answer: list[str]) -> int:
    return max(answer.count(token) for token in answer)


@pytest.mark.parametrize("fields", [{"frequency_penalty": 1.0}, {"extra_body": {"ignore_eos": True,
                                                                                "repetition_penalty": 1.6}}])
def test_penalties_break_a_repeating_answer(client, fields):
    plain = chat_tokens(client)
    assert most_repeats(plain) >= STEPS // 2  # one token over and over
    assert most_repeats(chat_tokens(client, **fields)) < most_repeats(plain)
    assert chat_tokens(client, presence_penalty=0.0, frequency_penalty=0.0) == plain  # 0: off


def test_completions_logit_bias_forces_a_token(client, hf_root_checkpoint):
    tokenizer = load_tokenizer(hf_root_checkpoint)
    forced = tokenizer.encode(" button")[0]
    response = client.completions.create(model="holo-tiny", prompt="Click the", max_tokens=4, temperature=0,
                                         logit_bias={str(forced): 100}, extra_body={"ignore_eos": True})
    assert response.choices[0].text == tokenizer.decode([forced] * 4)


@pytest.mark.parametrize("fields, param", [
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -2.01}, "frequency_penalty"),
    ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
    ({"extra_body": {"repetition_penalty": -1.2}}, "repetition_penalty"),
    ({"logit_bias": {"hello": 1}}, "logit_bias"),
    ({"logit_bias": {"-5": 1}}, "logit_bias"),
    ({"logit_bias": {str(VOCAB): 1}}, "logit_bias"),  # one past the last token id
    ({"logit_bias": {"5": 100.5}}, "logit_bias"),
    ({"logit_bias": {str(token): 1 for token in range(301)}}, "logit_bias"),
])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_invalid_values_are_400_naming_the_field(client, fields, param, endpoint):
    with pytest.raises(openai.BadRequestError) as raised:
        if endpoint == "chat":
            client.chat.completions.create(model="holo-tiny", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=1, **fields)
        else:
            client.completions.create(model="holo-tiny", prompt="hi", max_tokens=1, **fields)
    assert raised.value.status_code == 400 and raised.value.param == param


def test_the_edges_of_the_ranges_are_accepted(client):
    response = client.chat.completions.create(
        model="holo-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2, presence_penalty=-2,
        frequency_penalty=2, logit_bias={"0": 100, str(VOCAB - 1): -100},
        extra_body={"repetition_penalty": 1e-3})
    assert response.usage.completion_tokens == 2
