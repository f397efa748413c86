"""A host run under ``torchrun``: rank 0 leads, the other ranks follow.

Rank 0 runs the pipeline as one process does (preflight, run directory, manifest, every
stage, the progress bars). When a training stage is about to run (``Stage.distributed``),
it announces it; the other ranks, waiting in ``follow``, run that stage's training with it
in a private temporary directory (they never write the run directory) and wait again. When
the pipeline ends, rank 0 sends its exit code and every rank exits with it.

A failure inside a training stage ends the job without a message: the failing process
exits, its peers' pending collectives fail or torchrun stops them, and the stage's
checkpoints stay in ``<stage>.tmp`` for the rerun. Ctrl-C reaches every rank (torchrun
forwards SIGINT to its workers); each exits 130.

The messages travel on torch.distributed (``kdeploy.train.distributed``), imported only
when the run is distributed: a plain run, and any device run, stays torch-free here.
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from kdeploy.core import ranks
from kdeploy.core.errors import InternalError, Interrupted, KdeployError, StageError
from kdeploy.stages import STAGES
from kdeploy.stages.base import Stage, StageEnv, StageInputs

T = TypeVar("T")


class Team:
    """Rank 0's side: announces training stages to the other ranks, then the end."""

    def __init__(self) -> None:
        from kdeploy.train import distributed

        self.dist = distributed
        distributed.join()
        self.in_stage = False  # the other ranks are inside a stage, not waiting for a message

    def announce(self, stage: Stage, inputs: StageInputs) -> None:
        """The other ranks run ``stage`` with rank 0 (its training part)."""
        env = stage.env
        self.dist.broadcast_object(
            {
                "stage": stage.name,
                "paths": {k: str(v) for k, v in inputs.paths.items()},
                "sources": dict(inputs.sources),
                "profile": env.profile,
                "options": env.options,
                "manifest": env.manifest,
            }
        )
        self.in_stage = True

    def stage_done(self) -> None:
        self.in_stage = False

    def end(self, code: int) -> None:
        """Tell the waiting ranks to exit with ``code`` (not when they are inside a stage:
        rank 0's exit stops them there), then leave the group."""
        try:
            if not self.in_stage:
                self.dist.broadcast_object({"end": code})
        finally:
            self.dist.leave()


def lead(body: Callable[[Team | None], T]) -> T:
    """Run ``body`` (the pipeline) as rank 0, with a Team when the run is distributed."""
    if not ranks.current().distributed:
        return body(None)
    team = Team()
    try:
        result = body(team)
    except KdeployError as exc:
        team.end(exc.exit_code)
        raise
    except KeyboardInterrupt:
        team.end(Interrupted.exit_code)
        raise
    except BaseException:
        team.end(InternalError.exit_code)
        raise
    team.end(0)
    return result


def follow() -> int:
    """A rank > 0: run the stages rank 0 announces until it sends the end; its exit code."""
    from kdeploy.train import distributed

    me = distributed.join()
    try:
        while True:
            msg = distributed.broadcast_object(None)
            if "end" in msg:
                return int(msg["end"])
            _follow_stage(msg, me.rank, distributed.WorkerDone)
    finally:
        distributed.leave()


def _follow_stage(msg: dict, rank: int, done: type[Exception]) -> None:
    """Rank 0's announcement ``msg`` (the stage, its inputs, the run's settings): this
    rank's part of the stage, in a temporary directory removed afterwards. That directory
    stands in for the run directory too (the stage's work dir and the run's cache, where
    the teacher's ONNX graph for KD targets is exported): nothing of this rank's is written
    where rank 0 writes."""
    by_name = {cls.name: cls for cls in STAGES}
    with tempfile.TemporaryDirectory(prefix=f"kdeploy-{msg['stage']}-rank{rank}-") as tmp:
        env = StageEnv(
            profile=msg["profile"],
            options=replace(msg["options"], progress=False),
            run_dir=Path(tmp),
            log=lambda _m: None,  # rank 0 logs
            manifest=msg["manifest"],
        )
        stage = by_name[msg["stage"]](env)
        inputs = StageInputs({k: Path(v) for k, v in msg["paths"].items()}, msg["sources"])
        work = Path(tmp) / stage.name
        work.mkdir()
        _run_part(stage, inputs, work, rank, done)


def _run_part(
    stage: Stage, inputs: StageInputs, work: Path, rank: int, done: type[Exception]
) -> None:
    """Run ``stage`` in ``work`` until its training ends (``done``); errors as kdeploy's."""
    try:
        stage.run(inputs, work)
    except done:
        return
    except KeyboardInterrupt:
        raise Interrupted(
            f"rank {rank} stopped during stage {stage.name}",
            fix="rerun the same command to resume",
        ) from None
    except KdeployError:
        raise
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        raise StageError(
            f"stage {stage.name} failed on rank {rank}: {type(exc).__name__}: {exc}",
            where=f"rank {rank}'s traceback above",
            fix="rerun resumes from the stage's last checkpoint",
        ) from None
