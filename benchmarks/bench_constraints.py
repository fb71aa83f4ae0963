"""What a JSON-schema or tool-call constraint costs per generated token, through the server's batch scheduler.

    python benchmarks/bench_constraints.py                                   # tiny random-weight checkpoint
    python benchmarks/bench_constraints.py --model .cache/bench/0.5b/mlx-float32

For each schema and batch size, a batch decodes constrained, then free (ignore_eos, as many tokens
as the constrained answers averaged), alternating for --rounds rounds; the best round of each
is kept. Decode speed counts only the steps where the whole batch is decoding (no prefill); the
extra time per step is what each request in the batch waits longer per token. The constraint's
own time (mask + advance, on the CPU) is timed inside it. Random weights: only the
constraint makes the answers valid, and every answer is checked against its schema.
"""

import argparse
import json
import time
from pathlib import Path

from holo_mlx.runtime import use_fast_blas


class Timed:
    """A constraint that adds the time spent in it to a shared counter."""

    def __init__(self, constraint, totals: dict):
        self.constraint, self.totals = constraint, totals

    @property
    def closed_early(self) -> bool:
        return self.constraint.closed_early

    def allowed(self, remaining: int | None = None):
        start = time.perf_counter()
        mask = self.constraint.allowed(remaining)
        self.totals["seconds"] += time.perf_counter() - start
        return mask

    def advance(self, token: int) -> None:
        start = time.perf_counter()
        self.constraint.advance(token)
        self.totals["seconds"] += time.perf_counter() - start
        self.totals["tokens"] += 1


def decode(model, tokenizer, prompt, params: list) -> tuple[float, list[str]]:
    """Decode tokens/s of one batch (steps with every sequence decoding), and the answers."""
    from holo_mlx.engine.requests import Sequence
    from holo_mlx.engine.scheduler import Scheduler

    scheduler = Scheduler(model, tokenizer, max_num_seqs=len(params))
    outputs = [[] for _ in params]
    for param, output in zip(params, outputs):
        scheduler.add(Sequence(prompt, param, output.append))
    while scheduler.waiting or scheduler.prefilling:
        scheduler.step()
    tokens, start = 0, time.perf_counter()
    while len(scheduler.running) == len(params):
        tokens += len(scheduler.running)
        scheduler.step()
    seconds = time.perf_counter() - start
    while scheduler.has_work():
        scheduler.step()
    answers = []
    for output in outputs:
        if isinstance(output[-1], Exception):
            raise output[-1]
        answers.append("".join(chunk.text for chunk in output[:-1]))
    return tokens / seconds, answers


def main() -> None:
    use_fast_blas()
    import jsonschema

    from holo_mlx import load
    from holo_mlx.agent import NavigationStep, bounded_schema, localization_schema
    from holo_mlx.constrain import Grammars
    from holo_mlx.engine.sampling import SamplingParams
    from holo_mlx.testing import build_checkpoint
    from holo_mlx.tool_format import HERMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: a tiny random-weight checkpoint, built once)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="budget per answer: unbounded fields close within it (the always-closing guarantee)")
    args = parser.parse_args()

    folder = Path(args.model or ".cache/bench-constraints/tiny")
    if args.model is None and not (folder / "config.json").exists():
        build_checkpoint(folder)
    model, prompts = load(folder)
    grammars = Grammars(prompts.tokenizer, model.config.text_config.vocab_size, set(model.config.eos_token_id))
    prompt = prompts.build([{"role": "user", "content": "Book a flight to Paris."}])
    click = {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}
    # (grammar, a check of each answer): schemas, and a required call of one of two tools.
    schemas = {name: (grammars.json_schema(schema), lambda answer, schema=schema: jsonschema.validate(json.loads(answer), schema))
               for name, schema in {
                   "click (localization)": localization_schema(1400, 700),
                   "navigation step": bounded_schema(NavigationStep.model_json_schema(), max_chars=48, max_coordinate=1400),
                   "unbounded {x, y}": click}.items()}
    tools = [{"type": "function", "function": {"name": name, "parameters": click}} for name in ("click", "move")]

    def one_call(answer: str) -> None:
        _, calls = HERMES.parse(answer)
        assert calls, answer
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), click)

    schemas["tool call (required)"] = (HERMES.grammar(grammars, tools, parallel=True), one_call)
    print(f"model {folder}; prompt {len(prompt.input_ids)} tokens; best of {args.rounds} rounds")
    print(f"{'schema':22s} {'batch':>5s} {'tokens':>6s} {'free tok/s':>10s} {'constrained':>11s} "
          f"{'extra/step':>10s} {'in constraint/token':>19s}")
    for name, (grammar, check) in schemas.items():
        for batch in args.batch:
            free_best = constrained_best = 0.0
            totals = {"seconds": 0.0, "tokens": 0}
            for round_ in range(args.rounds):
                params = [SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=round_ * 100 + i,
                                         constraint=Timed(grammar.constraint(), totals)) for i in range(batch)]
                speed, answers = decode(model, prompts.tokenizer, prompt, params)
                for answer in answers:
                    check(answer)
                constrained_best = max(constrained_best, speed)
                length = max(2, round(totals["tokens"] / ((round_ + 1) * batch)))
                free = [SamplingParams(max_tokens=length, temperature=1.0, seed=i, ignore_eos=True)
                        for i in range(batch)]
                free_best = max(free_best, decode(model, prompts.tokenizer, prompt, free)[0])
            extra_ms = (batch / constrained_best - batch / free_best) * 1000
            inside_ms = totals["seconds"] / totals["tokens"] * 1000
            print(f"{name:22s} {batch:5d} {length:6d} {free_best:10.1f} {constrained_best:11.1f} "
                  f"{extra_ms:8.2f}ms {inside_ms:17.2f}ms", flush=True)


if __name__ == "__main__":
    main()
