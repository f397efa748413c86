"""The one scheduling loop. Host runs (``kdeploy compress``) and device runs (``kdeploy
build``) are two policies of it: which stages it may run, which it takes as recorded,
whether a stage that cannot run here hands the run off to the target (exit 11).

For each stage in order: skip it if the profile disables it; compute its key (profile
section, inputs' digests, tool versions); reuse it when the key matches and its outputs
still have their recorded sha256; otherwise run it (``execute.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kdeploy import __version__
from kdeploy.core.deps import version_of
from kdeploy.core.errors import BudgetError, HandOff, RunDirError
from kdeploy.core.fsutil import digest_json
from kdeploy.engine.execute import RunState, StagePlan, execute
from kdeploy.engine.manifest import Manifest
from kdeploy.stages import ORDER, STAGES
from kdeploy.stages.base import Stage, StageEnv


@dataclass(frozen=True)
class Policy:
    """How the loop treats a run's stages."""

    until: str = ORDER[-1]
    from_stage: str | None = None
    force: bool = False
    # stages before this one are taken as recorded, not rescheduled (a device run)
    first: str = ORDER[0]
    # a stage that cannot run on this machine ends the run with a hand-off (the host);
    # on the target a missing TensorRT is an install problem the stage reports (exit 9)
    hand_off: bool = True
    # disabled stages are listed in the manifest (and their old records dropped)
    record_skipped: bool = True


@dataclass
class RunResult:
    run_dir: Path
    manifest: Manifest
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


class BudgetMissed(BudgetError):
    """verify found a budget missed; the finished run is in ``result`` (every artifact,
    the report included, is kept), so callers can still say what ran and what was reused."""

    def __init__(self, what: str, *, where: str, fix: str, result: RunResult) -> None:
        super().__init__(what, where=where, fix=fix)
        self.result = result


def stage_key(stage: Stage, consumed: dict[str, str]) -> tuple[str, dict[str, str | None]]:
    """The stage key: its profile section, its inputs' digests, its tools' versions."""
    versions = {tool: version_of(tool) for tool in stage.tools}
    key = digest_json(
        {
            "stage": stage.name,
            "kdeploy": __version__,
            "config": stage.config(),
            "inputs": consumed,
            "versions": versions,
        }
    )
    return key, versions


def plan_stage(state: RunState, stage: Stage) -> StagePlan:
    inputs = state.index.inputs_for(stage.consumes)
    consumed = {a: state.index.digests[a] for a in inputs.sources.values()}
    key, versions = stage_key(stage, consumed)
    return StagePlan(stage=stage, key=key, consumed=consumed, versions=versions, inputs=inputs)


def rerun_reason(state: RunState, plan: StagePlan, policy: Policy) -> str | None:
    """Why a stage must run (None: its record can be reused). A stage before --from that is
    not finished and intact is an error: --from promises the earlier stages are done."""
    name = plan.stage.name
    before_from = policy.from_stage is not None and ORDER.index(name) < ORDER.index(
        policy.from_stage
    )
    record = state.manifest.stages.get(name)
    reason = None
    if record is None:
        reason = "not run yet"
    elif record.key != plan.key:
        reason = "its profile section, inputs or tool versions changed"
    elif lacking := [o for o in plan.stage.outputs_expected() if o not in record.outputs]:
        reason = f"its record lacks {', '.join(lacking)} (made by an earlier kdeploy)"
    elif policy.force:
        reason = "--force"
    elif policy.from_stage is not None and not before_from:
        reason = f"--from {policy.from_stage}"
    else:
        sha = state.hashes.sha256
        problems = [p for a in record.outputs.values() for p in a.check(state.run_dir, sha)]
        if problems and before_from:
            raise RunDirError(
                f"stage {name} (before --from {policy.from_stage}) has damaged outputs: "
                f"{problems[0]}",
                where=str(state.run_dir / name),
                fix=f"rerun without --from so that {name} is rebuilt",
            )
        if problems:
            reason = f"its outputs changed on disk ({problems[0]})"
            state.log(f"warning: {reason}")
    if reason is not None and before_from:
        raise RunDirError(
            f"stage {name} comes before --from {policy.from_stage} but is not finished ({reason})",
            where=str(state.run_dir),
            fix="rerun without --from (finished stages are reused anyway)",
        )
    return reason


def hand_off(stage: Stage, state: RunState, reason: str) -> HandOff:
    """The host did what it can: the run stops cleanly before a stage of the target."""
    state.manifest.save(state.run_dir)
    run_dir = state.run_dir
    done = ", ".join(state.manifest.stages) or "none"
    return HandOff(
        f"stage {stage.name}: {reason}. Finished stages ({done}) are kept in {run_dir}",
        where=str(run_dir),
        fix=f"copy {run_dir} to the target device (with kdeploy[trt] installed) and run "
        f"`kdeploy build {run_dir} --until package` there (build, bench, verify, report); "
        f"or `kdeploy build {run_dir}`, then `kdeploy bench {run_dir}` and "
        f"`kdeploy verify {run_dir}`",
    )


def schedule(state: RunState, env: StageEnv, policy: Policy, result: RunResult) -> RunResult:
    """Run or reuse every stage from ``policy.first`` to ``policy.until``, in order."""
    manifest = state.manifest
    if policy.record_skipped:
        manifest.skipped = []
    first, until = ORDER.index(policy.first), ORDER.index(policy.until)
    for stage_cls in STAGES[first : until + 1]:
        stage = stage_cls(env_at(env, manifest))
        name = stage.name
        if not stage.enabled():
            result.skipped.append(name)
            if policy.record_skipped:
                manifest.skipped.append(name)
                manifest.stages.pop(name, None)
            continue
        plan = plan_stage(state, stage)
        reason = rerun_reason(state, plan, policy)
        record = manifest.stages.get(name)
        if reason is None and record is not None:
            result.reused.append(name)
            state.log(f"[{name}] up to date, reused ({record.seconds:.1f}s when it ran)")
            state.index.publish(record, state.run_dir)
            continue
        unavailable = stage.unavailable() if policy.hand_off else None
        if unavailable is not None:
            raise hand_off(stage, state, unavailable)
        state.log(f"[{name}] running ({reason})")
        execute(state, plan)
        result.ran.append(name)
    return result


def env_at(env: StageEnv, manifest: Manifest) -> StageEnv:
    """The stage's view of the run: the manifest as it stands now (a copy)."""
    return StageEnv(
        profile=env.profile,
        options=env.options,
        run_dir=env.run_dir,
        log=env.log,
        manifest=manifest.model_dump(mode="json"),
    )


def check_budgets(result: RunResult, profile_name: str, until: str) -> None:
    """Raise BudgetMissed when verify recorded a missed budget (and verify was in range)."""
    verify = result.manifest.stages.get("verify")
    budget_checked = verify is not None and ORDER.index(until) >= ORDER.index("verify")
    if budget_checked and not verify.metrics.get("passed", True):
        failed = [b["name"] for b in verify.metrics.get("budgets", []) if not b["passed"]]
        raise BudgetMissed(
            f"profile {profile_name}: budget(s) missed: {', '.join(failed)}",
            where=str(result.run_dir / "package" / "report.md"),
            fix="see the budget table above; artifacts and the report are kept",
            result=result,
        )
