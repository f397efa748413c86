"""A KD run's checkpoint, written after every epoch so an interrupted run resumes there.

``checkpoint/`` holds ``student.safetensors`` (the student's weights), ``optim.pt`` (the
optimizer's and schedule's state, and the projections'; read with ``weights_only``) and
``state.json`` (``TrainState``). ``best/student.safetensors`` holds the best epoch's weights
when dev picks the epoch. Each directory is written beside and then moved into place, so
it is either the old one or the new one, never half of each.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kdeploy.core.fsutil import replace_dir
from kdeploy.train.optimization import Optimization


@dataclass
class TrainState:
    """Progress through the epochs (``state.json``)."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    history: list[dict] = field(default_factory=list)  # one entry per finished epoch
    best_epoch: int | None = None
    best_score: float | None = None  # the best epoch's dev score
    bad_epochs: int = 0  # finished since the best one
    stopped_early: bool = False


def _cpu_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_weights(directory: Path, model: torch.nn.Module) -> None:
    """``model``'s weights as ``directory/student.safetensors``."""
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(_cpu_weights(model), str(tmp / "student.safetensors"))
    replace_dir(tmp, directory)


def load_weights(directory: Path, model: torch.nn.Module) -> None:
    """Weights that ``save_weights`` wrote, into ``model``."""
    model.load_state_dict(load_file(str(directory / "student.safetensors")))


def save(
    ckpt: Path,
    student: torch.nn.Module,
    opt: Optimization,
    projections: torch.nn.ModuleDict | None,
    state: TrainState,
) -> None:
    """Everything a resumed run needs to continue as if never stopped."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(_cpu_weights(student), str(tmp / "student.safetensors"))
    extra = {"optimizer": opt.optimizer.state_dict(), "scheduler": opt.scheduler.state_dict()}
    if projections is not None:
        extra["projections"] = projections.state_dict()
    torch.save(extra, tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state)))
    replace_dir(tmp, ckpt)


def load(
    ckpt: Path,
    student: torch.nn.Module,
    opt: Optimization,
    projections: torch.nn.ModuleDict | None,
    device: torch.device,
) -> TrainState | None:
    """Restore what ``save`` wrote into ``student``, ``opt`` and ``projections``; None
    (and nothing touched) when there is no checkpoint."""
    if not (ckpt / "state.json").is_file():
        return None
    state = TrainState(**json.loads((ckpt / "state.json").read_text()))
    student.load_state_dict(load_file(str(ckpt / "student.safetensors")), strict=True)
    extra = torch.load(ckpt / "optim.pt", map_location=device, weights_only=True)
    opt.optimizer.load_state_dict(extra["optimizer"])
    opt.scheduler.load_state_dict(extra["scheduler"])
    if projections is not None:
        projections.load_state_dict(extra["projections"])
    return state
