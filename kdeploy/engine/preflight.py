"""Everything that can be checked before a run writes anything: the flags, the teacher, the
data, and whether the profile fits this teacher and these data. A mismatch found after an
hour of distillation is an hour lost; found here, it leaves no run directory behind."""

from __future__ import annotations

from pathlib import Path

from kdeploy.config import LoadedProfile, locate_key
from kdeploy.core.errors import DataError, ProfileError, UsageError
from kdeploy.data import TaskData, read_unlabeled
from kdeploy.evaluation.transfer_checks import load_probe
from kdeploy.evaluation.verify import eval_plan
from kdeploy.model_info import TASK_FOR_KIND, ModelInfo, width_bound_modules, width_problem
from kdeploy.stages import ORDER


def check_stage_name(flag: str, name: str | None) -> None:
    if name is not None and name not in ORDER:
        raise UsageError(
            f"{flag} {name}: no such stage",
            where=f"{flag} {name}",
            fix=f"stages are: {', '.join(ORDER)}",
        )


def check_stage_range(from_stage: str | None, until_stage: str | None) -> None:
    """--from and --until name stages, and --from does not come after --until."""
    check_stage_name("--from", from_stage)
    check_stage_name("--until", until_stage)
    if from_stage and until_stage and ORDER.index(from_stage) > ORDER.index(until_stage):
        raise UsageError(
            f"--from {from_stage} comes after --until {until_stage}",
            where=f"--from {from_stage} --until {until_stage}",
            fix="--from must name a stage at or before --until",
        )


def check_task_fit(teacher: ModelInfo, data: TaskData) -> None:
    want = TASK_FOR_KIND[teacher.kind]
    if data.task != want:
        raise DataError(
            f"{data.root} is {data.task} data but the teacher is an {teacher.kind} model "
            f"({', '.join(teacher.architectures) or teacher.model_type})",
            where=str(data.root),
            fix="embedding teachers evaluate on sentence1/sentence2/score (STS) data, "
            "classifiers on sentence/label data; or set task: in the profile",
        )
    if (
        teacher.kind == "classification"
        and data.num_labels
        and teacher.num_labels
        and data.num_labels > teacher.num_labels
    ):
        raise DataError(
            f"labels in {data.root} go up to {data.num_labels - 1} but the classifier "
            f"has {teacher.num_labels} classes",
            where=str(data.root),
            fix="labels must be class indices 0..num_labels-1 of the teacher",
        )


def check_student_depth(teacher: ModelInfo, loaded: LoadedProfile) -> None:
    n, st = teacher.num_layers, loaded.profile.student
    bad = [i for i in st.keep or [] if i >= n]
    if st.layers > n or bad:
        key = "student.layers" if st.layers > n else "student.keep"
        what = (
            f"the student asks for {st.layers} layers but the teacher {teacher.path} has only {n}"
            if st.layers > n
            else f"student.keep names layers {bad} but the teacher has layers 0..{n - 1}"
        )
        raise ProfileError(
            what,
            where=locate_key(loaded, key),
            fix=f"keep at most {n} layers, indices 0..{n - 1}",
        )


def check_student_width(teacher: ModelInfo, loaded: LoadedProfile) -> None:
    st = loaded.profile.student
    problem = width_problem(
        teacher.hidden_size,
        teacher.num_heads,
        teacher.intermediate_size,
        hidden=st.hidden_size,
        ffn=st.ffn_width(teacher.intermediate_size),
    )
    narrower = st.hidden_size is not None and st.hidden_size != teacher.hidden_size
    bound = width_bound_modules(teacher.path) if narrower else []
    if problem is None and narrower and teacher.family.slice_roles is None:
        problem = (
            "student.hidden_size",
            f"student.hidden_size {st.hidden_size}: kdeploy slices only the feed-forward "
            f"width of {teacher.family.name} students ({teacher.family.why_no_hidden_slicing})",
            "leave student.hidden_size unset (null); student.intermediate_fraction still "
            "narrows the feed-forward block",
        )
    if problem is None and bound:
        problem = (
            "student.hidden_size",
            f"the teacher's sentence-transformers modules {bound} are tied to its hidden "
            f"width {teacher.hidden_size}; a student of width {st.hidden_size} cannot use them",
            "leave student.hidden_size unset (null) for this teacher",
        )
    if problem is not None:
        key, what, fix = problem
        raise ProfileError(f"{what} ({teacher.path})", where=locate_key(loaded, key), fix=fix)


