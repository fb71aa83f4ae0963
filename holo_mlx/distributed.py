"""One model across the ranks of `mlx.launch` (mx.distributed): joining them, what each rank holds
for /health, and the start-up check that every rank got the same flags and model.

How the model is split is its own (models/: `shard(group)`, tensor parallelism as mlx-lm's
`shard()`; `pipeline(group)`, pipeline parallelism as its `pipeline()`); loading.py asks for one
of them before the weights are evaluated.
"""

import faulthandler
import hashlib
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .folders import resolve_path
from .models.base import ShardingError

JOIN_TIMEOUT_S = 60.0


class RanksMissing(RuntimeError):
    """A rank found no peer to join, or cannot reach rank 0's heartbeat: the group cannot serve."""


def launched_rank() -> int | None:
    """This process's rank as mlx.launch (or mpirun) set it, known before the group is joined; None
    when no launcher started it."""
    for name in ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(name):
            return int(os.environ[name])
    return None


def world(join_timeout: float = JOIN_TIMEOUT_S) -> mx.distributed.Group | None:
    """The group of ranks this process was launched in by mlx.launch, or None when it runs alone
    (joined once: later calls return it at once). RanksMissing when a rank finds no peer.

    MLX's init waits forever for a rank that never starts, holding the GIL, so no Python code of
    this process runs meanwhile: only faulthandler's watchdog (a C thread) can end the wait, by
    exiting after `join_timeout` seconds."""
    if not mx.distributed.is_available():
        return None
    launched = launched_rank() is not None
    if launched:
        print(f"holo-mlx: joining the other ranks ({launch_description()}); this process exits if they have not "
              f"all joined within {join_timeout:g} s", file=sys.stderr, flush=True)
        faulthandler.dump_traceback_later(join_timeout, exit=True)
    try:
        group = mx.distributed.init()
    except Exception as error:  # a rank that finds no peer gives up by itself: say why
        raise RanksMissing(f"could not join the other ranks ({launch_description()}): {error}") from error
    finally:
        if launched:
            faulthandler.cancel_dump_traceback_later()
    return group if group.size() > 1 else None


def ring_hosts() -> list[str] | None:
    """Each rank's first address in the ring backend's hostfile ("ip:port"), when there is one."""
    path = os.environ.get("MLX_HOSTFILE")
    if not path:
        return None
    try:
        hosts = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return [host[0] if isinstance(host, list) else host for host in hosts]


def launch_description() -> str:
    if (hosts := ring_hosts()) is not None:
        return f"ring backend, rank {launched_rank()} of {len(hosts)}: {', '.join(hosts)}"
    if coordinator := os.environ.get("MLX_JACCL_COORDINATOR"):
        return f"JACCL backend, coordinator {coordinator}"
    return f"rank {launched_rank()}"


@dataclass(frozen=True)
class Rank:
    """One rank as /health reports it."""

    rank: int
    host: str
    weight_bytes: int


def weight_bytes(parameters) -> int:
    """Bytes of a parameter tree (a module's `parameters()`, or part of it)."""
    return sum(parameter.nbytes for _, parameter in tree_flatten(parameters))


def ranks(model: nn.Module, group: mx.distributed.Group | None) -> list[Rank]:
    """Every rank's host and weight bytes (gathered from all ranks: a collective, every rank calls it)."""
    own = Rank(0 if group is None else group.rank(), socket.gethostname(), weight_bytes(model.parameters()))
    if group is None:
        return [own]
    size = group.size()
    # Fixed-width rows so one all_gather carries them: the byte count, then the host name's bytes.
    row = mx.zeros(65, dtype=mx.int64)
    name = own.host.encode()[:64]
    row[0] = own.weight_bytes
    row[1:1 + len(name)] = mx.array(list(name), dtype=mx.int64)
    rows = mx.distributed.all_gather(row[None], group=group, stream=mx.cpu).reshape(size, 65).tolist()
    return [Rank(index, bytes(value for value in values[1:] if value).decode(), int(values[0]))
            for index, values in enumerate(rows)]


def same_everywhere(config, group: mx.distributed.Group | None) -> None:
    """Refuse to start when a rank was given other flags or another model than rank 0 (a ShardingError
    on every rank): they would not make the same passes."""
    if group is None:
        return
    folder = resolve_path(config.model)
    files = sorted((file.name, file.stat().st_size) for file in folder.glob("*.safetensors"))
    # The folder's path may differ from machine to machine; its config and weight files may not.
    # Rank 0 alone keeps the stored responses, in a file whose path may differ from machine to machine.
    settings = {name: value for name, value in asdict(config).items() if name != "responses_db"}
    described = {**settings, "model": [(folder / "config.json").read_text(), files]}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).digest()
    digests = mx.distributed.all_gather(mx.array(list(digest), dtype=mx.uint8)[None], group=group).tolist()
    others = [rank for rank, row in enumerate(digests) if row != digests[0]]
    if others:
        raise ShardingError(f"rank(s) {others} started with other flags or another model than rank 0")
