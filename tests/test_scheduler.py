"""Continuous batching and caches against the single-request path, on a tiny checkpoint of each
family (Holo2's DeepStack features ride along with chunks, batches and caches)."""

import mlx.core as mx
import numpy as np
import pytest

from holo_mlx import load
from mlx_lm.models.cache import BatchKVCache, KVCache

from holo_mlx.engine.caches import PrefixCache, VisionCache
from holo_mlx.engine.requests import Sequence
from holo_mlx.engine.scheduler import Scheduler
from holo_mlx.engine.sampling import SamplingParams, TokenChooser, choose
from holo_mlx.generate import prompt_logits, stream_generate
from holo_mlx.models.base import Span
from holo_mlx.models.cache import BatchKVLayerCache
from holo_mlx.runtime import prefill_chunk
from holo_mlx.testing import synthetic_screenshot

SYSTEM = {"role": "system", "content": "You are Holo, a GUI agent. " * 8}


def user(text, image=None):
    content = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, {"type": "image", "image": image})
    return [SYSTEM, {"role": "user", "content": content}]


@pytest.fixture(scope="module", params=["hf_root_checkpoint", "holo2_root_checkpoint", "holo2_moe_root_checkpoint"])
def loaded(request):
    return load(request.getfixturevalue(request.param))


def sequential(loaded, prompt, params):
    model, prompts = loaded
    return list(stream_generate(model, prompts.tokenizer, prompt, params))


def run_batched(loaded, requests, *, max_num_seqs=8, stagger=0, prefix_bytes=0, vision_bytes=0):
    """Run (prompt, params) requests through one scheduler; each `stagger` steps one more joins."""
    model, prompts = loaded
    scheduler = Scheduler(model, prompts.tokenizer, max_num_seqs=max_num_seqs,
                          prefix_cache=PrefixCache(prefix_bytes, min_tokens=1), vision_cache=VisionCache(vision_bytes))
    outputs = [[] for _ in requests]
    sequences = [Sequence(prompt, params, outputs[i].append) for i, (prompt, params) in enumerate(requests)]
    pending = list(sequences)
    steps = 0
    while pending or scheduler.has_work():
        if pending and (stagger == 0 or steps % stagger == 0):
            scheduler.add(pending.pop(0))
            if stagger == 0:
                continue
        scheduler.step()
        steps += 1
    for output in outputs:
        assert output[-1] is None, output[-1]
    return [output[:-1] for output in outputs], sequences, scheduler


def tokens(chunks):
    return [chunk.token for chunk in chunks]


def mixed_requests(loaded):
    _, prompts = loaded
    greedy = SamplingParams(max_tokens=12, ignore_eos=True)
    return [
        (prompts.build(user("Where is the OK button?", synthetic_screenshot(400, 300, 1))), greedy),
        (prompts.build(user("Say hello.")), SamplingParams(max_tokens=7, ignore_eos=True)),
        (prompts.build(user("Describe.", synthetic_screenshot(200, 350, 2))), greedy),
        (prompts.build(user("Count to three.")), SamplingParams(max_tokens=15, ignore_eos=True)),
    ]


@pytest.mark.parametrize("stagger", [0, 3])
def test_batched_greedy_equals_sequential(loaded, stagger):
    requests = mixed_requests(loaded)
    batched, _, _ = run_batched(loaded, requests, stagger=stagger)
    for (prompt, params), chunks in zip(requests, batched):
        alone = sequential(loaded, prompt, params)
        assert tokens(chunks) == tokens(alone)
        assert "".join(c.text for c in chunks) == "".join(c.text for c in alone)
        assert chunks[-1].finish_reason == "length"


def test_a_chunk_boundary_inside_an_image_gives_the_one_pass_logits(loaded):
    """The image's features (and DeepStack input) are cut at the chunk boundary like its tokens."""
    model, prompts = loaded
    prompt = prompts.build(user("Where is Submit?", synthetic_screenshot(1000, 700, 5)))
    ids = np.asarray(prompt.input_ids)
    image = np.flatnonzero(ids == model.config.image_token_id)
    assert image[0] < prefill_chunk() < image[-1]
    features = model.encode_images([prompt.images[0].pixel_values], [prompt.images[0].grid_thw])
    positions, _ = model.positions(prompt.input_ids, [prompt.images[0].grid_thw])
    embeds, deepstack = model.embed(prompt.input_ids, features)
    one_pass = model(embeds, mx.array(positions)[:, None, :], deepstack=deepstack)[0, -1]
    assert mx.abs(prompt_logits(model, prompt) - one_pass).max().item() < 1e-4


