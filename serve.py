"""Serve a converted Holo1.5 model with an OpenAI-compatible API.

    python serve.py --model models/Holo1.5-7B-mlx-8bit
    # then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")

Most flags have an environment-variable fallback; docs/API.md lists them all.
"""

import argparse
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path


def env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def at_least(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="OpenAI-compatible server for Holo1.5 on MLX")
    parser.add_argument("--model", default=os.environ.get("HOLO_MODEL"),
                        help="converted model folder (env HOLO_MODEL); make one with `python -m convert`")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="bind address (env HOST)")
    parser.add_argument("--port", type=int, default=env_int("PORT", 8000),
                        help="port (env PORT); 0 picks a free one")
    parser.add_argument("--next-free-port", action="store_true",
                        help="if the port is taken, use the next free one instead of exiting")
    parser.add_argument("--max-side", type=at_least(0), default=env_int("HOLO_MAX_SIDE", 1440),
                        help="longest image side before smart_resize (env HOLO_MAX_SIDE); 0 disables")
    parser.add_argument("--max-pixels", type=at_least(0), default=env_int("HOLO_MAX_PIXELS", 1_003_520),
                        help="pixel budget per image after resize (env HOLO_MAX_PIXELS); 0: the checkpoint's "
                             "own ceiling")
    parser.add_argument("--max-model-len", type=at_least(2), default=env_int("HOLO_MAX_MODEL_LEN", None),
                        help="context length limit (env HOLO_MAX_MODEL_LEN; default: the model's)")
    parser.add_argument("--api-key", default=os.environ.get("HOLO_API_KEY"),
                        help="require `Authorization: Bearer KEY` on /v1 (env HOLO_API_KEY)")
    parser.add_argument("--served-model-name", default=os.environ.get("HOLO_SERVED_MODEL_NAME"),
                        help="model id reported and accepted (default: the folder name)")
    parser.add_argument("--allow-remote-images", action="store_true",
                        help="let clients pass http(s) image URLs for the server to fetch")
    parser.add_argument("--allow-local-images", action="store_true",
                        help="let clients pass paths of image files on this machine")
    parser.add_argument("--max-request-mb", type=float, default=64.0,
                        help="largest request body accepted, in MiB (larger: 413)")
    parser.add_argument("--max-image-mb", type=float, default=20.0,
                        help="largest single encoded image accepted, in MiB (larger: 413)")
    parser.add_argument("--max-num-seqs", type=at_least(1), default=env_int("HOLO_MAX_NUM_SEQS", 8),
                        help="most sequences decoding together in the batch (env HOLO_MAX_NUM_SEQS)")
    parser.add_argument("--max-queue", type=at_least(1), default=env_int("HOLO_MAX_QUEUE", 64),
                        help="requests allowed to wait for a slot; beyond it: 429 (env HOLO_MAX_QUEUE)")
    parser.add_argument("--prefix-cache-mb", type=at_least(0), default=env_int("HOLO_PREFIX_CACHE_MB", 1024),
                        help="memory for reusable prompt KV (system prompts, history, screenshots); 0 disables")
    parser.add_argument("--vision-cache-mb", type=at_least(0), default=env_int("HOLO_VISION_CACHE_MB", 256),
                        help="memory for encoded screenshots, reused when the same image comes again; 0 disables")
    parser.add_argument("--default-max-tokens", type=at_least(1), default=env_int("HOLO_DEFAULT_MAX_TOKENS", 4096),
                        help="max_tokens of a request that sets none (env HOLO_DEFAULT_MAX_TOKENS); requests may "
                             "ask for more, up to the context")
    parser.add_argument("--allowed-hosts", default=os.environ.get("HOLO_ALLOWED_HOSTS", ""),
                        help="comma-separated Host names accepted besides localhost, 127.0.0.1, [::1] and --host "
                             "(env HOLO_ALLOWED_HOSTS); '*' accepts any (guards against DNS rebinding)")
    parser.add_argument("--enable-docs", action="store_true", default=os.environ.get("HOLO_ENABLE_DOCS") == "1",
                        help="serve /openapi.json, /docs and /redoc (env HOLO_ENABLE_DOCS=1); they need the API "
                             "key when one is set")
    parser.add_argument("--max-embedding-tokens", type=at_least(1),
                        default=env_int("HOLO_MAX_EMBEDDING_TOKENS", 300_000),
                        help="most tokens of all inputs of one embeddings request together; beyond it: 400 "
                             "(env HOLO_MAX_EMBEDDING_TOKENS). Each input must also fit the context")
    parser.add_argument("--embedding-chunk", type=at_least(1), default=env_int("HOLO_EMBEDDING_CHUNK", 512),
                        help="tokens per embedding work unit, a chunk of a long input or a batch of short ones; "
                             "generation steps run between units (env HOLO_EMBEDDING_CHUNK)")
    parser.add_argument("--log-level", default=os.environ.get("HOLO_LOG_LEVEL", "info"))
    return parser.parse_args(argv)


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
    args = parse_args(argv)
    if not args.model:
        sys.exit("error: no model given: pass --model PATH (or set HOLO_MODEL) to a folder made by "
                 "`python -m convert --hf-path Hcompany/Holo1.5-7B`")
    if not Path(args.model).is_dir():
        sys.exit(f"error: model folder {args.model} does not exist; create it with "
                 f"`python -m convert --hf-path Hcompany/Holo1.5-7B --mlx-path {args.model}`")

    import logging

    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")

    from holo_mlx.server.app import Settings, create_app

    settings = Settings(
        model=args.model, host=args.host, port=args.port, max_side=args.max_side or None,
        max_pixels=args.max_pixels or None, api_key=args.api_key, served_model_name=args.served_model_name,
        allow_remote_images=args.allow_remote_images, allow_local_images=args.allow_local_images,
        max_model_len=args.max_model_len, max_body_bytes=int(args.max_request_mb * 2**20),
        max_image_bytes=int(args.max_image_mb * 2**20), max_num_seqs=args.max_num_seqs,
        max_queue=args.max_queue, prefix_cache_bytes=args.prefix_cache_mb << 20,
        vision_cache_bytes=args.vision_cache_mb << 20, default_max_tokens=args.default_max_tokens,
        allowed_hosts=[name.strip() for name in args.allowed_hosts.split(",") if name.strip()],
        enable_docs=args.enable_docs, max_embedding_tokens=args.max_embedding_tokens,
        embedding_chunk=args.embedding_chunk,
    )
    sock = bind(args.host, args.port, args.next_free_port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"holo-mlx: serving {settings.model_name} at http://{shown}:{port}/v1 (model loading in the background)",
          flush=True)
    config = uvicorn.Config(create_app(settings), log_level=args.log_level)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