def check_sequence_lengths(teacher: ModelInfo, loaded: LoadedProfile) -> None:
    profile, limit = loaded.profile, teacher.max_positions
    lengths = [("bench.sequence_lengths", max(profile.bench.sequence_lengths))]
    if profile.distill.enabled:
        lengths.insert(0, ("distill.max_seq_length", profile.distill.max_seq_length))
    for key, value in lengths:
        if value > limit:
            raise ProfileError(
                f"{key} asks for sequences of {value} tokens but the teacher {teacher.path} "
                f"takes at most {limit} (max_position_embeddings in its config.json)",
                where=locate_key(loaded, key),
                fix=f"set {key} to {limit} or less (e.g. --set {key}="
                f"{'[' + str(limit) + ']' if key.startswith('bench') else limit})",
            )


def check_engine_shapes(teacher: ModelInfo, loaded: LoadedProfile) -> None:
    """A TensorRT engine's optimization profile is export.shapes: it must not accept
    sequences longer than the teacher's position table (the engine would build, and
    embed such inputs with positions the model never had)."""
    profile = loaded.profile
    longest = profile.export.shapes.sequence.max
    if profile.target.runtime == "trt" and longest > teacher.max_positions:
        key = "export.shapes.sequence"
        raise ProfileError(
            f"export.shapes.sequence.max={longest} is the longest input the TensorRT engine "
            f"would accept, but the teacher {teacher.path} has {teacher.max_positions} "
            "positions (max_position_embeddings in its config.json)",
            where=locate_key(loaded, key),
            fix=f"set export.shapes.sequence.max to {teacher.max_positions} or less (e.g. "
            f"--set 'export.shapes.sequence={{min: 1, opt: {min(128, teacher.max_positions)}, "
            f"max: {teacher.max_positions}}}')",
        )


def check_train_text(data: TaskData) -> None:
    if not any(t.strip() for t in data.splits["train"].texts()):
        train = data.splits["train"].path
        raise DataError(
            f"{train} has rows but no text to distil on (every text cell is blank)",
            where=str(train),
            fix="fill the sentence column(s), or check the file's separator is a tab",
        )


def check_profile_fit(
    teacher: ModelInfo, loaded: LoadedProfile, data: TaskData, unlabeled: Path | None
) -> None:
    """Profile values that must fit this teacher and these data."""
    profile = loaded.profile
    check_sequence_lengths(teacher, loaded)
    check_engine_shapes(teacher, loaded)
    if profile.distill.enabled:
        check_student_depth(teacher, loaded)
        check_student_width(teacher, loaded)
    eval_plan(profile.verify, data.eval_split(profile.verify.eval_split))
    if profile.distill.enabled:
        check_text_sources(loaded, unlabeled)
        if "task" in profile.distill.text_sources:
            check_train_text(data)
    if unlabeled is not None:
        read_unlabeled(unlabeled)


def check_text_sources(loaded: LoadedProfile, unlabeled: Path | None) -> None:
    """distill.text_sources leaves something to train on."""
    sources = loaded.profile.distill.text_sources
    if "task" not in sources and unlabeled is None:
        raise UsageError(
            f"distill.text_sources is {sources}: the student would be trained on "
            "--unlabeled texts only, and no --unlabeled was given",
            where=locate_key(loaded, "distill.text_sources"),
            fix="pass --unlabeled FILE_OR_DIR, or add 'task' to distill.text_sources",
        )


def check_probe(teacher: ModelInfo, loaded: LoadedProfile, probe: Path | None) -> None:
    """--probe fits an embedding teacher and holds labelled single-sentence data; a probe
    budget has --probe data to be measured on."""
    transfer = loaded.profile.verify.transfer
    budget = loaded.profile.verify.budgets.min_probe_retention
    if probe is None:
        if budget is not None and teacher.kind == "embedding" and transfer.probe is not None:
            raise UsageError(
                f"profile {loaded.name} has the budget min_probe_retention={budget}, which "
                "needs labelled classification data for the linear probe",
                where="--probe",
                fix="pass --probe DIR (GLUE layout with sentence/label, e.g. "
                "../shared/data/sst2), or --set verify.budgets.min_probe_retention=null",
            )
        return
    if teacher.kind != "embedding":
        raise UsageError(
            f"--probe fits a linear probe on sentence embeddings, but {teacher.path} is a "
            "classifier (its logits are its task)",
            where=f"--probe {probe}",
            fix="drop --probe for classifier teachers",
        )
    if transfer.probe is None:
        raise UsageError(
            "--probe was given but verify.transfer.probe is null (the probe is switched off)",
            where=f"--probe {probe}",
            fix="drop --probe, or remove the null from verify.transfer.probe",
        )
    load_probe(probe, transfer.probe)
