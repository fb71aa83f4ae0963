"""A hybrid family (tests/toy_hybrid.py: Gated DeltaNet layers and attention layers) through the
engine, the prefix cache, convert, the server and two ranks, with nothing outside its file and
holo_mlx/models/ knowing it is a hybrid.

The reference is the same weights run in one decoder pass over the whole prompt with no cache,
so a recurrent state that leaked padding, lost a chunk or resumed from the wrong snapshot shows.
"""

import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import toy_hybrid as hybrid
from convert.convert import convert
from holo_mlx import load
from holo_mlx.engine.prepare import PreparedPrompt
from holo_mlx.engine.sampling import SamplingParams
from holo_mlx.models import _FAMILIES, register
from holo_mlx.models.base import Span
from holo_mlx.models.cache import KVLayerCache, RecurrentLayerCache
from holo_mlx.testing import synthetic_screenshot
from test_distributed import launcher
from test_families import InProcessServer
from test_scheduler import run_batched, sequential, tokens
from test_server import Server, data_url

SYSTEM = {"role": "system", "content": "You are a GUI agent on a small screen. " * 4}
WITH_HYBRID = Path(__file__).parent / "with_toy_hybrid.py"


def user(text, image=None):
    content = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, {"type": "image", "image": image})
    return {"role": "user", "content": content}


@pytest.fixture(scope="module")
def hybrid_dir(module_tmp_factory):
    register(hybrid.FAMILY)
    yield hybrid.write_checkpoint(module_tmp_factory("hybrid") / "toy-hybrid")
    _FAMILIES.pop(hybrid.FAMILY.name, None)  # no other module sees it


@pytest.fixture(scope="module")
def loaded(hybrid_dir):
    return load(hybrid_dir)


def common_prefix(first: list[int], second: list[int]) -> int:
    return next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))


def cold_logprobs(model, prompt) -> np.ndarray:
    """Log-probabilities of the token after `prompt` from one decoder pass over it, no cache."""
    embeds, _ = model.embed(prompt.input_ids, model.encode_images(
        [image.pixel_values for image in prompt.images], [image.grid_thw for image in prompt.images])
        if prompt.images else None)
    positions, _ = model.positions(prompt.input_ids, [image.grid_thw for image in prompt.images])
    hidden = model.hidden([Span(embeds, mx.array(positions[:, None]))], last_only=True)[0]
    logits = model.logits(hidden[0, -1]).astype(mx.float32)
    return np.array(logits - mx.logsumexp(logits))


def assert_first_token_is_cold(chunks, model, prompt):
    cold = cold_logprobs(model, prompt)
    first = chunks[0]
    assert first.token == int(np.argmax(cold))
    assert first.logprob.logprob == pytest.approx(float(cold[first.token]), abs=1e-4)
    for token, value in first.logprob.top:
        assert value == pytest.approx(float(cold[token]), abs=1e-4)


def test_its_layers_keep_recurrent_state_and_kv(loaded):
    model, builder = loaded
    kinds = [type(cache) for cache in model.make_cache()]
    assert kinds == [RecurrentLayerCache] * 3 + [KVLayerCache]
    assert builder.mark_message_ends  # the prompt builder marks where messages end, for its snapshots


@pytest.mark.parametrize("stagger", [0, 3])
def test_batched_rows_equal_each_row_alone(loaded, stagger):
    model, builder = loaded
    params = SamplingParams(max_tokens=10, ignore_eos=True, logprobs=3)
    requests = [
        (builder.build([SYSTEM, user("Where is OK?", synthetic_screenshot(96, 64, 1))]), params),
        (builder.build([user("Say hello.")]), SamplingParams(max_tokens=7, ignore_eos=True, logprobs=3)),
        (builder.build([SYSTEM, user("Describe the screen in detail.", synthetic_screenshot(64, 112, 2))]), params),
        (builder.build([user("Count.")]), SamplingParams(max_tokens=12, ignore_eos=True, logprobs=3)),
    ]
    assert len({len(prompt.input_ids) for prompt, _ in requests}) == 4  # rows of different lengths
    batched, _, scheduler = run_batched(loaded, requests, stagger=stagger)
    assert scheduler.stats.steps < sum(params.max_tokens for _, params in requests)  # they did share steps
    for (prompt, params), chunks in zip(requests, batched):
        alone = sequential(loaded, prompt, params)
        assert tokens(chunks) == tokens(alone)
        for row, reference in zip(chunks, alone):
            assert row.logprob.logprob == pytest.approx(reference.logprob.logprob, abs=1e-4)
        assert_first_token_is_cold(chunks, model, prompt)


