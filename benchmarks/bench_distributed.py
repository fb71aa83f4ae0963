"""One model on one rank vs two ranks (tensor parallel, pipeline parallel), launched by mlx.launch.

Each configuration runs `python -m holo_mlx.generate` greedily on the same prompt twice, with two
token budgets: decode tok/s and TTFT come
from the longer run, and the bytes the ranks exchanged per decoded token from the difference of
the two runs' loopback traffic (/proc/net/dev), so the prompt's share cancels out. Each run gets a
network namespace of its own where `unshare` may make one (Linux), so that loopback carries the
ranks' traffic alone; elsewhere other loopback traffic counts too. The ranks talk over loopback on
this one machine: the figures are a link with no bandwidth limit and a shared
CPU, not two Macs (docs/scale-out.md has the arithmetic for real links).

    python benchmarks/bench_distributed.py --preset 0.5b
    python benchmarks/bench_distributed.py --model models/tiny-mlx --tokens 8,24
"""

import argparse
import functools
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

from common import TEXT_PROMPT, format_table

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = Path(sys.executable).parent / "mlx.launch"
CONFIGURATIONS = {"1 rank": (1, []), "2 ranks, tensor": (2, []), "2 ranks, pipeline": (2, ["--pipeline"])}


def loopback_received(proc_net_dev: str) -> int:
    """Bytes received on the loopback interface (every byte sent on it is received once) in a
    /proc/net/dev listing."""
    for line in proc_net_dev.splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[0])
    raise SystemExit("no loopback interface in /proc/net/dev (Linux only)")


# `sh -c SCRIPT MARK COMMAND...` in a new network namespace: loopback up, the command, then MARK and
# that namespace's counters (it ends with its last process).
COUNTERS_MARK = "--- /proc/net/dev of the ranks' namespace ---"
IN_PRIVATE_NETWORK = ("unshare", "--net", "sh", "-c",
                      'ip link set lo up && "$@"; status=$?; echo "$0"; cat /proc/net/dev; exit $status',
                      COUNTERS_MARK)


@functools.cache
def private_network_works() -> bool:
    try:
        tried = subprocess.run([*IN_PRIVATE_NETWORK, "true"], capture_output=True, text=True)
    except FileNotFoundError:  # no unshare (macOS)
        return False
    if tried.returncode:
        print(f"no network namespace for the ranks (unshare: {tried.stderr.strip()}): other loopback traffic "
              "is counted too", file=sys.stderr)
    return tried.returncode == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def on_ranks(ranks: int, *command: str, private_network: bool = False) -> subprocess.CompletedProcess:
    """`python COMMAND` on `ranks` ring ranks of 127.0.0.1 launched by mlx.launch (one process, as is, for 1),
    in a network namespace of their own if asked (IN_PRIVATE_NETWORK: the counters follow the output)."""
    if ranks > 1:
        command = (str(LAUNCHER), "--backend", "ring", "--hosts", "127.0.0.1", "-n", str(ranks),
                   "--starting-port", str(free_port()), "--python", sys.executable, "--", *command)
    else:
        command = (sys.executable, *command)
    if private_network:
        command = (*IN_PRIVATE_NETWORK, *command)
    # stdin a pipe kept open (at its end of file mlx.launch would spin on a core), holding 1 MiB:
    # mlx.launch's relay thread for each rank selects for writing on the rank's stdin even with
    # nothing to write, and spins beside the ranks until that pipe is full (ranks never read stdin).
    stdin, keep_open = os.pipe()
    threading.Thread(target=fill, args=(os.dup(keep_open),), daemon=True).start()
    try:
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO, stdin=stdin)
    finally:
        os.close(stdin), os.close(keep_open)


def fill(own: int, data=memoryview(bytes(1 << 20))) -> None:
    """Write `data` into the pipe `own` (a descriptor of its own: the caller's may be closed and its
    number reused meanwhile), then close it."""
    try:
        while data:
            data = data[os.write(own, data):]
    except BrokenPipeError:  # the launcher ended first
        pass
    finally:
        os.close(own)


def generate(model: Path, ranks: int, flags: list[str], tokens: int) -> tuple[dict, int]:
    """One generate run: its printed figures and the loopback bytes it caused."""
    command = ["-m", "holo_mlx.generate", "--model", str(model), "--prompt", TEXT_PROMPT,
               "--max-tokens", str(tokens), *flags]
    if private_network_works():
        result = on_ranks(ranks, *command, private_network=True)
        output, _, counters = result.stdout.partition(COUNTERS_MARK + "\n")
        moved = loopback_received(counters) if counters else 0
    else:
        before = loopback_received(Path("/proc/net/dev").read_text())
        result = on_ranks(ranks, *command)
        output, moved = result.stdout, loopback_received(Path("/proc/net/dev").read_text()) - before
    figures = re.search(r"Prompt: (\d+) tokens, ([\d.]+) tokens-per-sec\nGeneration: (\d+) tokens, "
                        r"([\d.]+) tokens-per-sec", output)
    if result.returncode or figures is None:
        raise SystemExit(f"generate failed ({' '.join(result.args)}):\n{output[-2000:]}\n{result.stderr[-3000:]}")
    prompt, prompt_tps, generated, decode_tps = figures.groups()
    return {"prompt_tokens": int(prompt), "ttft_s": int(prompt) / float(prompt_tps), "generated": int(generated),
            "decode_tps": float(decode_tps)}, moved


def measure(model: Path, tokens: tuple[int, int]) -> list[dict]:
    rows = []
    for label, (ranks, flags) in CONFIGURATIONS.items():
        short, short_bytes = generate(model, ranks, flags, tokens[0])
        long, long_bytes = generate(model, ranks, flags, tokens[1])
        per_token = (long_bytes - short_bytes) / (long["generated"] - short["generated"])
        rows.append({"configuration": label, "ttft_s": round(long["ttft_s"], 3), "decode_tps": long["decode_tps"],
                     "bytes_per_token": round(per_token)})
        print(f"{label}: {rows[-1]}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="0.5b", help="random weights of this Holo1.5 shape (bench_runtime's)")
    source.add_argument("--model", type=Path, help="a converted model folder instead")
    parser.add_argument("--tokens", default="16,80", help="the two token budgets, shorter first")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    tokens = tuple(int(value) for value in args.tokens.split(","))
    model = args.model
    if model is None:
        from bench_runtime import preset_folder

        model = preset_folder(args.preset, args.cache_dir)
    rows = measure(model, tokens)
    if args.json:
        args.json.write_text(json.dumps({"model": str(model), "tokens": tokens, "private_network": private_network_works(),
                                         "rows": rows}, indent=2))
    where = ("in a network namespace of their own: the bytes are theirs alone" if private_network_works()
             else "sharing loopback: its other traffic is counted too")
    print(f"\n{model}, {tokens[1]} tokens decoded, ranks on 127.0.0.1 (loopback, one machine), {where}")
    print(format_table(rows, [("configuration", "configuration"), ("ttft_s", "TTFT s"), ("decode_tps", "decode tok/s"),
                              ("bytes_per_token", "bytes exchanged / token")]))


if __name__ == "__main__":
    main()
