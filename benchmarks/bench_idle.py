"""What an idle two-rank server costs: the share of a core each process uses while no request runs.

A two-rank server (mlx.launch, ring backend over loopback) answers one request, then idles; the CPU
time of mlx.launch and of each rank over the idle window is printed as a share of one core.
`--serve-py` of another checkout measures that version (e.g. one from before idle ranks slept).

    python benchmarks/bench_idle.py --model models/tiny-mlx
    python benchmarks/bench_idle.py --preset tiny --seconds 30 --serve-py ../old/serve.py
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench_distributed import LAUNCHER, free_port
from bench_runtime import preset_folder
from common import format_table

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rank_pids(session: int) -> dict[str, int]:
    """The launcher and each rank of a session, by name."""
    found = {"mlx.launch": session}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getsid(int(proc.name)) == session:
                environ = (proc / "environ").read_bytes().split(b"\0")
                rank = next((item[9:].decode() for item in environ if item.startswith(b"MLX_RANK=")), None)
                if rank is not None and b"serve.py" in (proc / "cmdline").read_bytes():
                    found[f"rank {rank}"] = int(proc.name)
        except (OSError, ProcessLookupError):
            continue
    return found


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.TransportError:  # bound, not yet listening
        return False


def measure(model: Path, serve_py: Path, seconds: float) -> dict[str, float]:
    command = [str(LAUNCHER), "--backend", "ring", "--hosts", "127.0.0.1", "-n", "2", "--starting-port",
               str(free_port()), "--python", sys.executable, "--", str(serve_py), "--model", str(model),
               "--port", "0", "--log-level", "warning"]
    idle, keep_open = os.pipe()  # a pipe nobody writes to, as a terminal would be
    process = subprocess.Popen(command, stdin=idle, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=serve_py.parent, start_new_session=True)
    try:
        while (line := process.stdout.readline()) and not (match := re.search(r"(http://\S+)/v1", line)):
            pass
        if not line:
            raise SystemExit("the server printed no URL")
        url = match.group(1)
        while not ready(url):
            time.sleep(0.5)
        answer = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        answer.raise_for_status()
        pids = rank_pids(process.pid)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        time.sleep(seconds)
        return {name: (cpu_seconds(pid) - before[name]) / seconds for name, pid in pids.items()}
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        os.close(idle), os.close(keep_open)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="a converted model folder")
    source.add_argument("--preset", default="tiny", help="random weights of this preset (bench_server's folders)")
    parser.add_argument("--seconds", type=float, default=30, help="idle window")
    parser.add_argument("--serve-py", type=Path, default=REPO / "serve.py", help="the serve.py to start")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "bench")
    args = parser.parse_args()
    model = args.model or preset_folder(args.preset, args.cache_dir)
    shares = measure(model.resolve(), args.serve_py.resolve(), args.seconds)
    print(f"idle {args.seconds:g} s after one request, {args.serve_py}:")
    print(format_table([{"process": name, "share": f"{share:.1%}"} for name, share in sorted(shares.items())],
                       [("process", "process"), ("share", "share of a core")]))


if __name__ == "__main__":
    main()