def test_a_follow_up_turn_resumes_from_the_end_of_the_previous_turn(loaded):
    model, builder = loaded
    params = SamplingParams(max_tokens=4, ignore_eos=True, logprobs=5)
    first_turn = [SYSTEM, user("Open the settings.", synthetic_screenshot(96, 64, 3))]
    first = builder.build(first_turn)
    second = builder.build(first_turn + [{"role": "assistant", "content": "Clicked the gear icon."},
                                         user("Now what?", synthetic_screenshot(96, 64, 4))])
    outputs, sequences, scheduler = run_batched(loaded, [(first, params), (second, params)], max_num_seqs=1,
                                                prefix_bytes=1 << 30)
    # It resumes from the last snapshot of the previous turn within what the two prompts share: the
    # previous prompt's end where the template writes the generation prompt as it writes the
    # answer's turn (the toy's), else the end of the previous turn's last message.
    shared = common_prefix(first.input_ids, second.input_ids)
    stops = [*PreparedPrompt(model, first).boundaries, len(first.input_ids)]
    assert sequences[1].cached_tokens == max(stop for stop in stops if stop <= shared)
    assert sequences[1].cached_tokens >= first.message_ends[-1]  # every earlier message and screenshot
    assert_first_token_is_cold(outputs[1], model, second)
    assert tokens(outputs[1]) == tokens(sequential(loaded, second, params))


def test_a_prompt_diverging_between_two_snapshots_resumes_from_the_earlier(loaded):
    model, builder = loaded
    params = SamplingParams(max_tokens=4, ignore_eos=True, logprobs=5)
    image = synthetic_screenshot(96, 64, 5)
    first = builder.build([SYSTEM, user("Where is the OK button?", image)])
    second = builder.build([SYSTEM, user("Where is the Cancel button?", image)])
    outputs, sequences, _ = run_batched(loaded, [(first, params), (second, params)], max_num_seqs=1,
                                        prefix_bytes=1 << 30)
    shared = common_prefix(first.input_ids, second.input_ids)
    image_end = max(i for i, token in enumerate(second.input_ids) if token == model.config.image_token_id) + 1
    # The two differ after the screenshot but before the message ends: the snapshot at the image's
    # end is the one to resume from (a KV-only model would resume at `shared`).
    assert image_end < shared
    assert sequences[1].cached_tokens == image_end
    assert_first_token_is_cold(outputs[1], model, second)


def test_the_prefix_cache_budget_counts_the_snapshots(loaded):
    _, builder = loaded
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    prompt = builder.build([SYSTEM, user("Hi.", synthetic_screenshot(96, 64, 6)), {"role": "assistant", "content": "Hello."},
                            user("Again.")])
    _, _, scheduler = run_batched(loaded, [(prompt, params)], prefix_bytes=1 << 30)
    (entry, size), = scheduler.prefix_cache.entries.values()
    assert len(entry.boundaries) >= 3  # image end and message ends
    kv_and_final = sum(array.nbytes for snapshot in entry.layers for array in snapshot)
    assert size == scheduler.prefix_cache.bytes > kv_and_final  # the boundary snapshots are counted


def test_it_converts_and_the_folder_generates_the_same(loaded, hybrid_dir, tmp_path):
    model, builder = loaded
    folder = convert(str(hybrid_dir), tmp_path / "mlx", dtype="float32")
    converted = load(folder)
    prompt = builder.build([user("Click OK.", synthetic_screenshot(96, 64, 7))])
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    assert tokens(sequential(converted, prompt, params)) == tokens(sequential(loaded, prompt, params))


# --- served ------------------------------------------------------------------------------------------

SHOT = data_url(synthetic_screenshot(96, 64, seed=8))
CONVERSATION = [{"role": "system", "content": SYSTEM["content"]},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": SHOT}},
                                             {"type": "text", "text": "Open the menu."}]}]


def chat(client, messages, **options):
    return client.chat.completions.create(model="toy", messages=messages, max_tokens=6, temperature=0, **options)


@pytest.mark.server
def test_served_a_follow_up_turn_reports_its_cached_tokens(hybrid_dir):
    server = InProcessServer(hybrid_dir)
    try:
        client = server.client()
        first = chat(client, CONVERSATION)
        follow_up = CONVERSATION + [{"role": "assistant", "content": first.choices[0].message.content},
                                    {"role": "user", "content": "And then?"}]
        second = chat(client, follow_up)
        again = chat(client, follow_up)
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        assert second.usage.prompt_tokens_details.cached_tokens > 0
        assert again.choices[0].message.content == second.choices[0].message.content
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                           chat(client, follow_up, stream=True) if chunk.choices)
        assert streamed == second.choices[0].message.content
    finally:
        server.stop()


@pytest.mark.server
@pytest.mark.distributed
@pytest.mark.slow  # three servers, two of them on two ranks
def test_two_ranks_serve_it_as_one_process_does(hybrid_dir):
    questions = [CONVERSATION, [{"role": "user", "content": "Say hi."}]]
    answers = {}
    for name, launched in (("alone", (sys.executable, str(WITH_HYBRID))),
                           ("tensor", (*launcher(), str(WITH_HYBRID))),
                           ("pipeline", (*launcher(), str(WITH_HYBRID)))):
        flags = ("--pipeline",) if name == "pipeline" else ()
        server = Server("--model", str(hybrid_dir), "--served-model-name", "toy", *flags, launcher=launched)
        try:
            client = server.client()
            answers[name] = [chat(client, messages).choices[0].message.content for messages in questions]
        finally:
            server.stop()
    assert answers["tensor"] == answers["alone"]
    assert answers["pipeline"] == answers["alone"]
