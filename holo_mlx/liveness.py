"""Whether every rank is still there, told outside the collectives.

MLX's collectives have no timeout: a rank that dies, hangs or drops off the network can leave the
others waiting inside one forever (ml-explore/mlx#3910, #4278), and mlx.launch only notices a rank
whose process ended. So each rank other than 0 keeps a TCP connection to rank 0 and both ends send
a byte on it every second: a closed connection, or silence longer than the timeout, is a lost rank.
Rank 0 then reports it (its engine refuses work and fails what it holds) and closes every
connection, so that the other ranks, finding rank 0 gone, end themselves.

The same connections let idle ranks sleep: a rank other than 0 enters each step's exchange only
once rank 0 has sent it a step byte, which rank 0 sends just before its own. While rank 0 has no
work it sends none, and the others wait in a blocking read instead of spinning in a collective.

They also carry orderly stops. A rank other than 0 that gets SIGTERM or SIGINT sends rank 0 a stop
byte; rank 0 then stops as on its own SIGTERM (requests in flight finish, bounded by
--shutdown-timeout), and its last exchange stops the other ranks. A rank whose parent (mlx.launch)
is gone, killed by SIGTERM, which mlx.launch does not pass on, stops itself the same way.

Rank 0 listens on its own address in the ring's hostfile (the one the other ranks already reach)
or on JACCL's coordinator address; its port reaches the others in one all-sum at start-up.
"""

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx

from .distributed import RanksMissing, ring_hosts

BEAT_S = 1.0
BEAT, STEP, STOP = b".", b"s", b"q"
log = logging.getLogger("holo_mlx.liveness")


def rank0_host() -> str | None:
    """The address the other ranks reach rank 0 at, when the backend names one."""
    if hosts := ring_hosts():
        return hosts[0].rsplit(":", 1)[0].strip("[]")
    if coordinator := os.environ.get("MLX_JACCL_COORDINATOR"):
        return coordinator.rsplit(":", 1)[0].strip("[]")
    return None


@dataclass
class Peer:
    rank: int
    host: str
    heard: float  # time.monotonic() of its last beat

    def __str__(self) -> str:
        return f"rank {self.rank} ({self.host})"


