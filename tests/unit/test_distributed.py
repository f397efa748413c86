"""The pieces of data-parallel training (``kdeploy.train.distributed``, ``kdeploy.core.ranks``)
on a real 2-process gloo group (spawned here, a few seconds), and which stages train on
every rank. The whole pipeline under torchrun is ``tests/e2e/test_distributed.py``."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from kdeploy.core import ranks
from tests.conftest import ROOT, TINY_OVERRIDES

WORKER = """
import json, sys
import numpy as np
import torch
from kdeploy.train import distributed as d

me = d.join()
items = list(range(7))
full = d.sharded(lambda part: np.array([[float(i), 10.0 * i] for i in part]), items)
arr = d.broadcast_array(np.arange(6, dtype=np.float32).reshape(2, 3) if me.main else None)
obj = d.broadcast_object({"from": me.rank})
means = d.mean_over_ranks({"loss": float(me.rank + 1)}, 2)
idx = np.arange(5)
part, weight = d.rank_part(idx)
tiny = d.rank_part(np.arange(1))
model = d.wrap(torch.nn.Linear(2, 1), torch.device("cpu"))
d.leave()
json.dump({"rank": me.rank, "world": me.world_size, "full": full.tolist(), "arr": arr.tolist(),
           "obj": obj, "means": means, "part": part.tolist(), "weight": weight,
           "tiny": [tiny[0].tolist(), tiny[1]], "ddp": type(model).__name__},
          open(sys.argv[1], "w"))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    import os
    import subprocess

    tmp = tmp_path_factory.mktemp("ranks")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        procs.append(
            subprocess.Popen([sys.executable, str(script), str(tmp / f"{rank}.json")], env=env)
        )
    for p in procs:
        assert p.wait(timeout=120) == 0
    return [json.loads((tmp / f"{r}.json").read_text()) for r in range(2)]


def test_sharded_rows_are_gathered_in_item_order(two_ranks):
    want = [[float(i), 10.0 * i] for i in range(7)]
    assert [r["full"] for r in two_ranks] == [want, want]


def test_rank_0_is_broadcast(two_ranks):
    for r in two_ranks:
        assert r["arr"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        assert r["obj"] == {"from": 0}
        assert r["ddp"] == "DistributedDataParallel"


def test_epoch_means_are_over_ranks_and_steps(two_ranks):
    # rank 0 summed 1.0, rank 1 summed 2.0, over 2 steps each: (1 + 2) / (2 * 2)
    assert [r["means"] for r in two_ranks] == [{"loss": 0.75}, {"loss": 0.75}]


def test_global_batch_is_split_and_weighted_to_its_mean(two_ranks):
    parts = [r["part"] for r in two_ranks]
    assert parts == [[0, 1, 2], [3, 4]]  # disjoint, covering the global batch
    x = np.array([0.3, 1.1, 2.0, 5.0, 7.5])  # a per-item loss over the global batch
    weighted = [r["weight"] * x[r["part"]].mean() for r in two_ranks]
    assert np.mean(weighted) == pytest.approx(x.mean())  # what DDP's average gives
    # a 1-item last batch: rank 1 runs an item at weight 0, to join the all-reduce
    assert [r["tiny"] for r in two_ranks] == [[[0], 2.0], [[0], 0.0]]


def test_one_process_is_rank_0_of_1(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert ranks.current() == ranks.Rank(0, 1, 0) and ranks.is_main()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    me = ranks.current()
    assert (me.rank, me.world_size, me.local_rank) == (3, 4, 1)
    assert me.distributed and not me.main


def test_only_the_training_stages_run_on_every_rank():
    from kdeploy.config import load_profile
    from kdeploy.stages import STAGES
    from kdeploy.stages.base import RunOptions, StageEnv

    def distributed(profile: str, *sets: str) -> list[str]:
        p = load_profile(profile, [*TINY_OVERRIDES, *sets]).profile
        env = StageEnv(profile=p, options=RunOptions(), run_dir=Path("."))
        return [s.name for s in STAGES if s(env).enabled() and s(env).distributed()]

    assert distributed("cpu-int8") == ["distill"]
    # a100-int8: 2:4 fine-tuning and QAT train; without fine-tuning epochs they do not
    assert distributed("a100-int8") == ["distill", "sparsify", "quantize"]
    none = ("sparsify.fine_tune.epochs=0", "quantize.fine_tune.epochs=0")
    assert distributed("a100-int8", *none) == ["distill"]
