"""Serve a converted Holo1.5 model with an OpenAI-compatible API.

    python serve.py --model models/Holo1.5-7B-mlx-8bit
    # then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")

Every flag --some-flag also reads HOLO_SOME_FLAG (holo_mlx/settings.py); docs/API.md lists them all.
"""

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

from holo_mlx.settings import parse_config


def port_owner(port: int) -> str:
    """Which process listens on a TCP port, as far as this OS lets us see."""
    try:
        out = subprocess.run(["lsof", "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fpc"],
                             capture_output=True, text=True, timeout=5).stdout
        fields = {line[0]: line[1:] for line in out.splitlines() if line}
        if "p" in fields:
            return f"pid {fields['p']} ({fields.get('c', '?')})"
    except (OSError, subprocess.SubprocessError):
        pass
    return _proc_port_owner(port) or "another process"


def _proc_port_owner(port: int) -> str | None:
    """Linux without lsof: the listening process found through /proc."""
    from holo_mlx.server.ports import pid_listening_on

    pid = pid_listening_on(port)
    if pid is None:
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        command = "?"
    return f"pid {pid} ({command})"


def bind(host: str, port: int, next_free: bool) -> socket.socket:
    """A listening socket, bound here so the URL we print is the one actually served."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for candidate in range(port, port + (100 if next_free and port else 1)):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
            return sock
        except OSError as error:
            sock.close()
            if error.errno != errno.EADDRINUSE:
                raise
            if not next_free:
                sys.exit(f"error: port {candidate} on {host} is in use by {port_owner(candidate)}; "
                         "stop it, pick another --port, or pass --next-free-port (or --port 0)")
    sys.exit(f"error: no free port in {port}-{port + 99} on {host}")


def main(argv=None) -> None:
    from holo_mlx.runtime import use_fast_blas

    use_fast_blas()
    config = parse_config(argv)
    if not config.model:
        sys.exit("error: no model given: pass --model PATH (or set HOLO_MODEL) to a folder made by "
                 "`python -m convert --hf-path Hcompany/Holo1.5-7B`")
    if not Path(config.model).is_dir():
        sys.exit(f"error: model folder {config.model} does not exist; create it with "
                 f"`python -m convert --hf-path Hcompany/Holo1.5-7B --mlx-path {config.model}`")

    import logging

    from holo_mlx.distributed import RanksMissing, world

    try:
        group = world(config.join_timeout)  # before binding: no request can wait on a join
    except RanksMissing as error:
        sys.exit(f"error: {error}")
    if group is not None and group.rank() > 0:
        # Under mlx.launch: rank 0 serves HTTP; the others run their share of each pass in step with it.
        logging.basicConfig(level=config.log_level.upper(), format=f"%(levelname)s: rank {group.rank()}: %(message)s")
        follow(config)

    import uvicorn

    logging.basicConfig(level=config.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")

    from holo_mlx.server.app import create_app
    from holo_mlx.server.response_store import StoreError

    sock = bind(config.host, config.port, config.next_free_port)
    try:
        app = create_app(config)
    except StoreError as error:
        sys.exit(f"error: {error}")
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"holo-mlx: serving {config.model_name} at http://{shown}:{port}/v1 (model loading in the background)",
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=config.log_level,
                                           timeout_graceful_shutdown=config.shutdown_timeout))
    server.run(sockets=[sock])
    if group is not None:
        os._exit(0)  # the engine thread may still wait in a collective for ranks that are gone


def follow(config) -> None:
    """A rank other than 0: its engine follows rank 0's on a thread, so that a stop signal, or rank 0's
    loss, reaches it even while the engine waits inside a collective, where Python runs no handler.

    SIGTERM or SIGINT asks rank 0 to stop: rank 0 lets requests in flight finish (this rank runs its
    share of them meanwhile), then its last exchange ends this rank's engine."""
    import signal
    import threading
    import time

    from holo_mlx.engine.worker import Engine

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    engine, failures = Engine(config), []

    ended = threading.Event()  # not Thread.join: a signal interrupting join can mark the thread ended

    def run() -> None:
        try:
            engine.follow()
        except BaseException as error:  # its load failed, or it fell out of step
            failures.append(error)
        finally:
            ended.set()

    threading.Thread(target=run, name="mlx-engine", daemon=True).start()

    def wait(until: float) -> None:
        while not ended.wait(0.5) and engine.failure is None and time.monotonic() < until:
            pass

    try:
        wait(float("inf"))
    except KeyboardInterrupt:
        if engine.heartbeat is not None:
            engine.heartbeat.ask_rank0_to_stop()
            try:  # rank 0's drain, then its stop; a second signal ends this rank at once
                wait(time.monotonic() + config.shutdown_timeout + 5)
            except KeyboardInterrupt:
                pass
    why = failures[0] if failures else f"error: {engine.failure.message}" if engine.failure is not None else None
    if why is not None:  # said on stderr, which mlx.launch passes on
        print(why, file=sys.stderr, flush=True)
    os._exit(1 if why is not None else 0)


if __name__ == "__main__":
    main()
