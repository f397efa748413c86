"""The pipeline: stage order, the run directory, the manifest, resume and Ctrl-C safety.

Each stage runs in ``<run>/<stage>.tmp/`` and is renamed to ``<run>/<stage>/`` only when it
succeeded; then the manifest is replaced atomically. A stage's key hashes its profile
section, its inputs' digests and the versions of the tools it uses, so a rerun skips every
stage whose key matches and whose outputs still have their recorded sha256.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdeploy import __version__, fsutil
from kdeploy.data import (
    TaskData,
    data_files,
    load_task_data,
    read_unlabeled,
    unlabeled_file,
)
from kdeploy.deps import version_of
from kdeploy.errors import (
    BudgetError,
    DataError,
    HandOff,
    Interrupted,
    KdeployError,
    ProfileError,
    RunDirError,
    StageError,
    UsageError,
)
from kdeploy.fsutil import (
    atomic_write_text,
    combine_digests,
    deferred_sigint,
    digest_files,
    digest_json,
)
from kdeploy.manifest import Manifest, StageRecord, load_manifest, make_artifact, utcnow
from kdeploy.model_info import (
    TASK_FOR_KIND,
    ModelInfo,
    inspect_model,
    width_bound_modules,
    width_problem,
)
from kdeploy.profiles import LoadedProfile, dump_profile, locate_key
from kdeploy.stages import ORDER, RunOptions, StageContext, load_stage

KEY_FILE = ".kdeploy-key"


@dataclass
class RunRequest:
    profile: LoadedProfile
    model_dir: Path
    data_dir: Path
    out_dir: Path | None = None
    unlabeled: Path | None = None
    force: bool = False
    from_stage: str | None = None
    until_stage: str | None = None
    options: RunOptions = field(default_factory=RunOptions)


@dataclass
class RunResult:
    run_dir: Path
    manifest: Manifest
    ran: list[str]
    reused: list[str]
    skipped: list[str]
    seconds: float


def default_run_dir(profile_name: str, model_dir: Path) -> Path:
    name = model_dir.name
    if name in ("model", "models", "") and model_dir.parent.name:
        name = model_dir.parent.name
    return Path("runs") / f"{profile_name}-{name}"


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    lock_path = run_dir / ".lock"
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(
                f"another kdeploy process is using {run_dir}",
                where=str(run_dir),
                fix="wait for it to finish, or use another --out",
            ) from None
        yield
    finally:
        os.close(fd)


def _check_stage_name(flag: str, name: str | None) -> None:
    if name is not None and name not in ORDER:
        raise UsageError(
            f"{flag} {name}: no such stage",
            where=f"{flag} {name}",
            fix=f"stages are: {', '.join(ORDER)}",
        )


def _prepare_run_dir(run_dir: Path) -> None:
    probe = run_dir / ".write-test"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_text("ok")
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise RunDirError(
            f"cannot write to the output directory {run_dir}: {exc.strerror}",
            where=str(run_dir),
            fix="choose a writable directory with --out",
        ) from None


class _Hashes:
    """sha256 of files, each hashed at most once per pipeline run.

    A digest is remembered with the file's (size, mtime_ns, inode); looking at the same
    file again costs one ``stat`` unless it changed, and then it is hashed again. This is
    what lets every stage check its inputs right before it runs without hashing the
    ~100 MB of a teacher or an ONNX model twice (make and rsync trust the same signature).
    """

    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple[int, int, int], str]] = {}

    @staticmethod
    def _signature(path: Path) -> tuple[int, int, int]:
        st = path.stat()
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def sha256(self, path: Path) -> str:
        sig = self._signature(path)
        hit = self._known.get(path)
        if hit is not None and hit[0] == sig:
            return hit[1]
        digest = fsutil.sha256_file(path)
        self._known[path] = (sig, digest)
        return digest

    def remember(self, path: Path, digest: str) -> None:
        """A file hashed under another name (a stage's work dir before the rename)."""
        self._known[path] = (self._signature(path), digest)


class _Inputs:
    """Artifact name -> (path, digest, {file: sha256 it must have})."""

    def __init__(self) -> None:
        self.paths: dict[str, Path] = {}
        self.digests: dict[str, str] = {}
        self.files: dict[str, dict[Path, str]] = {}

    def set(self, name: str, path: Path, digest: str, files: dict[Path, str]) -> None:
        self.paths[name] = path
        self.digests[name] = digest
        self.files[name] = files

    def publish(self, record: StageRecord, run_dir: Path) -> None:
        """Make a finished stage's outputs available to the stages after it."""
        for out_name, art in record.outputs.items():
            self.set(out_name, art.abspath(run_dir), art.digest, art.file_paths(run_dir))

    def consumed_by(self, mod: Any) -> dict[str, str]:
        """{artifact: digest} of what a stage module consumes (alternatives resolved)."""
        consumed = {}
        for spec in mod.CONSUMES:
            got = self.resolve(spec)
            if got is not None:
                consumed[got] = self.digests[got]
        return consumed

    def resolve(self, spec: str) -> str | None:
        optional = spec.endswith("?")
        for alt in spec.rstrip("?").split("|"):
            if alt in self.paths:
                return alt
        if optional:
            return None
        raise StageError(
            f"no stage produced any of {spec.rstrip('?')}",
            where="the stage order in kdeploy/stages",
            fix="a kdeploy bug: please report it",
        )

    def verify(self, stage: str, names: list[str], hashes: _Hashes) -> None:
        """Refuse to start ``stage`` if a file it consumes no longer has its digest.

        Every file was hashed earlier in this pipeline run (outside inputs at the start,
        a reused stage's outputs when it was checked, a new stage's outputs when it was
        committed), so an unchanged file costs a ``stat``. A mismatch here means the file
        changed *while kdeploy was running*: the run stops instead of building on it, and
        the rerun rebuilds the damaged stage (its outputs fail the reuse check).
        """
        for name in names:
            for path, want in self.files[name].items():
                try:
                    got = hashes.sha256(path)
                except FileNotFoundError:
                    got = None
                if got != want:
                    state = "was deleted" if got is None else "changed"
                    raise RunDirError(
                        f"{path} ({name}, an input of stage {stage}) {state} while kdeploy "
                        "was running: its sha256 no longer matches the one recorded",
                        where=str(path),
                        fix="make sure nothing else writes into the run directory or the "
                        "input files during a run, then rerun the same command (damaged "
                        "stages are rebuilt)",
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


def _check_student_depth(teacher: ModelInfo, req: RunRequest) -> None:
    n, st = teacher.num_layers, req.profile.profile.student
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
            where=locate_key(req.profile, key),
            fix=f"keep at most {n} layers, indices 0..{n - 1}",
        )


def _check_student_width(teacher: ModelInfo, req: RunRequest) -> None:
    st = req.profile.profile.student
    problem = width_problem(
        teacher.hidden_size,
        teacher.num_heads,
        teacher.intermediate_size,
        hidden=st.hidden_size,
        ffn=st.ffn_width(teacher.intermediate_size),
    )
    narrower = st.hidden_size is not None and st.hidden_size != teacher.hidden_size
    bound = width_bound_modules(teacher.path) if narrower else []
    if problem is None and bound:
        problem = (
            "student.hidden_size",
            f"the teacher's sentence-transformers modules {bound} are tied to its hidden "
            f"width {teacher.hidden_size}; a student of width {st.hidden_size} cannot use them",
            "leave student.hidden_size unset (null) for this teacher",
        )
    if problem is not None:
        key, what, fix = problem
        raise ProfileError(f"{what} ({teacher.path})", where=locate_key(req.profile, key), fix=fix)


def check_profile_fit(teacher: ModelInfo, req: RunRequest, data: TaskData) -> None:
    """Profile values that must fit this teacher and these data, checked before anything
    is written: a mismatch found after an hour of distillation is an hour lost."""
    from kdeploy.stages.verify import eval_plan

    profile = req.profile.profile
    limit = teacher.max_positions
    lengths = [("bench.sequence_lengths", max(profile.bench.sequence_lengths))]
    if profile.distill.enabled:
        lengths.insert(0, ("distill.max_seq_length", profile.distill.max_seq_length))
    for key, value in lengths:
        if value > limit:
            raise ProfileError(
                f"{key} asks for sequences of {value} tokens but the teacher {teacher.path} "
                f"takes at most {limit} (max_position_embeddings in its config.json)",
                where=locate_key(req.profile, key),
                fix=f"set {key} to {limit} or less (e.g. --set {key}="
                f"{'[' + str(limit) + ']' if key.startswith('bench') else limit})",
            )
    if profile.distill.enabled:
        _check_student_depth(teacher, req)
        _check_student_width(teacher, req)
    eval_plan(profile.verify, data.eval_split(profile.verify.eval_split))
    if profile.distill.enabled and not any(t.strip() for t in data.splits["train"].texts()):
        train = data.splits["train"].path
        raise DataError(
            f"{train} has rows but no text to distil on (every text cell is blank)",
            where=str(train),
            fix="fill the sentence column(s), or check the file's separator is a tab",
        )
    if req.unlabeled is not None:
        read_unlabeled(req.unlabeled)


def run_pipeline(req: RunRequest, log: Callable[[str], None] = print) -> RunResult:
    """Run (or resume) every enabled stage of the profile. Raises BudgetError at the end
    when verify found a budget missed (all artifacts, report included, are kept)."""
    t_start = time.perf_counter()
    _check_stage_name("--from", req.from_stage)
    _check_stage_name("--until", req.until_stage)
    if (
        req.from_stage
        and req.until_stage
        and ORDER.index(req.from_stage) > ORDER.index(req.until_stage)
    ):
        raise UsageError(
            f"--from {req.from_stage} comes after --until {req.until_stage}",
            where=f"--from {req.from_stage} --until {req.until_stage}",
            fix="--from must name a stage at or before --until",
        )
    profile = req.profile.profile
    teacher = inspect_model(
        req.model_dir,
        allow_pickle=req.options.allow_pickle,
        trust_remote_code=req.options.trust_remote_code,
        task=profile.task,
    )
    data = load_task_data(req.data_dir)
    check_task_fit(teacher, data)
    check_profile_fit(teacher, req, data)
    run_dir = req.out_dir or default_run_dir(profile.name, req.model_dir)
    _prepare_run_dir(run_dir)
    with _locked(run_dir):
        return _run_locked(req, teacher, run_dir, log, t_start)


def _run_locked(
    req: RunRequest,
    teacher: ModelInfo,
    run_dir: Path,
    log: Callable[[str], None],
    t_start: float,
) -> RunResult:
    profile = req.profile.profile
    manifest = load_manifest(run_dir)
    if manifest is not None and manifest.profile.get("name") != profile.name:
        if not req.force:
            raise RunDirError(
                f"{run_dir} holds a run of profile '{manifest.profile.get('name')}', "
                f"not '{profile.name}'",
                where=str(run_dir),
                fix="use another --out, or --force to replace that run",
            )
        manifest = None
    inputs = _Inputs()
    hashes = _Hashes()
    log(f"kdeploy {__version__}: profile {profile.name}, run dir {run_dir}")
    teacher_files = digest_files(teacher.path, sha256=hashes.sha256)
    inputs.set(
        "teacher_model",
        teacher.path,
        combine_digests(teacher_files),
        {teacher.path / rel: sha for rel, sha in teacher_files.items()},
    )
    data_shas = {p: hashes.sha256(p) for p in data_files(req.data_dir)}
    inputs.set(
        "dataset",
        req.data_dir,
        combine_digests({p.name: sha for p, sha in data_shas.items()}),
        data_shas,
    )
    if req.unlabeled is not None:
        src = unlabeled_file(req.unlabeled)
        sha = hashes.sha256(src)
        inputs.set("unlabeled_text", req.unlabeled, sha, {src: sha})
    if manifest is None:
        manifest = Manifest.new(
            profile={},
            model={},
            data={},
        )
    manifest.profile = {
        "name": profile.name,
        "digest": req.profile.digest(),
        "sources": [str(p) for p in req.profile.sources],
        "overrides": req.profile.overrides,
    }
    manifest.model = {
        "path": str(teacher.path.resolve()),
        "digest": inputs.digests["teacher_model"],
        "kind": teacher.kind,
        "model_type": teacher.model_type,
        "layers": teacher.num_layers,
    }
    manifest.data = {
        "path": str(req.data_dir.resolve()),
        "digest": inputs.digests["dataset"],
        "unlabeled": str(req.unlabeled) if req.unlabeled else None,
    }
    atomic_write_text(run_dir / "profile.yaml", dump_profile(profile))
    manifest.save(run_dir)

    from_i = ORDER.index(req.from_stage) if req.from_stage else 0
    until_i = ORDER.index(req.until_stage) if req.until_stage else len(ORDER) - 1
    ran: list[str] = []
    reused: list[str] = []
    skipped: list[str] = []
    manifest.skipped = []
    for i, name in enumerate(ORDER):
        if i > until_i:
            break
        mod = load_stage(name)
        if not mod.enabled(profile):
            skipped.append(name)
            manifest.skipped.append(name)
            manifest.stages.pop(name, None)
            continue
        consumed = inputs.consumed_by(mod)
        key, versions = _stage_key(name, mod, profile, consumed)
        record = manifest.stages.get(name)
        rerun_reason = None
        if record is None:
            rerun_reason = "not run yet"
        elif record.key != key:
            rerun_reason = "its profile section, inputs or tool versions changed"
        elif req.force or i >= from_i and req.from_stage:
            rerun_reason = "--force" if req.force else f"--from {req.from_stage}"
        else:
            problems = [p for a in record.outputs.values() for p in a.check(run_dir, hashes.sha256)]
            if problems:
                if i < from_i:
                    raise RunDirError(
                        f"stage {name} (before --from {req.from_stage}) has damaged outputs: "
                        f"{problems[0]}",
                        where=str(run_dir / name),
                        fix=f"rerun without --from so that {name} is rebuilt",
                    )
                rerun_reason = f"its outputs changed on disk ({problems[0]})"
                log(f"warning: {rerun_reason}")
        if rerun_reason is not None and i < from_i:
            raise RunDirError(
                f"stage {name} comes before --from {req.from_stage} but is not finished "
                f"({rerun_reason})",
                where=str(run_dir),
                fix="rerun without --from (finished stages are reused anyway)",
            )
        if rerun_reason is None and record is not None:
            reused.append(name)
            log(f"[{name}] up to date, reused ({record.seconds:.1f}s when it ran)")
            inputs.publish(record, run_dir)
            continue
        _hand_off_if_unavailable(name, mod, manifest, run_dir)
        log(f"[{name}] running ({rerun_reason})")
        _execute(name, mod, key, consumed, versions, req, inputs, run_dir, log, hashes, manifest)
        ran.append(name)
    result = RunResult(
        run_dir=run_dir,
        manifest=manifest,
        ran=ran,
        reused=reused,
        skipped=skipped,
        seconds=time.perf_counter() - t_start,
    )
    _check_budgets(result, profile.name, until_i)
    return result


def _check_budgets(result: RunResult, profile_name: str, until_i: int) -> None:
    """Raise BudgetError when verify recorded a missed budget; the error carries the
    finished RunResult (`exc.result`), so callers can still say what ran and what was reused."""
    verify = result.manifest.stages.get("verify")
    budget_checked = verify is not None and until_i >= ORDER.index("verify")
    if budget_checked and not verify.metrics.get("passed", True):
        failed = [b["name"] for b in verify.metrics.get("budgets", []) if not b["passed"]]
        exc = BudgetError(
            f"profile {profile_name}: budget(s) missed: {', '.join(failed)}",
            where=str(result.run_dir / "package" / "report.md"),
            fix="see the budget table above; artifacts and the report are kept",
        )
        exc.result = result
        raise exc


def _stage_key(
    name: str, mod: Any, profile: Any, consumed: dict[str, str]
) -> tuple[str, dict[str, str | None]]:
    versions = {tool: version_of(tool) for tool in mod.TOOLS}
    key = digest_json(
        {
            "stage": name,
            "kdeploy": __version__,
            "config": mod.config(profile),
            "inputs": consumed,
            "versions": versions,
        }
    )
    return key, versions


def _hand_off_if_unavailable(name: str, mod: Any, manifest: Manifest, run_dir: Path) -> None:
    """A stage that cannot run here (no TensorRT on the host) ends the run cleanly."""
    reason = getattr(mod, "unavailable", lambda: None)()
    if reason is None:
        return
    manifest.save(run_dir)
    done = ", ".join(manifest.stages) or "none"
    raise HandOff(
        f"stage {name}: {reason}. Finished stages ({done}) are kept in {run_dir}",
        where=str(run_dir),
        fix=f"copy {run_dir} to the target device (with kdeploy[trt] installed) and run "
        f"`kdeploy build {run_dir} --until package` there (build, bench, verify, report); "
        f"or `kdeploy build {run_dir}`, then `kdeploy bench {run_dir}` and "
        f"`kdeploy verify {run_dir}`",
    )


def run_device_stages(
    run_dir: Path,
    *,
    until: str = "build",
    data_dir: Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Run the device stages (build .. until) of a run that a host started, torch-free.

    Inputs come from the manifest, their sha256 checked first; outputs are recorded in the
    manifest like any stage's. ``data_dir`` replaces the run's data path (same content:
    its digest must match), for when the data sits elsewhere on the device.
    """
    from kdeploy.profiles import load_profile

    t_start = time.perf_counter()
    _check_stage_name("--until", until)
    first = ORDER.index("build")
    if ORDER.index(until) < first:
        raise UsageError(
            f"--until {until} is a host stage",
            where=f"--until {until}",
            fix="give build or a later stage",
        )
    manifest = load_manifest(run_dir)
    if manifest is None:
        raise RunDirError(
            f"{run_dir} is not a kdeploy run directory (no manifest.json)",
            where=str(run_dir),
            fix="start the run on a host with `kdeploy compress --profile <gpu profile>`",
        )
    loaded = load_profile(run_dir / "profile.yaml")
    profile = loaded.profile
    inputs = _Inputs()
    hashes = _Hashes()
    for rec_name, rec in manifest.stages.items():
        for out_name, art in rec.outputs.items():
            problems = art.check(run_dir, hashes.sha256)
            if problems and ORDER.index(rec_name) < first:
                raise RunDirError(
                    f"artifact {out_name} of {run_dir} is damaged: {problems[0]}",
                    where=str(art.abspath(run_dir)),
                    fix="copy the run directory again from the host",
                )
            if not problems:
                inputs.set(out_name, art.abspath(run_dir), art.digest, art.file_paths(run_dir))
    data = data_dir or Path(manifest.data["path"])
    if not data.is_dir():
        raise DataError(
            f"the run's data directory {data} is not on this machine",
            where=str(data),
            fix="pass --data DIR with the same data",
        )
    data_shas = {p: hashes.sha256(p) for p in data_files(data)}
    digest = combine_digests({p.name: sha for p, sha in data_shas.items()})
    if manifest.data.get("digest") and digest != manifest.data["digest"]:
        raise DataError(
            f"{data} does not hold the data the run was started with (digest differs)",
            where=str(data),
            fix="pass --data with the run's data directory",
        )
    inputs.set("dataset", data, digest, data_shas)
    req = RunRequest(
        profile=loaded,
        model_dir=Path(manifest.model.get("path", ".")),
        data_dir=data,
        out_dir=run_dir,
        options=RunOptions(progress=False),
    )
    ran: list[str] = []
    reused: list[str] = []
    skipped: list[str] = []
    with _locked(run_dir):
        for name in ORDER[first : ORDER.index(until) + 1]:
            mod = load_stage(name)
            if not mod.enabled(profile):
                skipped.append(name)
                continue
            consumed = inputs.consumed_by(mod)
            key, versions = _stage_key(name, mod, profile, consumed)
            record = manifest.stages.get(name)
            intact = record is not None and not [
                p for a in record.outputs.values() for p in a.check(run_dir, hashes.sha256)
            ]
            if not force and intact and record.key == key:
                reused.append(name)
                log(f"[{name}] up to date, reused")
                inputs.publish(record, run_dir)
                continue
            # no hand-off here: this is the target, so a missing TensorRT is an install
            # problem and the stage says which extra to install (exit 9)
            log(f"[{name}] running on this device")
            _execute(
                name, mod, key, consumed, versions, req, inputs, run_dir, log, hashes, manifest
            )
            ran.append(name)
    result = RunResult(
        run_dir=run_dir,
        manifest=manifest,
        ran=ran,
        reused=reused,
        skipped=skipped,
        seconds=time.perf_counter() - t_start,
    )
    _check_budgets(result, profile.name, ORDER.index(until))
    return result


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _execute(
    name: str,
    mod: Any,
    key: str,
    consumed: dict[str, str],
    versions: dict[str, str | None],
    req: RunRequest,
    inputs: _Inputs,
    run_dir: Path,
    log: Callable[[str], None],
    hashes: _Hashes,
    manifest: Manifest,
) -> StageRecord:
    """Check a stage's inputs, run it, record it in the manifest, publish its outputs."""
    inputs.verify(name, list(consumed), hashes)

    def commit(rec: StageRecord) -> None:
        manifest.stages[name] = rec
        manifest.save(run_dir)

    record = _run_stage(
        name, mod, key, consumed, versions, req, inputs, run_dir, log, hashes, commit
    )
    inputs.publish(record, run_dir)
    log(f"[{name}] done in {record.seconds:.1f}s")
    return record


def _write_error_log(path: Path, text: str) -> str | None:
    """The traceback for the user, if the disk lets us write it."""
    try:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return str(path)
    except OSError:
        return None


def _holds_only_key(work: Path) -> bool:
    try:
        return {p.name for p in work.iterdir()} <= {KEY_FILE}
    except OSError:
        return False


def _run_stage(
    name: str,
    mod: Any,
    key: str,
    consumed: dict[str, str],
    versions: dict[str, str | None],
    req: RunRequest,
    inputs: _Inputs,
    run_dir: Path,
    log: Callable[[str], None],
    hashes: _Hashes,
    commit: Callable[[StageRecord], None],
) -> StageRecord:
    work = run_dir / f"{name}.tmp"
    resumable = getattr(mod, "RESUMABLE", False)
    if hasattr(mod, "resumable"):
        resumable = mod.resumable(req.profile.profile)

    def cleanup() -> None:
        """A failed stage leaves nothing behind but a resumable stage's checkpoints."""
        if not resumable or _holds_only_key(work):
            shutil.rmtree(work, ignore_errors=True)

    started = utcnow()
    t0 = time.perf_counter()
    # One try from the first byte the stage writes: a Ctrl-C or an error anywhere in it
    # leaves nothing behind but a resumable stage's checkpoints.
    try:
        try:
            if work.exists():
                key_file = work / KEY_FILE
                same = key_file.is_file() and key_file.read_text().strip() == key
                if resumable and same:
                    log(f"[{name}] resuming from {work}")
                else:
                    shutil.rmtree(work)
            work.mkdir(parents=True, exist_ok=True)
            fsutil.atomic_write_text(work / KEY_FILE, key)
        except OSError as exc:
            raise RunDirError(
                f"cannot create {work}: {exc.strerror}",
                where=str(work),
                fix="check the run directory's permissions and free space, then rerun",
            ) from None
        ctx = StageContext(
            name=name,
            profile=req.profile.profile,
            run_dir=run_dir,
            work_dir=work,
            inputs={n: inputs.paths[n] for n in consumed},
            options=req.options,
            log=lambda msg: log(f"[{name}] {msg}"),
        )
        result = mod.run(ctx)
    except KeyboardInterrupt:
        cleanup()
        kept = work.exists()
        raise Interrupted(
            f"stopped during stage {name}; finished stages are kept"
            + (f" and {name} resumes from its checkpoint" if kept else ""),
            where=str(run_dir),
            fix="rerun the same command to resume",
        ) from None
    except KdeployError:
        cleanup()
        raise
    except OSError as exc:
        cleanup()
        if exc.errno in _DISK_FULL:
            raise RunDirError(
                f"no space left on device during stage {name}"
                + (f" (writing {exc.filename})" if exc.filename else ""),
                where=str(work),
                fix="free disk space, then rerun the same command: finished stages are kept"
                + (f" and {name} resumes from its last checkpoint" if work.exists() else ""),
            ) from None
        raise _stage_failure(name, exc, run_dir) from None
    except Exception as exc:
        cleanup()
        raise _stage_failure(name, exc, run_dir) from None
    seconds = time.perf_counter() - t0
    missing = [p for p in mod.PRODUCES if p not in result.outputs]
    if missing:
        cleanup()
        raise StageError(
            f"stage {name} did not produce {missing}",
            where=f"kdeploy/stages/{name}.py",
            fix="a kdeploy bug: please report it",
        )
    final = run_dir / name
    outputs = {}
    try:
        for out_name, path in result.outputs.items():
            rel = Path(path).resolve().relative_to(work.resolve())
            outputs[out_name] = (rel, digest_files(Path(path), sha256=fsutil.sha256_file))
        fsutil.atomic_write_json(work / "metrics.json", result.metrics)
    except KeyboardInterrupt:
        cleanup()
        raise Interrupted(
            f"stopped while stage {name} was being saved; finished stages are kept",
            where=str(run_dir),
            fix="rerun the same command to resume",
        ) from None
    except RunDirError:
        cleanup()
        raise
    artifacts = {
        n: make_artifact(run_dir, final / rel, files) for n, (rel, files) in outputs.items()
    }
    record = StageRecord(
        key=key,
        inputs=consumed,
        outputs=artifacts,
        metrics=result.metrics,
        versions=versions,
        started=started,
        finished=utcnow(),
        seconds=round(seconds, 3),
    )
    # Moving the stage into place and recording it in the manifest is one step as far as
    # Ctrl-C is concerned: a stage dir the manifest does not know would be redone.
    with deferred_sigint():
        fsutil.replace_dir(work, final)
        commit(record)
    for art in artifacts.values():
        for path, sha in art.file_paths(run_dir).items():
            hashes.remember(path, sha)
    return record


def _stage_failure(name: str, exc: BaseException, run_dir: Path) -> StageError:
    log_path = _write_error_log(run_dir / "logs" / f"{name}.error.log", traceback.format_exc())
    return StageError(
        f"stage {name} failed: {type(exc).__name__}: {exc}",
        where=log_path or str(run_dir / name),
        fix=(
            "the traceback is in that log; "
            if log_path
            else "(the traceback could not be written: is the disk full?) "
        )
        + "rerun resumes from this stage",
    )