class Heartbeat:
    """A thread that beats to, and listens for, the other end(s): rank 0 every other rank, the
    others rank 0. `on_lost(reason)` runs once, on that thread, when one is lost."""

    def __init__(self, group: mx.distributed.Group, timeout: float, on_lost: Callable[[str], None],
                 stop_self: Callable[[str], None]):
        """`stop_self(reason)` stops this process in order: on rank 0, when another rank asks it to;
        on any rank, when its parent process is gone."""
        self.rank, self.size, self.timeout, self.on_lost = group.rank(), group.size(), timeout, on_lost
        self.stop_self, self.parent = stop_self, os.getppid()
        self.peers: dict[socket.socket, Peer] = {}
        self.stopped = False
        self.lost = threading.Event()  # set once on_lost has run
        self.steps = threading.Semaphore(0)  # a rank other than 0: rank 0's step bytes not yet waited for
        host = rank0_host()
        listener = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET) \
            if self.rank == 0 and host else None
        # Every rank takes part in this all-sum, whether or not a heartbeat can run here.
        port = mx.distributed.all_sum(mx.array(listener.getsockname()[1] if listener else 0), group=group,
                                      stream=mx.cpu).item()
        if not port:
            log.warning("no heartbeat between the ranks (the backend names no address for rank 0): "
                        "a rank that dies or hangs may leave the server waiting")
            return
        if listener is None:
            self._connect(host, port)
        self.address = f"{host}:{port}"
        self.accept_by = time.monotonic() + timeout
        threading.Thread(target=self._run, args=(listener,), name="heartbeat", daemon=True).start()

    def stop(self) -> None:
        """Watch no more (a shutdown): the connections stay open until the process ends."""
        self.stopped = True

    def announce_step(self) -> None:
        """Rank 0, before each step's exchange: wake every other rank for it."""
        for connection in list(self.peers):
            try:
                connection.sendall(STEP)
            except OSError:
                pass  # the heartbeat thread reports the lost rank

    def ask_rank0_to_stop(self) -> None:
        """A rank other than 0, on a stop signal: rank 0 stops every rank once requests in flight end."""
        for connection in list(self.peers):
            try:
                connection.sendall(STOP)
            except OSError:
                pass  # rank 0 is gone already

    def await_step(self) -> bool:
        """A rank other than 0, before each step's exchange: wait for rank 0's step byte. False once
        rank 0 is lost (no step will come)."""
        while not self.steps.acquire(timeout=BEAT_S):
            if self.stopped:
                return False
        return not self.stopped

    def _connect(self, host: str, port: int) -> None:
        try:
            connection = socket.create_connection((host, port), timeout=self.timeout)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a step byte goes at once
            connection.sendall(f"{self.rank} {socket.gethostname()}\n".encode())
        except OSError as error:
            raise RanksMissing(f"rank {self.rank} cannot reach rank 0's heartbeat at {host}:{port}: {error}") from error
        self.peers[connection] = Peer(0, host, time.monotonic())

    def _accept(self, listener: socket.socket) -> None:
        connection, _ = listener.accept()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.settimeout(BEAT_S)  # a rank says hello at once: nothing else may stall the beats
        hello = b""
        try:  # "RANK HOST\n", perhaps with its first beats behind it
            while b"\n" not in hello and len(hello) < 300:
                hello += connection.recv(300) or b"\n"
            rank, host = hello.split(b"\n", 1)[0].decode().split(maxsplit=1)
            connection.settimeout(self.timeout)  # a peer that reads nothing must not stall the beats for long
            self.peers[connection] = Peer(int(rank), host, time.monotonic())
        except (OSError, ValueError):
            connection.close()  # not a rank of ours

    def _run(self, listener: socket.socket | None) -> None:
        next_beat = 0.0
        while not self.stopped:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + BEAT_S
                for connection, peer in list(self.peers.items()):
                    try:
                        connection.sendall(BEAT)
                    except OSError:
                        return self._lose(f"{peer} closed its heartbeat connection: {self._why_closed}")
            accepting = listener is not None and len(self.peers) < self.size - 1
            readable, _, _ = select.select([*self.peers, *([listener] if accepting else [])], [], [], BEAT_S / 4)
            for connection in readable:
                if connection is listener:
                    self._accept(listener)
                    continue
                try:
                    beats = connection.recv(4096)
                except OSError:
                    beats = b""
                if not beats:
                    return self._lose(f"{self.peers[connection]} closed its heartbeat connection: {self._why_closed}")
                self.peers[connection].heard = time.monotonic()
                for _ in range(beats.count(STEP)):
                    self.steps.release()
                if STOP in beats:
                    self.stop_self(f"{self.peers[connection]} got a stop signal")
            if self.parent and os.getppid() != self.parent:
                self.parent = 0  # once
                # Its output went to the launcher: writing to the closed pipes would fail every log line.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1), os.dup2(devnull, 2)
                self.stop_self("its launcher (the parent process) is gone")
            now = time.monotonic()
            for peer in self.peers.values():
                if now - peer.heard > self.timeout:
                    return self._lose(f"{peer} sent no heartbeat for {self.timeout:g} s: it hangs, or its machine "
                                      "or the link to it is down")
            if accepting and now > self.accept_by:
                missing = sorted({*range(1, self.size)} - {peer.rank for peer in self.peers.values()})
                return self._lose(f"rank(s) {missing} never connected to rank 0's heartbeat at {self.address}")

    @property
    def _why_closed(self) -> str:
        return "its process ended" if self.rank == 0 else "it ended, or counted this rank as lost"

    def _lose(self, reason: str) -> None:
        if self.stopped:
            return
        self.stopped = True
        for connection in self.peers:  # the other ranks find rank 0 gone and end themselves
            connection.close()
        log.error("%s", reason)
        self.on_lost(reason)
        self.lost.set()
        self.steps.release()  # a rank waiting for rank 0's next step wakes and finds it lost