def test_one_decoder_pass_over_two_spans_equals_two_passes(loaded):
    model, prompts = loaded
    decoder = model.language_model.model
    spans = []
    for text in ("Click the blue button.", "Where is the search field on this page?"):
        ids = prompts.build(user(text)).input_ids
        positions = mx.broadcast_to(mx.arange(len(ids))[None, None], (3, 1, len(ids)))
        spans.append(lambda ids=ids, positions=positions: Span(model.embed(ids)[0], positions, model.make_cache()))
    together = decoder.forward([make() for make in spans])
    for make, hidden in zip(spans, together):
        alone = decoder.forward([make()])[0]
        assert hidden.shape == alone.shape
        assert mx.abs(hidden - alone).max().item() < 1e-5


def test_last_only_pass_equals_the_last_rows_of_a_full_pass(loaded):
    """Generation's pass skips the final layer's work for all but each sequence's last row: same
    last hidden states and the same KV caches, for a cached span and a batch of two sequences
    under an array mask."""
    model, prompts = loaded
    decoder = model.language_model.model
    first = prompts.build(user("Click the blue button.")).input_ids
    second = prompts.build(user("Where is the search field on this page?")).input_ids
    length = min(len(first), len(second))

    def spans():
        cached = Span(model.embed(second)[0], mx.broadcast_to(mx.arange(len(second))[None, None], (3, 1, len(second))),
                      model.make_cache())
        causal = mx.arange(length)[None, :] <= mx.arange(length)[:, None]  # as an array mask
        pair = Span(mx.concatenate([model.embed(first[:length])[0], model.embed(second[:length])[0]]),
                    mx.broadcast_to(mx.arange(length)[None, None], (3, 2, length)), mask=causal)
        return [cached, pair]

    full_spans, last_spans = spans(), spans()
    full = decoder.forward(full_spans)
    last = decoder.forward(last_spans, last_only=True)
    for whole, part in zip(full, last):
        assert part.shape == (whole.shape[0], 1, whole.shape[2])
        assert mx.abs(whole[:, -1:] - part).max().item() < 1e-5
    for full_layer, last_layer in zip(full_spans[0].cache, last_spans[0].cache):
        assert all(mx.array_equal(a, b).item() for a, b in zip(full_layer.state, last_layer.state))


def test_max_num_seqs_bounds_the_batch(loaded):
    requests = mixed_requests(loaded)
    model, prompts = loaded
    scheduler = Scheduler(model, prompts.tokenizer, max_num_seqs=2)
    outputs = [[] for _ in requests]
    for (prompt, params), output in zip(requests, outputs):
        scheduler.add(Sequence(prompt, params, output.append))
    peak = 0
    while scheduler.has_work():
        scheduler.step()
        peak = max(peak, len(scheduler.running))
    assert peak == 2
    assert all(output[-1] is None for output in outputs)


def test_prefix_cache_hit_gives_the_cold_logits(loaded):
    _, prompts = loaded
    params = SamplingParams(max_tokens=6, ignore_eos=True, logprobs=5)
    image = synthetic_screenshot(400, 300, 1)
    first = prompts.build(user("Where is OK?", image))
    second = prompts.build(user("Where is Cancel?", image))  # same system prompt and screenshot, new question
    warm, sequences, scheduler = run_batched(loaded, [(first, params), (second, params)], max_num_seqs=1,
                                             prefix_bytes=1 << 30)
    assert sequences[0].cached_tokens == 0
    image_end = second.input_ids.index(151653)  # <|vision_end|>
    assert sequences[1].cached_tokens > image_end  # system prompt and screenshot reused
    cold = sequential(loaded, second, params)
    assert tokens(warm[1]) == tokens(cold)
    for hit, reference in zip(warm[1], cold):
        assert hit.logprob.logprob == pytest.approx(reference.logprob.logprob, abs=1e-4)
        np.testing.assert_allclose([v for _, v in hit.logprob.top], [v for _, v in reference.logprob.top], atol=1e-4)


def test_different_screenshots_never_share_kv(loaded):
    _, prompts = loaded
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    first = prompts.build(user("Click OK.", synthetic_screenshot(400, 300, 1)))
    second = prompts.build(user("Click OK.", synthetic_screenshot(400, 300, 7)))
    assert first.input_ids == second.input_ids  # identical placeholder tokens
    warm, sequences, _ = run_batched(loaded, [(first, params), (second, params)], max_num_seqs=1,
                                     prefix_bytes=1 << 30)
    image_start = second.input_ids.index(151655)
    assert sequences[1].cached_tokens <= image_start  # only the text before the image is shared
    assert tokens(warm[1]) == tokens(sequential(loaded, second, params))


