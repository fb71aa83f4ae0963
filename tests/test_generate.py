"""Generation behaviour on a tiny checkpoint: sampling, stops, logprobs, CLI, no torch at runtime."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from holo_mlx import load
from holo_mlx.engine.sampling import SamplingParams
from holo_mlx.generate import stream_generate
from holo_mlx.testing import synthetic_screenshot

MESSAGES = [{"role": "user", "content": "Describe the screen."}]


@pytest.fixture(scope="module")
def loaded(hf_root_checkpoint):
    return load(hf_root_checkpoint)


def run(loaded, params: SamplingParams, messages=MESSAGES):
    model, prompts = loaded
    return list(stream_generate(model, prompts.tokenizer, prompts.build(messages), params))


def text_of(chunks) -> str:
    return "".join(chunk.text for chunk in chunks)


def test_max_tokens_gives_length_and_stats(loaded):
    chunks = run(loaded, SamplingParams(max_tokens=5, ignore_eos=True))
    assert len(chunks) == 5
    assert chunks[-1].finish_reason == "length"
    assert all(chunk.finish_reason is None for chunk in chunks[:-1])
    stats = chunks[-1].stats
    assert stats.generation_tokens == 5 and stats.prompt_tokens > 5
    assert stats.prompt_tps > 0 and stats.generation_tps > 0


def test_stop_string_is_not_emitted(loaded):
    free = text_of(run(loaded, SamplingParams(max_tokens=16, ignore_eos=True, temperature=1.0, seed=3)))
    assert len(free) > 6
    stop = free[len(free) // 2: len(free) // 2 + 3]
    chunks = run(loaded, SamplingParams(max_tokens=16, ignore_eos=True, temperature=1.0, seed=3, stop=[stop]))
    assert chunks[-1].finish_reason == "stop"
    assert text_of(chunks) == free[:free.index(stop)]


def test_stop_token_id_ends_generation(loaded):
    tokens = [chunk.token for chunk in run(loaded, SamplingParams(max_tokens=8, temperature=1.0, seed=5))]
    chunks = run(loaded, SamplingParams(max_tokens=8, temperature=1.0, seed=5, stop_token_ids=[tokens[2]]))
    assert [chunk.token for chunk in chunks] == tokens[:3]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].text == ""


def test_seed_makes_sampling_reproducible(loaded):
    params = dict(max_tokens=10, temperature=1.5, top_p=0.95, top_k=50, ignore_eos=True)
    first = [c.token for c in run(loaded, SamplingParams(seed=11, **params))]
    again = [c.token for c in run(loaded, SamplingParams(seed=11, **params))]
    other = [c.token for c in run(loaded, SamplingParams(seed=12, **params))]
    assert first == again
    assert first != other


def test_logprobs_are_consistent_with_the_model(loaded):
    chunks = run(loaded, SamplingParams(max_tokens=4, logprobs=5, ignore_eos=True))
    for chunk in chunks:
        entry = chunk.logprob
        assert entry.token == chunk.token
        assert len(entry.top) == 5
        values = [value for _, value in entry.top]
        assert values == sorted(values, reverse=True)
        # Greedy: the chosen token is the most likely one, and probabilities are normalized.
        assert entry.top[0] == (chunk.token, pytest.approx(entry.logprob))
        assert all(value <= 0 for value in values)


def test_top_k_one_equals_greedy(loaded):
    greedy = [c.token for c in run(loaded, SamplingParams(max_tokens=6, ignore_eos=True))]
    top1 = [c.token for c in run(loaded, SamplingParams(max_tokens=6, temperature=1.0, top_k=1, seed=1,
                                                         ignore_eos=True))]
    assert greedy == top1


def test_image_prompt_generates(loaded):
    image = synthetic_screenshot(640, 360)
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "Click OK."}]}]
    chunks = run(loaded, SamplingParams(max_tokens=3, ignore_eos=True), messages)
    assert len(chunks) == 3


@pytest.mark.parametrize("checkpoint", ["hf_root_checkpoint", "holo2_moe_root_checkpoint"])
def test_cli_generates_without_importing_torch(checkpoint, request, tmp_path):
    """The CLI as a user runs it, with torch made unimportable: the runtime must not need it."""
    folder = request.getfixturevalue(checkpoint)
    image = tmp_path / "screen.png"
    synthetic_screenshot(400, 300).save(image)
    script = (
        "import sys, runpy; sys.modules['torch'] = None; "
        "sys.argv = ['holo_mlx.generate'] + sys.argv[1:]; runpy.run_module('holo_mlx.generate', run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "--model", str(folder), "--image", str(image),
         "--prompt", "Click OK.", "--max-tokens", "6"],
        capture_output=True, text=True, timeout=300, env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    assert "Prompt:" in result.stdout and "tokens-per-sec" in result.stdout
    assert "Generation: 6 tokens" in result.stdout
    assert "Peak memory:" in result.stdout


def test_cli_says_so_when_its_rank_cannot_join(hf_root_checkpoint, tmp_path):
    # Rank 1 of a one-host ring, as a mistyped hostfile would launch it: MLX refuses at once.
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps([["127.0.0.1:5000"]]))
    result = subprocess.run(
        [sys.executable, "-m", "holo_mlx.generate", "--model", str(hf_root_checkpoint), "--prompt", "Hi"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "MLX_RANK": "1", "MLX_HOSTFILE": str(hosts)})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    # The last line is the message, MLX's reason after it.
    assert result.stderr.splitlines()[-1].startswith(
        "error: could not join the other ranks (ring backend, rank 1 of 1: 127.0.0.1:5000): [ring] ")


def test_the_readme_python_example_runs(hf_root_checkpoint, tmp_path, monkeypatch, capsys):
    """README.md's Python API block, as written, on the tiny checkpoint and a screenshot."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    synthetic_screenshot(400, 300).save(tmp_path / "screen.png")
    monkeypatch.chdir(tmp_path)
    exec(code.replace("models/Holo1.5-7B-mlx-8bit", str(hf_root_checkpoint)), {})
    resized, _, text = capsys.readouterr().out.partition("\n")
    assert resized.startswith("(") and text
