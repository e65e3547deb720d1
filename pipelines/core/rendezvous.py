"""torchrun's c10d rendezvous, with a fresh key space in the workers' store for each rendezvous round.

torchrun's agent keeps one key-value store (MASTER_ADDR:MASTER_PORT) for as long as it runs, and the
workers of every round meet there under the same keys. After a restart the new processes can read the
addresses that the dead round's processes had published for gloo or NCCL, and their first collective fails
("Connection refused") or hangs until the timeout: 7 of 9 runs of `tests/restart_worker.py` (two processes
on loopback, three restarts, torch 2.13) did without this backend, 0 of 46 with it. A key space per restart
(TORCHELASTIC_RESTART_COUNT) works on one node only: each node's agent counts only its own restarts.

So the launcher's agents use this backend: the c10d rendezvous itself, plus one step once the nodes have met.
Node 0's agent draws a key for the round and writes it into the round's own (prefixed) rendezvous store;
every agent reads it back and puts it into its workers' environment. The workers then join the process group
through the same store seen under that key (`workers_store`), so no round reads another's keys. The store
stays where torchrun keeps it, in node 0's agent, so a worker that exits early takes nothing down with it.
Under a torchrun typed by hand on one node the workers take a key space per restart instead.
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import (RendezvousHandler, RendezvousInfo, RendezvousParameters,
                                                  rendezvous_handler_registry)

ROUND_VARIABLE = "PIPELINES_RDZV_ROUND"  # the workers' key for their round
_ROUND_KEY = "pipelines/round"


class FreshRoundsRendezvous(RendezvousHandler):
    """A c10d rendezvous handler that also agrees, each round, on the workers' key (`ROUND_VARIABLE`)."""

    def __init__(self, c10d: RendezvousHandler, backend: str) -> None:
        self._c10d, self._backend = c10d, backend

    def next_rendezvous(self) -> RendezvousInfo:
        info = self._c10d.next_rendezvous()
        if info.rank == 0:
            info.store.set(_ROUND_KEY, uuid.uuid4().hex)
        # The agent starts its workers with its own environment under torchrun's variables.
        os.environ[ROUND_VARIABLE] = info.store.get(_ROUND_KEY).decode()
        return info

    def get_backend(self) -> str:
        return self._backend

    @property
    def use_agent_store(self) -> bool:
        return self._c10d.use_agent_store

    def is_closed(self) -> bool:
        return self._c10d.is_closed()

    def set_closed(self) -> None:
        self._c10d.set_closed()

    def num_nodes_waiting(self) -> int:
        return self._c10d.num_nodes_waiting()

    def get_run_id(self) -> str:
        return self._c10d.get_run_id()

    def shutdown(self) -> bool:
        return self._c10d.shutdown()


def _create(params: RendezvousParameters) -> RendezvousHandler:
    c10d = RendezvousParameters("c10d", params.endpoint, params.run_id, params.min_nodes, params.max_nodes,
                                params.local_addr, **params.config)
    return FreshRoundsRendezvous(rendezvous_handler_registry.create_handler(c10d), params.backend)


def register(backend: str) -> None:
    """Make this rendezvous torchrun's backend `backend` in this process (the agent's). The launcher names it
    (pipelines/core/launch.py, whose command line asks torchrun for it)."""
    rendezvous_handler_registry.register(backend, _create)


def workers_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store | None:
    """This worker's view of torchrun's store for the process group: the round's key space when the
    launcher's agent started it, or under a torchrun typed by hand on one node, whose single agent counts
    every restart (TORCHELASTIC_RESTART_COUNT); None (torchrun's env:// store as it is) under a torchrun
    typed by hand on several nodes, where only the agent whose worker died counts a restart."""
    round_key = os.environ.get(ROUND_VARIABLE)
    if round_key is None and os.environ.get("GROUP_WORLD_SIZE") == "1":
        round_key = f"restart-{os.environ['TORCHELASTIC_RESTART_COUNT']}"
    if round_key is None:
        return None
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # else rank 0 hosts it (torchrun's rule)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=rank == 0 and not agent_hosts, timeout=timeout)
    return dist.PrefixStore(f"round/{round_key}", store)
