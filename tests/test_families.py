"""Model families are plug-ins: the registry, and a second family (tests/toy_family.py) served as is.

The toy family lives in the test suite and is registered only here; the server runs in-process on
127.0.0.1 with the real `openai` client. Every served answer is checked against a reference written
straight from the toy's weights (plain attention, no caches, full recompute for each token), so a
pass shows that nothing outside holo_mlx/models/ assumes Qwen2.5-VL.
"""

import base64
import copy
import io
import re
import socket
import threading
import time

import httpx
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import openai
import pytest
import uvicorn

import toy_family as toy
from holo_mlx.engine.sampling import SamplingParams
from holo_mlx.generate import stream_generate
from holo_mlx.loading import load_model
from holo_mlx.models import ConfigError, _FAMILIES, family_for, register
from holo_mlx.prompt import Prompt, PromptBuilder
from holo_mlx.server.app import create_app
from holo_mlx.settings import ServerConfig
from holo_mlx.testing import holo2_published_config, root_layout_config, synthetic_screenshot
from holo_mlx.tokens import token_bytes

STEPS = 6  # generated tokens per check


# --- the registry ----------------------------------------------------------------------------------

def test_registry_reads_both_published_qwen_layouts():
    with_type = root_layout_config()
    architectures_only = copy.deepcopy(with_type)
    del architectures_only["model_type"]
    for raw in (with_type, architectures_only):
        family = family_for(raw)
        assert family.name == "qwen2_5_vl"
        assert family.config(raw).text_config.hidden_size == with_type["hidden_size"]


@pytest.mark.parametrize("preset", ["holo2-tiny", "holo2-moe-tiny"])
def test_registry_reads_holo2_as_published_and_as_transformers_5_writes_it(preset):
    published = holo2_published_config(preset)
    text = published["text_config"]
    nested = copy.deepcopy(published)
    nested["text_config"].pop("rope_theta")
    nested["text_config"]["rope_parameters"] = {**nested["text_config"].pop("rope_scaling"), "rope_theta": 5e6}
    for raw in (published, nested):
        family = family_for(raw)
        assert family.name == "qwen3_vl"
        config = family.config(raw)
        assert (config.text_config.head_dim, config.text_config.rope_theta) == (text["head_dim"], 5e6)
        assert config.text_config.num_experts == text.get("num_experts", 0)


def edited_text_config(change):
    raw = holo2_published_config()
    change(raw["text_config"])
    return raw


@pytest.mark.parametrize("change, message", [
    (lambda text: text["rope_scaling"].pop("mrope_interleaved"), "mrope_interleaved"),
    (lambda text: text["rope_scaling"].pop("mrope_section"), "no mrope_section"),
    (lambda text: text.pop("rope_theta"), "no rope_theta"),
    (lambda text: text["rope_scaling"].update(rope_theta=1e6), "two rope_theta values"),
    (lambda text: text["rope_scaling"].update(mrope_section=[16, 24, 24]), "does not cover head_dim 64"),
    (lambda text: text.update(attention_bias=True), "attention_bias"),
    (lambda text: text.update(num_experts=4, num_experts_per_tok=0, moe_intermediate_size=8), "num_experts_per_tok"),
])
def test_holo2_rope_settings_are_never_guessed(change, message):
    raw = edited_text_config(change)
    with pytest.raises(ConfigError, match=message):
        family_for(raw).config(raw)


def test_unknown_architecture_names_the_known_families(toy_registered):
    with pytest.raises(ConfigError) as raised:
        family_for({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]})
    message = str(raised.value)
    assert "'llava'" in message and "LlavaForConditionalGeneration" in message
    assert "qwen2_5_vl (Holo1.5 / Qwen2.5-VL)" in message and "toy_vl (toy VL test family)" in message


def test_registered_family_is_picked_by_its_config(toy_registered):
    assert family_for(toy.CONFIG) is toy.FAMILY
    assert family_for({**toy.CONFIG, "model_type": None}) is toy.FAMILY  # by architectures
    assert family_for(root_layout_config()).name == "qwen2_5_vl"  # the built-in is still there


def test_load_model_builds_the_toy_through_its_own_sanitize(toy_model):
    # The file also holds lm_head.weight and rotary buffers: a strict load passes only if sanitize dropped them.
    assert toy_model.family is toy.FAMILY and isinstance(toy_model, toy.Model)
    assert toy_model.config.text_config.vocab_size == 151936


# --- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_registered():
    register(toy.FAMILY)
    yield toy.FAMILY
    # holo_mlx.models has no unregister(): drop it from the registry so other modules never see it.
    _FAMILIES.pop(toy.FAMILY.name, None)


@pytest.fixture(scope="module")
def toy_dir(toy_registered, module_tmp_factory):
    return toy.write_checkpoint(module_tmp_factory("families") / "toy-vl")


@pytest.fixture(scope="module")
def toy_model(toy_dir):
    return load_model(toy_dir)


@pytest.fixture(scope="module")
def builder(toy_dir):
    return PromptBuilder.from_pretrained(toy_dir)  # the server's defaults (max_side 1440, 1,003,520 pixels)


