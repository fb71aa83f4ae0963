"""The server's options, declared once: each ServerConfig field carries its default, help, check and
environment variable, and serve.py's command line is generated from them.

Every flag `--some-flag` also reads HOLO_SOME_FLAG (the flag wins; an empty value counts as unset).
--host and --port also read HOST and PORT, the names documented before HOLO_HOST and HOLO_PORT.
Sizes are in MiB, as on the command line; the properties give bytes.
"""

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path

from .image import MAX_PIXELS, MAX_SIDE


def at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = "int"  # argparse says "invalid int value: 'x'" for text that is no number
    return parse


def seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def days(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of days, got {text}")
    return value


def budget(text: str) -> int | None:
    """A token budget: N >= 0, or -1 for none (None)."""
    value = int(text)
    if value < -1:
        raise argparse.ArgumentTypeError(f"must be -1 (no limit) or at least 0, got {value}")
    return None if value == -1 else value


budget.__name__ = "int"  # argparse says "invalid int value: 'x'" for text that is no number


def names(text: str) -> tuple[str, ...]:
    """A comma-separated list: "a, b," -> ("a", "b")."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def model_names(text: str) -> tuple[str, ...]:
    """Model ids separated by commas or spaces (no id has either): "a, b c" -> ("a", "b", "c")."""
    return tuple(name for name in re.split(r"[,\s]+", text) if name)


class Several(argparse.Action):
    """A flag given one or more values (`--served-model-name a b c`), each parsed to a tuple: joined."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, tuple(item for value in values for item in value))


SWITCH_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                 "off": False}


def switch(text: str) -> bool:
    """An on/off flag's environment value."""
    try:
        return SWITCH_VALUES[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"must be 1/0, true/false, yes/no or on/off, got {text!r}") from None


def option(default, help: str, *, parse: Callable[[str], object] = str, metavar: str = "N",
           also_env: tuple[str, ...] = (), several: bool = False):
    """A ServerConfig field with its flag; a bool default makes an on/off flag (store_true); `several`
    lets the flag take one or more values (its environment variable lists them as `parse` splits)."""
    return field(default=default, metadata={
        "help": help, "parse": switch if isinstance(default, bool) else parse, "metavar": metavar,
        "also_env": also_env, "several": several})


def mib(value: float) -> int:
    return int(value * 2**20)


