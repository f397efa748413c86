"""The Stage type (Olive's ``olive_pass.py`` shape): what a stage consumes and produces is
declared once, as data; the engine resolves it, hashes it into the stage key, checks it,
runs the stage in a temp dir and commits it. A stage is a thin adapter: ``run(inputs,
out_dir)`` calls library code and returns what it wrote.

A stage reads only the artifacts named by its ``consumes`` and writes only into
``out_dir`` (the engine renames it into place on success). Stage modules import nothing
heavy at module level, so listing them never pulls torch in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from kdeploy.config import Profile
from kdeploy.data import TrainItem, training_items
from kdeploy.evaluation.variants import MODEL_ARTIFACTS
from kdeploy.model_info import ModelInfo, inspect_model


@dataclass
class RunOptions:
    """Choices from the command line that are not part of the profile."""

    allow_pickle: bool = False
    trust_remote_code: bool = False
    progress: bool = True


@dataclass(frozen=True)
class Consume:
    """One input of a stage: the stage reads it as ``role``; the first of ``artifacts``
    that an earlier stage (or the run's inputs) produced is taken; ``optional`` inputs may
    be absent."""

    role: str
    artifacts: tuple[str, ...]
    optional: bool = False


def need(artifact: str, *alternatives: str, role: str | None = None) -> Consume:
    """A required input: ``artifact``, else the first of ``alternatives`` present."""
    return Consume(role or artifact, (artifact, *alternatives))


def maybe(artifact: str, *alternatives: str, role: str | None = None) -> Consume:
    """An optional input (absent when no stage produced it)."""
    return Consume(role or artifact, (artifact, *alternatives), optional=True)


@dataclass
class StageInputs:
    """What a stage consumes, resolved: role -> path, and which artifact filled it."""

    paths: dict[str, Path]
    sources: dict[str, str]

    def __getitem__(self, role: str) -> Path:
        return self.paths[role]

    def __contains__(self, role: str) -> bool:
        return role in self.paths

    def get(self, role: str) -> Path | None:
        return self.paths.get(role)

    def source(self, role: str) -> str | None:
        """The artifact that filled ``role`` (e.g. student_model or teacher_model)."""
        return self.sources.get(role)

    def by_artifact(self) -> dict[str, Path]:
        """{artifact name: path} of every input present."""
        return {self.sources[r]: p for r, p in self.paths.items()}


# the models of a run (teacher and student always; baseline, sparse, INT8, engine when
# produced): what bench, verify and package measure and ship
MODEL_INPUTS = tuple(
    need(a) if a in ("teacher_onnx", "student_onnx") else maybe(a) for a in MODEL_ARTIFACTS
)


@dataclass
class StageResult:
    outputs: dict[str, Path]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageEnv:
    """What every stage of a run sees besides its inputs."""

    profile: Profile
    options: RunOptions
    run_dir: Path
    log: Callable[[str], None] = print
    # the run's manifest as it stood when the stage started (read-only; the report needs it)
    manifest: dict[str, Any] = field(default_factory=dict)


class Stage:
    """Base class. Subclasses set the class attributes and implement ``config`` and ``run``;
    ``enabled``, ``resumable`` and ``unavailable`` have the common answer."""

    name: ClassVar[str]
    consumes: ClassVar[tuple[Consume, ...]] = ()
    produces: ClassVar[tuple[str, ...]] = ()  # always produced (others may be added)
    tools: ClassVar[tuple[str, ...]] = ()  # distributions whose versions enter the stage key

    def __init__(self, env: StageEnv) -> None:
        self.env = env
        self.profile = env.profile
        self.options = env.options

    def log(self, msg: str) -> None:
        self.env.log(f"[{self.name}] {msg}")

    @property
    def cache_dir(self) -> Path:
        """The run's cache shared by its training stages (the teacher's KD targets and the
        ONNX graph that computes them): content-addressed, so a stale entry is never read;
        deleting it only costs time."""
        return self.env.run_dir / "cache"

    @property
    def final_dir(self) -> Path:
        """Where ``out_dir`` lands when the stage succeeds (paths in reports point there)."""
        return self.env.run_dir / self.name

    def inspect(self, model_dir: Path) -> ModelInfo:
        """A model dir of this run, described (with the run's pickle / remote-code choices)."""
        return inspect_model(
            model_dir,
            allow_pickle=self.options.allow_pickle,
            trust_remote_code=self.options.trust_remote_code,
            task=self.profile.task,
        )

    def training_items(self, inputs: StageInputs, kind: str) -> list[TrainItem]:
        """The distinct training texts every training stage uses (train split + unlabeled,
        capped and seeded by the distill section)."""
        d = self.profile.distill
        return training_items(
            inputs["dataset"],
            inputs.get("unlabeled_text"),
            kind,
            cap=d.max_train_texts,
            seed=d.seed,
            sources=d.text_sources,
        )

    def kd_fine_tune(
        self,
        student,
        inputs: StageInputs,
        *,
        student_source: str,
        fine_tune,
        masks: dict | None,
        work_dir: Path,
        label: str,
    ) -> dict:
        """KD fine-tuning of ``student`` after a structural change (sparsify's masks, QAT's
        fake quantizers): the distillation recipe, ``fine_tune``'s schedule, checkpointed in
        ``work_dir``, the 2:4 ``masks`` re-applied after every step; its JSON record.

        The teacher layers the student imitates are the ones it inherited when the input in
        ``student_source`` is the distilled ``student_model``, else layer by layer (as
        before the redesign: QAT on a sparse student maps layer by layer)."""
        from kdeploy.data import labelled_dev
        from kdeploy.train import distributed
        from kdeploy.train.finetune import fine_tune_layer_map, fine_tune_metrics, kd_fine_tune
        from kdeploy.train.sparsify import apply_masks

        p = self.profile
        t_info = self.inspect(inputs["teacher_model"])
        if masks and distributed.active():  # rank 0's (maybe chosen before an interruption)
            masks = distributed.broadcast_object(distributed.cpu_tree(masks))
        layer_map = fine_tune_layer_map(
            p.distill,
            p.student,
            distilled=inputs.source(student_source) == "student_model",
            teacher=t_info,
            student_layers=student.config.num_hidden_layers,
        )
        record = kd_fine_tune(
            student,
            t_info,
            p.distill,
            fine_tune,
            self.training_items(inputs, t_info.kind),
            work_dir,
            layer_map=layer_map,
            dev=labelled_dev(inputs["dataset"]),
            after_step=(lambda: apply_masks(student, masks)) if masks else None,
            label=label,
            allow_pickle=self.options.allow_pickle,
            progress=self.options.progress,
            log=self.log,
            cache_dir=self.cache_dir,
        )
        return fine_tune_metrics(record)

    def hidden_state_graph(self, model_dir: Path, out: Path, texts: list[str]) -> dict:
        """``out/model.onnx``: the embedding graph of ``model_dir`` (a model dir of this
        stage's work dir) up to its token outputs, output ``last_hidden_state``, for
        sentence-transformers' ONNX backend; checked against the source graph on ``texts``.
        Export cuts the fp32 student, quantize the INT8 one (``kdeploy.onnxtools.hidden``)."""
        from dataclasses import asdict

        from kdeploy.onnxtools.hidden import check_cut, cut_to_hidden_state
        from kdeploy.runtime.card import ModelCard
        from kdeploy.runtime.text import TextEncoder

        card = ModelCard.load(model_dir)
        src = model_dir / card.model_file
        cut = cut_to_hidden_state(src, out / "model.onnx")
        enc = TextEncoder(model_dir / card.tokenizer_file, card.max_seq_length)
        batches = [enc.encode(texts[i : i + 16]) for i in range(0, len(texts), 16)]
        check = check_cut(src, out / "model.onnx", batches)
        same = "identical" if check.identical else f"max |diff| {check.max_abs_diff:.1e}"
        self.log(
            f"{model_dir.name}: last_hidden_state graph for sentence-transformers "
            f"({cut.nodes_dropped} pooling nodes dropped; token outputs {same})"
        )
        source = f"{self.name}/{model_dir.name}/{card.model_file}"
        return {"from": source, **asdict(cut), **asdict(check)}

    def enabled(self) -> bool:
        return True

    def outputs_expected(self) -> tuple[str, ...]:
        """The outputs this run's stage must have: ``produces`` plus those that depend on
        the run (the engine reruns a recorded stage that lacks one: it was made by an
        earlier kdeploy)."""
        return self.produces

    @property
    def embedding_run(self) -> bool:
        """The run's teacher is an embedding model (from the manifest)."""
        return self.env.manifest.get("model", {}).get("kind") == "embedding"

    def config(self) -> dict[str, Any]:
        """The part of the profile this stage uses: it is hashed into the stage key."""
        raise NotImplementedError

    def resumable(self) -> bool:
        """Keep ``out_dir`` after an interruption so that ``run`` resumes there."""
        return False

    def distributed(self) -> bool:
        """Under torchrun, every rank runs this stage's training (in data parallel); the
        other stages run on rank 0 alone."""
        return False

    def unavailable(self) -> str | None:
        """Why this stage cannot run on this machine (the host then hands off, exit 11)."""
        return None

    def run(self, inputs: StageInputs, out_dir: Path) -> StageResult:
        raise NotImplementedError
