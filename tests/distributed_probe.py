"""Run under mlx.launch by tests/test_distributed.py: load each model given split across the ranks,
by tensor parallelism and then by layers (pipeline parallelism), and print from rank 0, for each
split, every rank's weight bytes, this rank's decoder bytes and peak memory after loading, and the
text it generates greedily for a screenshot, as JSON: {model: {"tensor": {...}, "pipeline": {...}}}.
One process alone (no mlx.launch) loads each once: {model: {"alone": {...}}}. One launch answers
every question on every model: the ranks' start-up (Python, MLX, the ring) costs far more than a
tiny model's load."""

import gc
import json
import sys

import mlx.core as mx

from holo_mlx import load
from holo_mlx.distributed import ranks, weight_bytes, world
from holo_mlx.engine.sampling import SamplingParams
from holo_mlx.generate import stream_generate
from holo_mlx.loading import LoadError, load_model
from holo_mlx.prompt import PromptBuilder
from holo_mlx.runtime import use_fast_blas
from holo_mlx.testing import synthetic_screenshot

SCREENSHOT = synthetic_screenshot(333, 217, seed=5)
PROMPT, MAX_TOKENS = "Click the Submit button.", 24


def probe(path: str, group, pipeline: bool, prompts: PromptBuilder | None) -> tuple[dict, PromptBuilder]:
    """This split's answers, and the model's prompt builder (loaded with its first split: its
    tokenizer takes longer to load than a tiny model)."""
    # Peak memory counts from here: what this load holds at most, not the model loaded before it.
    mx.clear_cache()
    mx.reset_peak_memory()
    try:
        if prompts is None:
            model, prompts = load(path, group, pipeline)
        else:
            model = load_model(path, group, pipeline)
    except LoadError as error:
        print(json.dumps({"error": str(error)}), flush=True)
        sys.exit(3)
    decoder = weight_bytes(model.language_model.model.parameters()["layers"])
    figures = {"ranks": [vars(rank) for rank in ranks(model, group)], "decoder_layer_bytes": decoder,
               "peak_memory": mx.get_peak_memory(), "replicated_bytes": weight_bytes(model.parameters()) - decoder}
    prompt = prompts.build([{"role": "user", "content": [{"type": "image", "image": SCREENSHOT},
                                                         {"type": "text", "text": PROMPT}]}])
    chunks = list(stream_generate(model, prompts.tokenizer, prompt, SamplingParams(max_tokens=MAX_TOKENS)))
    assert len(chunks) == MAX_TOKENS and chunks[-1].finish_reason == "length"
    if group is not None:
        # The scheduler has queued one more pass, collectives included: no rank loads on before all finish it.
        mx.eval(mx.distributed.all_sum(mx.array(1), group=group))
    return {**figures, "text": "".join(chunk.text for chunk in chunks)}, prompts


use_fast_blas()
group = world()
splits = {"alone": False} if group is None else {"tensor": False, "pipeline": True}
answers = {}
for path in sys.argv[1:]:
    answers[path], prompts = {}, None
    for split, pipeline in splits.items():
        answers[path][split], prompts = probe(path, group, pipeline, prompts)
        gc.collect()  # the model's modules hold each other: freed before the next split loads
if group is None or group.rank() == 0:
    print(json.dumps(answers), flush=True)