@dataclass(frozen=True)
class ServerConfig:
    model: str | None = option(None, "converted model folder; make one with `python -m convert`", metavar="PATH")
    host: str = option("127.0.0.1", "bind address; one containing ':' binds IPv6", metavar="ADDR",
                       also_env=("HOST",))
    port: int = option(8000, "port; 0 picks a free one", parse=int, also_env=("PORT",))
    next_free_port: bool = option(False, "if the port is taken, use the next free one instead of exiting")
    max_side: int | None = option(None, "longest image side before smart_resize; 0 disables (default: the "
                                  f"family's: {MAX_SIDE} for Holo1.5, none for Holo2)", parse=at_least(0))
    max_pixels: int | None = option(None, "pixel budget per image after resize; 0: the checkpoint's own ceiling "
                                    f"(default: the family's: {MAX_PIXELS:,} for Holo1.5, the checkpoint's for "
                                    "Holo2)", parse=at_least(0))
    max_model_len: int | None = option(None, "context length limit (default: the model's)", parse=at_least(2))
    api_key: str | None = option(None, "require `Authorization: Bearer KEY` or `x-api-key: KEY` on /v1, /metrics "
                                 "and the schema pages", metavar="KEY")
    served_model_name: tuple[str, ...] = option((), "model ids accepted, the first reported in answers (default: "
                                                "the folder name); the variable separates them by commas or spaces",
                                                parse=model_names, metavar="NAME", several=True)
    allow_remote_images: bool = option(False, "let clients pass http(s) image URLs for the server to fetch")
    allow_local_images: bool = option(False, "let clients pass paths of image files on this machine")
    max_request_mb: float = option(64.0, "largest request body accepted, in MiB (larger: 413)", parse=float,
                                   metavar="MB")
    max_image_mb: float = option(20.0, "largest single encoded image accepted, in MiB (larger: 413)", parse=float,
                                 metavar="MB")
    max_num_seqs: int = option(8, "most sequences decoding together in the batch", parse=at_least(1))
    max_queue: int = option(64, "requests allowed to wait for a slot; beyond it: 429", parse=at_least(1))
    prefix_cache_mb: int = option(1024, "MiB for reusable prompt caches (system prompts, history, screenshots: "
                                  "KV and recurrent-state snapshots); 0 disables", parse=at_least(0), metavar="MB")
    vision_cache_mb: int = option(256, "MiB for encoded screenshots, reused when the same image comes again; "
                                  "0 disables", parse=at_least(0), metavar="MB")
    map_coordinates: bool = option(False, "rewrite x/y and boxes of JSON answers about an image into the original "
                                   "image's pixels unless a request's holo.map_coordinates says otherwise (for "
                                   "clients that cannot send extra fields)")
    responses_store: int = option(256, "Responses API responses kept (store: true) for previous_response_id and "
                                  "GET /v1/responses/{id}, the oldest dropped first; 0 stores none and writes nothing",
                                  parse=at_least(0), metavar="N")
    responses_max_age_days: float = option(30.0, "days a stored response is kept", parse=days, metavar="DAYS")
    responses_db: str | None = option(None, "SQLite file of the stored responses (default: "
                                      "$XDG_STATE_HOME/holo-mlx/responses.sqlite3, ~/.local/state/holo-mlx/... when "
                                      "unset; on macOS ~/Library/Application Support/holo-mlx/responses.sqlite3)",
                                      metavar="PATH")
    default_max_tokens: int = option(4096, "max_tokens of a request that sets none; requests may ask for more, "
                                     "up to the context", parse=at_least(1))
    reasoning_budget: int | None = option(None, "most reasoning tokens of a thinking model before `</think>` is "
                                          "forced, for requests that set no thinking_token_budget; 0: thinking off; "
                                          "-1: no limit (default)", parse=budget)
    allowed_hosts: tuple[str, ...] = option((), "comma-separated Host names accepted besides localhost, 127.0.0.1, "
                                            "[::1] and --host; '*' accepts any (guards against DNS rebinding)",
                                            parse=names, metavar="NAMES")
    enable_docs: bool = option(False, "serve /openapi.json, /docs and /redoc; they need the API key when one is set")
    max_embedding_tokens: int = option(300_000, "most tokens of all inputs of one embeddings request together; "
                                       "beyond it: 400. Each input must also fit the context", parse=at_least(1))
    embedding_chunk: int = option(512, "tokens per embedding work unit, a chunk of a long input or a batch of short "
                                  "ones; generation steps run between units", parse=at_least(1))
    pipeline: bool = option(False, "under mlx.launch: give each rank a run of whole decoder layers (pipeline "
                            "parallelism) instead of a slice of every layer (tensor parallelism)")
    join_timeout: float = option(60.0, "under mlx.launch: seconds a rank waits for the others to join before it "
                                 "exits saying so (MLX itself would wait forever)", parse=seconds, metavar="S")
    rank_timeout: float = option(10.0, "under mlx.launch: seconds without a heartbeat after which a rank counts as "
                                 "lost (it hangs, or its machine or link is down; a rank whose process ends is "
                                 "seen at once)", parse=seconds, metavar="S")
    shutdown_timeout: float = option(30.0, "on SIGTERM or Ctrl-C (to the server, mlx.launch or any rank): seconds "
                                     "requests in flight may take to finish before they are cut", parse=seconds,
                                     metavar="S")
    log_level: str = option("info", "uvicorn's log level: critical, error, warning, info, debug or trace",
                            metavar="LEVEL")

    @property
    def model_name(self) -> str:
        """The id answers report: the first served name."""
        return self.model_names[0]

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every id a request may name (/v1/models lists them)."""
        return self.served_model_name or (Path(self.model.rstrip("/")).name,)

    @property
    def resize(self) -> dict[str, int | None]:
        """The image limits given to the prompt builder (those left out are the family's): 0 on the
        command line is None (no limit of ours)."""
        given = {"max_side": self.max_side, "max_pixels": self.max_pixels}
        return {name: value or None for name, value in given.items() if value is not None}

    @property
    def responses_db_path(self) -> Path:
        return Path(self.responses_db).expanduser() if self.responses_db else default_responses_db()

    @property
    def responses_max_age_s(self) -> float:
        return self.responses_max_age_days * 86400

    @property
    def max_request_bytes(self) -> int:
        return mib(self.max_request_mb)

    @property
    def max_image_bytes(self) -> int:
        return mib(self.max_image_mb)

    @property
    def prefix_cache_bytes(self) -> int:
        return mib(self.prefix_cache_mb)

    @property
    def vision_cache_bytes(self) -> int:
        return mib(self.vision_cache_mb)


def default_responses_db() -> Path:
    """Where the stored responses live by default: the per-user state folder (XDG's on Linux, as
    platformdirs' user_state_dir puts it; Application Support on macOS)."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "holo-mlx" / "responses.sqlite3"
    state = os.environ.get("XDG_STATE_HOME", "")
    folder = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"  # XDG: relative is unset
    return folder / "holo-mlx" / "responses.sqlite3"


def flag(spec: Field) -> str:
    return "--" + spec.name.replace("_", "-")


def env_names(spec: Field) -> tuple[str, ...]:
    """The environment variables an option reads, the first one set winning."""
    return ("HOLO_" + spec.name.upper(), *spec.metadata["also_env"])


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    """serve.py's command line: a flag per ServerConfig field, defaulting to its environment variable
    when one is set (a bad value there exits like a bad flag, naming the variable)."""
    parser = argparse.ArgumentParser(description="OpenAI-compatible server for Holo models on MLX")
    for spec in fields(ServerConfig):
        parse, env = spec.metadata["parse"], env_names(spec)
        default = spec.default
        if given := next((name for name in env if environ.get(name)), None):
            try:
                default = parse(environ[given])
            except argparse.ArgumentTypeError as error:
                parser.error(f"{given}={environ[given]!r}: {error}")
            except ValueError:
                parser.error(f"{given}={environ[given]!r}: not a valid {parse.__name__}")
        help = f"{spec.metadata['help']} (env {' or '.join(env)})"
        if isinstance(spec.default, bool):
            parser.add_argument(flag(spec), action="store_true", default=default, help=help)
        elif spec.metadata["several"]:
            parser.add_argument(flag(spec), nargs="+", action=Several, type=parse, default=default,
                                metavar=spec.metadata["metavar"], help=help)
        else:
            parser.add_argument(flag(spec), type=parse, default=default, metavar=spec.metadata["metavar"],
                                help=help)
    return parser


def parse_config(argv: list[str] | None = None, environ: Mapping[str, str] = os.environ) -> ServerConfig:
    return ServerConfig(**vars(build_parser(environ).parse_args(argv)))
