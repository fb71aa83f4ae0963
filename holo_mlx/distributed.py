"""One model across the ranks of `mlx.launch` (mx.distributed): tensor parallelism as mlx-lm's
`shard()` does it, or pipeline parallelism as its `pipeline()` does.

Each decoder layer is split across the ranks: q/k/v and the MLP's gate/up by output columns,
o_proj and down_proj by input rows with an all-sum after them, so a layer costs two all-sums of
the hidden states per pass. Heads are divided, so the KV-head count must be a multiple of the rank
count. MoE blocks split every expert the same way (the router stays whole) and all-sum their
output. The vision tower, the embedding, the final norm and lm_head stay whole on every rank:
each rank encodes images and samples the same tokens itself, so nothing but the two all-sums per
layer crosses the link (docs/scale-out.md weighs this).

Pipeline parallelism gives each rank a run of whole layers instead (the last rank the first
layers, rank 0 the last, as mlx-lm orders them): a pass goes from rank to rank once, one hidden
state per token crossing each link, then rank 0's output is gathered to every rank. It moves
fewer bytes than tensor parallelism but runs the ranks one after another.

Sharding runs on the lazily loaded weights before they are evaluated, so a rank reads each tensor
once and keeps only its slice (or its layers): no process ever holds the whole decoder.
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
from mlx.nn.layers.distributed import shard_inplace, shard_linear
from mlx.utils import tree_flatten

from .models.layers import MLP


JOIN_TIMEOUT_S = 60.0


class ShardingError(ValueError):
    pass


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


def check_shardable(config, ranks: int) -> None:
    """The heads and MLP widths of a text config divide over `ranks`; else a ShardingError saying what does not."""
    for field in ("num_key_value_heads", "num_attention_heads", "intermediate_size", "moe_intermediate_size"):
        value = getattr(config, field, None)
        if value and value % ranks:
            raise ShardingError(f"{field} = {value} does not split over {ranks} ranks: tensor parallelism "
                                f"needs a rank count that divides it (this model takes at most "
                                f"{config.num_key_value_heads} ranks, a divisor of its KV heads)")


def tensor_parallel(model: nn.Module, group: mx.distributed.Group) -> None:
    """Split every decoder layer of `model` (a models.vlm.Model) across `group`, in place."""
    ranks = group.size()
    check_shardable(model.config.text_config, ranks)
    for layer in model.language_model.model.layers:
        attention = layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attention, name, shard_linear(getattr(attention, name), "all-to-sharded", group=group))
        attention.o_proj = shard_linear(attention.o_proj, "sharded-to-all", group=group)
        attention.n_heads //= ranks
        attention.n_kv_heads //= ranks
        mlp = layer.mlp
        if isinstance(mlp, MLP):
            mlp.gate_proj = shard_linear(mlp.gate_proj, "all-to-sharded", group=group)
            mlp.up_proj = shard_linear(mlp.up_proj, "all-to-sharded", group=group)
            mlp.down_proj = shard_linear(mlp.down_proj, "sharded-to-all", group=group)
        else:  # an MoE block: its experts split in place, the block all-sums its output
            experts = mlp.switch_mlp
            shard_inplace(experts.gate_proj, "all-to-sharded", group=group)
            shard_inplace(experts.up_proj, "all-to-sharded", group=group)
            shard_inplace(experts.down_proj, "sharded-to-all", group=group)
            mlp.sharding_group = group


@dataclass(frozen=True)
class PipelineStage:
    """The layers [start, end) one rank runs, and the hand-over between ranks around them."""

    group: mx.distributed.Group
    start: int
    end: int

    @classmethod
    def of(cls, group: mx.distributed.Group, layers: int) -> "PipelineStage":
        """An even split (the lower ranks take one more where it is uneven); rank 0 runs the last layers."""
        rank, size = group.rank(), group.size()
        if layers < size:
            raise ShardingError(f"{layers} decoder layers do not split over {size} pipeline ranks")
        counts = [layers // size + (r < layers % size) for r in range(size)]
        start = sum(counts[rank + 1:])
        return cls(group, start, start + counts[rank])

    def receive(self, x: mx.array) -> mx.array:
        """The hidden states from the rank running the layers before this one's (the input itself on the first)."""
        rank, size = self.group.rank(), self.group.size()
        return x if rank == size - 1 else mx.distributed.recv_like(x, rank + 1, group=self.group)

    def hand_on(self, x: mx.array, last_rows: mx.array | None, caches: list) -> mx.array:
        """Send this rank's output on, then every rank gets rank 0's (the final layer's) output."""
        if self.group.rank() != 0:
            x = mx.distributed.send(x, self.group.rank() - 1, group=self.group)
            for cache in caches:  # evaluating only the caches (a prefill chunk) must still send
                if cache is not None:
                    cache.keys = mx.depends(cache.keys, x)
            if last_rows is not None:  # rank 0's final layer kept each sequence's last row
                x = x[last_rows]
        return mx.distributed.all_gather(x, group=self.group)[:x.shape[0]]


def layer_index(key: str) -> int | None:
    """The decoder layer a (sanitized) weight belongs to, or None."""
    prefix = "language_model.model.layers."
    return int(key[len(prefix):].split(".", 1)[0]) if key.startswith(prefix) else None


def pipeline(model: nn.Module, group: mx.distributed.Group) -> None:
    """Keep this rank's run of decoder layers (the others become None) before the weights are loaded."""
    decoder = model.language_model.model
    stage = PipelineStage.of(group, len(decoder.layers))
    decoder.layers = [layer if stage.start <= index < stage.end else None for index, layer in enumerate(decoder.layers)]
    decoder.stage = stage


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
    from .loading import resolve_path

    folder = resolve_path(config.model)
    files = sorted((file.name, file.stat().st_size) for file in folder.glob("*.safetensors"))
    # The folder's path may differ from machine to machine; its config and weight files may not.
    described = {**asdict(config), "model": [(folder / "config.json").read_text(), files]}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).digest()
    digests = mx.distributed.all_gather(mx.array(list(digest), dtype=mx.uint8)[None], group=group).tolist()
    others = [rank for rank, row in enumerate(digests) if row != digests[0]]
    if others:
        raise ShardingError(f"rank(s) {others} started with other flags or another model than rank 0")