class InProcessServer:
    """create_app + uvicorn in a thread, on a socket bound to 127.0.0.1:0 (as serve.py binds it)."""

    def __init__(self, model_dir):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        app = create_app(ServerConfig(model=str(model_dir), served_model_name=("toy",), responses_store=0))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while True:
            try:
                response = httpx.get(f"{self.url}/health", timeout=5)
                if response.status_code == 200:
                    break
                assert response.json()["status"] != "error", response.json()["error"]
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "the toy model never became ready"
            time.sleep(0.1)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=60)

    def prompt_tokens_counted(self) -> float:
        metrics = httpx.get(f"{self.url}/metrics").text
        return float(re.search(r"^holo_prompt_tokens_total (\S+)$", metrics, re.M).group(1))

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture(scope="module")
def server(toy_dir):
    running = InProcessServer(toy_dir)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


# --- the reference: the toy's weights with plain math, one sequence, no cache ----------------------

def reference_embeds(model: toy.Model, prompt) -> mx.array:
    """(length, dim): token embedding rows, each image token's row replaced by its projected pixels."""
    ids = np.asarray(prompt.input_ids)
    rows = model.model.embed_tokens.weight[mx.array(ids)]
    if prompt.images:
        pixels = np.concatenate([image.pixel_values for image in prompt.images])
        pixels = mx.array(pixels).reshape(-1, model.config.vision_config.token_dim)
        rows[mx.array(np.flatnonzero(ids == toy.IMAGE_TOKEN_ID))] = model.visual.norm(
            pixels @ model.visual.patch_proj.weight.T)
    return rows


def reference_hidden(model: toy.Model, x: mx.array) -> mx.array:
    """Final hidden states (length, dim): causal softmax attention, rotary by mx.fast.rope from 0."""
    config = model.config
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    length = x.shape[0]
    causal = mx.tril(mx.ones((length, length), dtype=mx.bool_))

    def split(t, n):
        return t.reshape(length, n, head_dim).transpose(1, 0, 2)

    def rope(t):
        return mx.fast.rope(t, head_dim, traditional=False, base=config.rope_theta, scale=1.0, offset=0)

    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        h = layer.input_layernorm(x)
        q = rope(split(h @ attn.q_proj.weight.T, heads))
        k = mx.repeat(rope(split(h @ attn.k_proj.weight.T, kv_heads)), heads // kv_heads, axis=0)
        v = mx.repeat(split(h @ attn.v_proj.weight.T, kv_heads), heads // kv_heads, axis=0)
        scores = mx.where(causal, (q @ k.transpose(0, 2, 1)) * head_dim**-0.5, -mx.inf)
        x = x + (mx.softmax(scores, axis=-1) @ v).transpose(1, 0, 2).reshape(length, -1) @ attn.o_proj.weight.T
        h = layer.post_attention_layernorm(x)
        x = x + (nn.silu(h @ mlp.gate_proj.weight.T) * (h @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    return model.model.norm(x)


def reference_greedy(model: toy.Model, prompt, steps: int = STEPS) -> list[tuple[int, float]]:
    """(token, log-probability) of each greedy step, the whole sequence recomputed every time."""
    table = model.model.embed_tokens.weight
    x, out = reference_embeds(model, prompt), []
    for _ in range(steps):
        logits = reference_hidden(model, x)[-1] @ table.T  # tied embeddings
        token = int(mx.argmax(logits))
        out.append((token, float(logits[token] - mx.logsumexp(logits))))
        x = mx.concatenate([x, table[token][None]])
    tokens = [token for token, _ in out]
    assert len(set(tokens)) > 1, f"degenerate reference decode {tokens}: the check would say little"
    return out


def reference_embedding(model: toy.Model, prompt) -> np.ndarray:
    pooled = reference_hidden(model, reference_embeds(model, prompt)).mean(axis=0)
    return np.array(pooled / mx.linalg.norm(pooled))


# --- serving the toy family ------------------------------------------------------------------------

SCREENSHOT = synthetic_screenshot(64, 48)
TOKENS_PER_SCREENSHOT = (64 // 16) * (48 // 16)  # the toy's 16x16-pixel image tokens, no resize


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def chat_messages(text: str = "Describe the screen.") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(SCREENSHOT)}},
                                         {"type": "text", "text": text}]}]


def chat_prompt(builder, text: str = "Describe the screen."):
    return builder.build([{"role": "user", "content": [{"type": "image", "image": png(SCREENSHOT)},
                                                       {"type": "text", "text": text}]}])


def reference_text(builder, tokens: list[tuple[int, float]]) -> str:
    return b"".join(token_bytes(builder.tokenizer).bytes_of(token) for token, _ in tokens).decode(errors="replace")


def test_health_and_models_name_the_toy(server, client):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ready"
    assert [model.id for model in client.models.list().data] == ["toy"]