def test_vision_cache_reuses_features(loaded):
    _, prompts = loaded
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    image = synthetic_screenshot(300, 300, 4)
    requests = [(prompts.build(user("A?", image)), params), (prompts.build(user("B?", image)), params)]
    outputs, _, scheduler = run_batched(loaded, requests, max_num_seqs=1, vision_bytes=1 << 30)
    assert (scheduler.vision_cache.hits, scheduler.vision_cache.misses) == (1, 1)
    for (prompt, params), chunks in zip(requests, outputs):
        assert tokens(chunks) == tokens(sequential(loaded, prompt, params))


def test_cancelled_sequence_leaves_the_batch(loaded):
    requests = mixed_requests(loaded)
    model, prompts = loaded
    scheduler = Scheduler(model, prompts.tokenizer)
    outputs = [[] for _ in requests]
    sequences = [Sequence(p, SamplingParams(max_tokens=200, ignore_eos=True), o.append)
                 for (p, _), o in zip(requests, outputs)]
    for sequence in sequences:
        scheduler.add(sequence)
    while len(scheduler.running) < len(sequences):
        scheduler.step()
    sequences[1].cancelled.set()
    scheduler.step()
    assert sequences[1] not in scheduler.running and len(scheduler.running) == 3
    assert scheduler.batch_cache[0].keys.shape[0] == 3


def test_batch_cache_rows_match_mlx_lm_and_keep_their_padding_on_the_host():
    # Rows of different lengths join, decode, and leave (the longest first, so the common padding
    # is shifted out): the same keys, values, offsets and padding as mlx-lm's BatchKVCache.
    rng = np.random.default_rng(0)

    def kv(length):
        cache = KVCache()
        cache.update_and_fetch(*(mx.array(rng.standard_normal((1, 2, length, 4)), mx.float32) for _ in "kv"))
        return cache

    def decode(cache):
        rows = cache.offset.shape[0]
        cache.update_and_fetch(*(mx.array(rng.standard_normal((rows, 2, 1, 4)), mx.float32) for _ in "kv"))

    ours, reference = None, None
    for length in (3, 9, 5):
        row = kv(length)
        ours_row, reference_row = BatchKVLayerCache.row(row), BatchKVCache.merge([row])
        if ours is None:
            ours, reference = ours_row, reference_row
        else:
            ours.extend(ours_row)
            reference.extend(reference_row)
        state = rng.bit_generator.state
        decode(ours)
        rng.bit_generator.state = state
        decode(reference)
    for kept in ([0, 2], [1]):
        ours.filter(kept)
        reference.filter(mx.array(kept))
        assert ours.padding == reference.left_padding.tolist() == ours.left_padding.tolist()
        assert ours._idx == reference._idx
        for a, b in zip(ours.state[:4], reference.state[:4]):
            assert np.array_equal(np.array(a), np.array(b))
    assert ours._idx < 10  # the shifts happened


def test_identical_requests_are_separate_rows_when_one_is_cancelled(loaded):
    # Equal prompts and params must not make two sequences "equal": the batch keeps rows by identity.
    model, prompts = loaded
    messages = user("Where is the search field?", synthetic_screenshot(160, 120, seed=3))
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    expected = tokens(sequential(loaded, prompts.build(messages), params))
    scheduler = Scheduler(model, prompts.tokenizer)
    outputs = [[] for _ in range(3)]
    sequences = [Sequence(prompts.build(messages), params, output.append) for output in outputs]
    for sequence in sequences:
        scheduler.add(sequence)
    while len(scheduler.running) < 3:
        scheduler.step()
    sequences[0].cancelled.set()
    while scheduler.has_work():
        scheduler.step()
    assert sequences[0] not in scheduler.running
    for output in outputs[1:]:
        assert output[-1] is None and tokens(output[:-1]) == expected


class FailingConstraint:
    """A request's own constraint that gives up after a few tokens, as a grammar the engine cannot
    follow does mid-answer."""

    def __init__(self, vocab_size: int, fail_at: int):
        self.vocab_size, self.fail_at, self.seen = vocab_size, fail_at, 0

    def allowed(self, remaining: int | None = None) -> mx.array:
        return mx.ones((self.vocab_size,), dtype=mx.bool_)

    def advance(self, token: int) -> None:
        self.seen += 1
        if self.seen == self.fail_at:
            raise ValueError("grammar gave up")


