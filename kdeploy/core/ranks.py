"""Which process of a ``torchrun`` job this is, read from the environment torchrun sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); torch-free, so the engine and the stages can
ask without importing torch. A plain ``kdeploy`` process is rank 0 of a world of 1.

The communication itself (process group, DDP, collectives) is torch's and lives in
``kdeploy.train.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Rank:
    rank: int = 0  # global rank: 0 .. world_size - 1 over every node
    world_size: int = 1
    local_rank: int = 0  # rank on this node: which GPU it takes

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run directory, logs and shows progress."""
        return self.rank == 0


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw not in (None, "") else default
    except ValueError:
        return default


def current() -> Rank:
    """This process's place in the job (rank 0 of 1 outside torchrun)."""
    world = max(1, _int_env("WORLD_SIZE", 1))
    rank = _int_env("RANK", 0)
    if not 0 <= rank < world:
        rank = 0
    return Rank(rank=rank, world_size=world, local_rank=_int_env("LOCAL_RANK", 0))


def is_main() -> bool:
    return current().main