def test_chat_with_an_image_decodes_the_reference_greedy_tokens(client, builder, toy_model):
    prompt = chat_prompt(builder)
    assert prompt.input_ids.count(toy.IMAGE_TOKEN_ID) == TOKENS_PER_SCREENSHOT  # the toy's own processor
    expected = reference_greedy(toy_model, prompt)
    response = client.chat.completions.create(model="toy", messages=chat_messages(), max_tokens=STEPS, temperature=0,
                                              logprobs=True, extra_body={"ignore_eos": True})
    entries = response.choices[0].logprobs.content
    assert [bytes(entry.bytes) for entry in entries] == [token_bytes(builder.tokenizer).bytes_of(t) for t, _ in expected]
    assert [entry.logprob for entry in entries] == pytest.approx([lp for _, lp in expected], abs=1e-3)
    assert response.choices[0].message.content == reference_text(builder, expected)
    assert response.usage.prompt_tokens == len(prompt.input_ids) and response.usage.completion_tokens == STEPS


def test_stream_after_the_same_prompt_reuses_its_prefix_and_decodes_the_same(client, builder, toy_model):
    text = "Where is the OK button?"
    expected = reference_text(builder, reference_greedy(toy_model, chat_prompt(builder, text)))
    kwargs = dict(model="toy", messages=chat_messages(text), max_tokens=STEPS, temperature=0,
                  extra_body={"ignore_eos": True})
    assert client.chat.completions.create(**kwargs).choices[0].message.content == expected
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == STEPS
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # KV restored into the toy's caches


def test_batched_completions_match_the_reference_per_prompt(client, builder, toy_model):
    """A short prompt decodes while a long one prefills in two chunks (512 tokens each on the CPU) in
    the same passes; then both decode in one left-padded batch."""
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 150000, size).tolist() for size in (24, 600)]
    response = client.completions.create(model="toy", prompt=prompts, max_tokens=STEPS, temperature=0, logprobs=0,
                                         extra_body={"ignore_eos": True})
    strings = token_bytes(builder.tokenizer)
    for ids, choice in zip(prompts, sorted(response.choices, key=lambda c: c.index)):
        expected = reference_greedy(toy_model, Prompt(input_ids=ids, images=[]))
        assert choice.logprobs.tokens == [strings.text(token) for token, _ in expected]
        assert choice.logprobs.token_logprobs == pytest.approx([lp for _, lp in expected], abs=1e-3)
    assert response.usage.completion_tokens == 2 * STEPS


def test_text_embeddings_pool_the_toy_hidden_states(client, builder, toy_model):
    texts = ["Hello there", "A longer sentence about the Submit button"]
    response = client.embeddings.create(model="toy", input=texts)
    assert len(response.data) == 2
    for text, item in zip(texts, response.data):
        assert len(item.embedding) == toy.CONFIG["hidden_size"]
        assert np.array(item.embedding) == pytest.approx(reference_embedding(toy_model, builder.build_text(text)),
                                                         abs=1e-4)


def test_screenshot_embeddings_use_the_toy_image_token(server, builder, toy_model):
    """An image part is written the way the toy's chat template writes it: its image token, once per
    visual token (the family's placeholder, not Qwen's <|vision_start|><|image_pad|><|vision_end|>)."""
    text = " the OK button"
    response = httpx.post(f"{server.url}/v1/embeddings", timeout=60, json={"model": "toy", "input": [
        {"type": "image_url", "image_url": {"url": data_url(SCREENSHOT)}}, {"type": "text", "text": text}]})
    assert response.status_code == 200, response.text
    image = builder.process_image(png(SCREENSHOT))
    ids = [toy.IMAGE_TOKEN_ID] * TOKENS_PER_SCREENSHOT + builder.tokenizer.encode(text, add_special_tokens=False)
    expected = reference_embedding(toy_model, Prompt(input_ids=ids, images=[image]))
    assert response.json()["usage"]["prompt_tokens"] == len(ids)
    assert np.array(response.json()["data"][0]["embedding"]) == pytest.approx(expected, abs=1e-4)


def test_localize_asks_with_the_toy_prompt_and_decodes_under_its_schema(server, builder):
    target = "the OK button"
    before = server.prompt_tokens_counted()
    response = httpx.post(f"{server.url}/v1/localize", timeout=60,
                          json={"model": "toy", "image": data_url(SCREENSHOT), "target": target})
    assert response.status_code == 200, response.text
    click = response.json()
    # The toy schema's bounds: Qwen's schema (anywhere on the image) would rarely land in both.
    assert 64 // 8 <= click["x"] <= 64 // 4 and 48 // 8 <= click["y"] <= 48 // 4
    assert click["resized"] == {"width": 64, "height": 48}
    # The prompt submitted was the toy's instruction (Qwen's embeds a whole JSON schema: far longer).
    prompt = chat_prompt(builder, toy.localization_prompt(target))
    assert server.prompt_tokens_counted() - before == len(prompt.input_ids)


def test_generate_module_decodes_the_reference(toy_model, builder):
    """holo_mlx.generate (the CLI's path, outside the server) with the toy family."""
    prompt = chat_prompt(builder)
    chunks = list(stream_generate(toy_model, builder.tokenizer, prompt, SamplingParams(max_tokens=STEPS, ignore_eos=True)))
    assert [chunk.token for chunk in chunks] == [token for token, _ in reference_greedy(toy_model, prompt)]