@pytest.mark.parametrize("fail_at", [1, 3])  # 1: while joining from prefill; 3: inside the decode batch
def test_a_row_whose_constraint_fails_ends_alone(loaded, fail_at):
    requests = mixed_requests(loaded)
    model, _ = loaded
    expected = [tokens(sequential(loaded, prompt, params)) for prompt, params in requests]
    failing = SamplingParams(max_tokens=12, ignore_eos=True,
                             constraint=FailingConstraint(model.config.text_config.vocab_size, fail_at))
    outputs = [[] for _ in range(len(requests) + 1)]
    sequences = [Sequence(p, params, o.append) for (p, params), o in zip(requests, outputs)]
    sequences.insert(1, Sequence(requests[0][0], failing, outputs[-1].append))
    model, prompts = loaded
    scheduler = Scheduler(model, prompts.tokenizer)
    for sequence in sequences:
        scheduler.add(sequence)
    while scheduler.has_work():
        scheduler.step()
    assert isinstance(outputs[-1][-1], ValueError) and len(outputs[-1]) == fail_at
    for output, want in zip(outputs[:-1], expected):
        assert output[-1] is None and tokens(output[:-1]) == want


def test_each_step_is_queued_before_the_previous_one_is_handed_out(loaded):
    """Pipelining, by an observable: when a token's chunk reaches the requester, the step that
    computes the next token has already been queued on the device (free text and a grammar row)."""
    model, prompts = loaded
    for constraint in (None, FailingConstraint(model.config.text_config.vocab_size, fail_at=0)):  # 0: never fails
        scheduler = Scheduler(model, prompts.tokenizer)
        queued_at_emit = []
        sequence = Sequence(prompts.build(user("Say hello.")),
                            SamplingParams(max_tokens=6, ignore_eos=True, constraint=constraint),
                            lambda chunk: queued_at_emit.append(scheduler.stats.steps) if chunk else None)
        scheduler.add(sequence)
        while scheduler.has_work():
            scheduler.step()
        # One prefill step gives the first token; token k is handed out once step k + 1 is queued.
        assert queued_at_emit == [k + 1 for k in range(1, 7)]
        assert scheduler.stats.wait_seconds >= 0 and scheduler.stats.host_seconds > 0


def test_sampled_rows_of_a_batch_equal_their_runs_alone(loaded):
    """One sampling call per step for the whole batch: greedy rows, seeded rows in groups of equal
    top-p/top-k, and an unseeded row; a seeded row's tokens do not depend on its batch-mates."""
    _, prompts = loaded
    seeded = [SamplingParams(max_tokens=8, temperature=0.8, top_p=0.9, seed=5, ignore_eos=True),
              SamplingParams(max_tokens=8, temperature=1.3, top_p=0.9, seed=6, ignore_eos=True),
              SamplingParams(max_tokens=8, temperature=1.0, top_k=7, seed=7, ignore_eos=True),
              SamplingParams(max_tokens=8, ignore_eos=True)]
    requests = [(prompts.build(user(text)), params)
                for text, params in zip(["Say hello.", "Count to three.", "Where is OK?", "Describe."], seeded)]
    requests.append((prompts.build(user("Anything.")), SamplingParams(max_tokens=8, temperature=1.0, ignore_eos=True)))
    batched, _, _ = run_batched(loaded, requests)
    for (prompt, params), chunks in zip(requests[:4], batched):
        assert tokens(chunks) == tokens(sequential(loaded, prompt, params))
    assert len(batched[4]) == 8


def test_log_probabilities_only_for_the_rows_that_ask(loaded):
    model, prompts = loaded
    asks = [None, 0, 3, None]
    requests = [(prompts.build(user(f"Question {n}.")), SamplingParams(max_tokens=4, logprobs=ask, ignore_eos=True))
                for n, ask in enumerate(asks)]
    batched, _, _ = run_batched(loaded, requests)
    for (prompt, params), chunks, ask in zip(requests, batched, asks):
        if ask is None:
            assert all(chunk.logprob is None for chunk in chunks)
            continue
        alone = sequential(loaded, prompt, params)
        for chunk, reference in zip(chunks, alone):
            assert len(chunk.logprob.top) == ask
            assert chunk.logprob.logprob == pytest.approx(reference.logprob.logprob, abs=1e-5)
    # The step computes them for the asking rows only, and only the largest top-k asked for.
    choosers = [TokenChooser(params, set(), model.config.text_config.vocab_size) for _, params in requests]
    choice = choose(mx.zeros((4, model.config.text_config.vocab_size)), choosers, [None] * 4)
    assert choice.asking == [1, 2] and choice.chosen.shape == (2,) and choice.top_ids.shape == (2, 3)
