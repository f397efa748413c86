"""Bad inputs at the real CLI: one clear message, the kind's exit code, nothing half-written.

Every case builds a real bad input (a file, a model dir, a damaged run dir, a flag), runs the
real ``kdeploy`` CLI on it (click's CliRunner in-process; a subset also as a subprocess) and
checks:
- the exit code is the one of the error's kind (kdeploy.core.errors; README "Errors"),
- the output is one message, ``<kind> error: what`` / ``where:`` / ``fix:``, holding the
  case's key phrases (what went wrong and where: a file, a line, a flag),
- no Python traceback,
- the run directory holds nothing half-written: it was not created when the input was
  refused up front; a run dir that existed is byte-for-byte unchanged; and whatever is
  there has a valid manifest whose every artifact matches its sha256, and no temp files.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdeploy.cli import cli
from kdeploy.core.fsutil import sha256_file
from kdeploy.engine.manifest import load_manifest
from tests.conftest import ROOT, TINY_OVERRIDES

SETS = [x for o in TINY_OVERRIDES for x in ("--set", o)]
TEMP_MARKERS = (".tmp", ".old", ".export")


# ------------------------------------------------------------------------------- helpers


@dataclass
class Env:
    tmp: Path
    tiny_bert: Path
    stsb: Path
    tiny_run: Path
    tiny_classifier: Path
    sst2: Path
    patches: list[Callable[[pytest.MonkeyPatch], None]] = field(default_factory=list)

    def compress(
        self,
        *extra: str,
        model: Path | None = None,
        data: Path | None = None,
        out: Path | None = None,
    ) -> list[str]:
        return [
            "compress",
            "--model", str(model or self.tiny_bert),
            "--data", str(data or self.stsb),
            "--out", str(out or self.out),
            "--no-progress",
            *SETS,
            *extra,
        ]  # fmt: skip

    @property
    def out(self) -> Path:
        return self.tmp / "run"

    def data(self, files: dict[str, str | bytes], name: str = "data") -> Path:
        d = self.tmp / name
        d.mkdir(parents=True, exist_ok=True)
        for fname, content in files.items():
            p = d / fname
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content, encoding="utf-8")
        return d

    def stsb_with(self, **files: str | bytes) -> Path:
        """The STS-B slice with some splits replaced."""
        d = self.tmp / "data"
        shutil.copytree(self.stsb, d)
        for split, content in files.items():
            p = d / f"{split}.tsv"
            if content is None:
                p.unlink()
            elif isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content, encoding="utf-8")
        return d

    def model(self, *, drop=(), config: dict | None = None, src: Path | None = None) -> Path:
        d = self.tmp / "model"
        shutil.copytree(src or self.tiny_bert, d)
        for name in drop:
            (d / name).unlink()
        if config is not None:
            cfg = json.loads((d / "config.json").read_text())
            cfg.update(config)
            (d / "config.json").write_text(json.dumps(cfg))
        return d

    def dense_st_model(self) -> Path:
        """The tiny BERT as a sentence-transformers model with a Dense module after pooling
        (its weights are tied to the hidden width)."""
        d = self.model()
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense",
             "type": "sentence_transformers.models.Dense"},
        ]  # fmt: skip
        (d / "modules.json").write_text(json.dumps(modules))
        (d / "1_Pooling").mkdir()
        (d / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))  # fmt: skip
        return d

    def pickle_model(self, *, evil: bool = False) -> Path:
        """The tiny BERT with pytorch_model.bin (pickle) instead of safetensors."""
        import torch
        from safetensors.torch import load_file

        d = self.model(drop=("model.safetensors",))
        state = load_file(str(self.tiny_bert / "model.safetensors"))
        if evil:
            state["evil"] = _Evil(str(self.tmp / "PWNED"))
        torch.save(state, d / "pytorch_model.bin")
        return d

    def profile(self, text: str, name: str = "bad.yaml") -> Path:
        p = self.tmp / name
        p.write_text(text)
        return p

    def run_copy(self) -> Path:
        shutil.copytree(self.tiny_run, self.out)
        return self.out

    def incomplete_run(self, keep: tuple[str, ...] = ("distill",)) -> Path:
        """A run dir as `compress --until distill` (or Ctrl-C after it) leaves it."""
        run = self.run_copy()
        m = load_manifest(run)
        for name in list(m.stages):
            if name not in keep:
                del m.stages[name]
                shutil.rmtree(run / name)
        m.save(run)
        return run


class _Evil:
    """A pickle that runs a command when unpickled without weights_only."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass
class Setup:
    args: list[str]
    run_dir: Path | None = None
    # "absent": refused before anything was written; "unchanged": a run dir that existed
    # is byte-identical; "consistent": written to, but valid and complete as far as it goes
    expect: str = "absent"


@dataclass
class Case:
    id: str
    code: int
    parts: tuple[str, ...]
    build: Callable[[Env], Setup]
    subprocess: bool = False


def snapshot(root: Path) -> dict[str, str] | None:
    if not root.exists():
        return None
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def temp_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if any(m in p.name for m in TEMP_MARKERS)]


def assert_nothing_half_written(setup: Setup, before: dict[str, str] | None) -> None:
    run = setup.run_dir
    if run is None:
        return
    if setup.expect == "absent":
        assert not run.exists(), f"{run} was created: {sorted(os.listdir(run))}"
        return
    if setup.expect == "unchanged":  # (the case may have damaged it on purpose)
        assert snapshot(run) == before, "the run dir changed"
        assert temp_leftovers(run) == []
        return
    if not run.exists():
        return
    assert temp_leftovers(run) == []
    m = load_manifest(run)  # raises if the manifest is corrupted or half-written
    if m is not None:
        for rec in m.stages.values():
            for art in rec.outputs.values():
                assert art.check(run) == [], art.path


def check_message(output: str, case: Case) -> None:
    assert "Traceback" not in output, output
    lines = output.strip().splitlines()
    heads = [ln for ln in lines if ln.split(":")[0].endswith(("error", "missed", "interrupted"))]
    assert len(heads) == 1, f"expected one message:\n{output}"
    assert sum(ln.startswith("  where: ") for ln in lines) == 1, output
    assert sum(ln.startswith("  fix:   ") for ln in lines) == 1, output
    for part in case.parts:
        assert part in output, f"{part!r} not in:\n{output}"


# ------------------------------------------------------------------------------- the table

BAD_PROFILE_BASE = "name: bad\nextends: cpu-int8\n"


def _profile_case(text: str, *extra: str) -> Callable[[Env], Setup]:
    def build(env: Env) -> Setup:
        p = env.profile(text)
        return Setup(env.compress("--profile", str(p), *extra), env.out)

    return build


def _case_disk_full_bench(env: Env) -> Setup:
    """ENOSPC when bench writes bench.json (fsync of a file in bench.tmp fails)."""
    run = env.run_copy()
    real_fsync = os.fsync

    def full(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if "/bench.tmp/" in path and "bench.json" in path:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    env.patches.append(lambda mp: mp.setattr(os, "fsync", full))
    return Setup(env.compress("--set", "bench.iterations=4", out=run), run, "consistent")


def _case_disk_full_quantize(env: Env) -> Setup:
    """ENOSPC inside a library call of a stage (a copy in quantize, not our atomic writes)."""
    run = env.run_copy()
    real_copy2 = shutil.copy2

    def full(src, dst, *a, **kw):
        if "quantize.tmp" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_copy2(src, dst, *a, **kw)

    env.patches.append(lambda mp: mp.setattr(shutil, "copy2", full))
    return Setup(env.compress("--set", "quantize.per_channel=false", out=run), run, "consistent")


def _corrupt_onnx(env: Env) -> Path:
    run = env.run_copy()
    onnx = run / "quantize" / "student" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-16] + b"\0" * 16)
    return run


def _other_profile(env: Env) -> Setup:
    run = env.run_copy()
    other = env.profile("name: other\nextends: cpu-int8\n", "other.yaml")
    return Setup(env.compress("--profile", str(other), out=run), run, "unchanged")


CASES = [
    # --- profiles (3)
    Case("unknown-profile", 3, ("unknown profile 'cpu-int9'", "did you mean 'cpu-int8'"),
         lambda e: Setup(e.compress("--profile", "cpu-int9"), e.out), subprocess=True),
    Case("malformed-yaml", 3, ("malformed YAML", "bad.yaml:5:7"),
         _profile_case(BAD_PROFILE_BASE + "distill:\n  epochs: [1, 2\n  seed: 3\n"),
         subprocess=True),
    Case("unknown-key", 3, ("bad.yaml:4", "distill.epoch", "did you mean 'epochs'"),
         _profile_case(BAD_PROFILE_BASE + "distill:\n  epoch: 2\n")),
    Case("wrong-type", 3, ("bad.yaml:4", "distill.seed", "'forty-two'"),
         _profile_case(BAD_PROFILE_BASE + "distill:\n  seed: forty-two\n")),
    Case("out-of-range", 3, ("bad.yaml:4", "distill.learning_rate", "less than 1"),
         _profile_case(BAD_PROFILE_BASE + "distill:\n  learning_rate: 5\n")),
    Case("bad-set-value", 3, ("--set student.layers=0", "greater than or equal to 1"),
         lambda e: Setup(e.compress("--set", "student.layers=0"), e.out)),
    Case("extends-missing", 3, ("extends 'cpu-int7'", "cannot be found", "bad.yaml:2"),
         _profile_case("name: bad\nextends: cpu-int7\n")),
    Case("extends-itself", 3, ("extends itself", "bad.yaml"),
         _profile_case("name: bad\nextends: bad.yaml\n")),
    Case("incoherent-profile", 3, ("distill.max_seq_length=512 exceeds",
                                   "where: --set distill.max_seq_length=512"),
         lambda e: Setup(e.compress("--set", "distill.max_seq_length=512"), e.out)),
    Case("seq-beyond-model-max", 3,
         ("distill.max_seq_length asks for sequences of 200 tokens", "at most 128",
          "--set distill.max_seq_length=200", "--set distill.max_seq_length=128"),
         lambda e: Setup(e.compress("--set", "distill.max_seq_length=200"), e.out)),
    Case("student-deeper-than-teacher", 3,
         ("the student asks for 6 layers", "has only 4", "--set student.layers=6"),
         lambda e: Setup(e.compress("--set", "student.layers=6"), e.out)),
    Case("student-wider-than-teacher", 3,
         ("student.hidden_size 64 is wider than the teacher's 32",
          "--set student.hidden_size=64", "at most 32"),
         lambda e: Setup(e.compress("--set", "student.hidden_size=64"), e.out)),
    Case("student-width-not-whole-heads", 3,
         ("student.hidden_size 20 is not a whole number of the teacher's attention heads",
          "4 heads of width 8", "multiple of 8, e.g. 16"),
         lambda e: Setup(e.compress("--set", "student.hidden_size=20"), e.out)),
    Case("student-narrower-than-dense-module", 3,
         ("sentence-transformers modules ['sentence_transformers.models.Dense'] are tied to",
          "--set student.hidden_size=16"),
         lambda e: Setup(e.compress("--set", "student.hidden_size=16",
                                    model=e.dense_st_model()), e.out)),
    Case("student-ffn-wider-than-teacher", 3,
         ("student.intermediate_size 128 is wider than the teacher's 64",
          "--set student.intermediate_size=128"),
         lambda e: Setup(e.compress("--set", "student.intermediate_size=128"), e.out)),
    Case("bench-seq-beyond-model-max", 3,
         ("bench.sequence_lengths asks for sequences of 256 tokens", "at most 128"),
         lambda e: Setup(e.compress("--set", "bench.sequence_lengths=[64,256]"), e.out)),
    # --- the model (4)
    Case("missing-model-dir", 4, ("model directory", "does not exist", "--model"),
         lambda e: Setup(e.compress(model=e.tmp / "nope"), e.out), subprocess=True),
    Case("model-not-hf-dir", 4, ("has no config.json",),
         lambda e: Setup(e.compress(model=e.model(drop=("config.json",))), e.out)),
    Case("model-without-weights", 4, ("has a config but no weights",),
         lambda e: Setup(e.compress(model=e.model(drop=("model.safetensors",))), e.out)),
    Case("pickle-only-refused", 4, ("only has pickle weights", "--allow-pickle"),
         lambda e: Setup(e.compress(model=e.pickle_model()), e.out), subprocess=True),
    Case("malicious-pickle-allowed", 4,
         ("holds more than tensors", "weights_only=True", "posix.system", "pytorch_model.bin"),
         lambda e: Setup(e.compress("--allow-pickle", model=e.pickle_model(evil=True)), e.out,
                         "consistent")),
    Case("remote-code-refused", 4, ("auto_map", "--trust-remote-code"),
         lambda e: Setup(e.compress(model=e.model(
             config={"auto_map": {"AutoModel": "modeling_x.XModel"}})), e.out)),
    Case("unsupported-architecture", 4,
         ("unsupported architecture 'gpt2'", "GPT2LMHeadModel", "bert, roberta"),
         lambda e: Setup(e.compress(model=e.model(
             config={"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})), e.out)),
    Case("malformed-model-config", 4, ("cannot read", "config.json"),
         lambda e: Setup(e.compress(model=_broken_config(e)), e.out)),
    # --- the data (5)
    Case("missing-data-dir", 5, ("data directory", "does not exist"),
         lambda e: Setup(e.compress(data=e.tmp / "nope"), e.out)),
    Case("data-is-a-file", 5, ("must be a directory",),
         lambda e: Setup(e.compress(data=e.stsb / "train.tsv"), e.out)),
    Case("missing-train-file", 5, ("no train.tsv (found: dev.tsv, test.tsv)",),
         lambda e: Setup(e.compress(data=e.stsb_with(train=None)), e.out)),
    Case("missing-eval-file", 5, ("no dev.tsv or test.tsv",),
         lambda e: Setup(e.compress(data=e.stsb_with(dev=None, test=None)), e.out)),
    Case("misnamed-columns", 5,
         ("has columns ['s1', 's2', 'similarity']", "train.tsv:1", "rename the header"),
         lambda e: Setup(e.compress(data=e.stsb_with(train="s1\ts2\tsimilarity\na\tb\t1\n")),
                         e.out)),
    Case("empty-data", 5, ("train.tsv is empty",),
         lambda e: Setup(e.compress(data=e.stsb_with(train="")), e.out)),
    Case("header-only-data", 5, ("has a header but no rows", "dev.tsv:1"),
         lambda e: Setup(e.compress(data=e.stsb_with(dev="sentence1\tsentence2\tscore\n")),
                         e.out)),
    Case("non-utf8-data", 5, ("is not UTF-8", "train.tsv", "iconv"),
         lambda e: Setup(e.compress(data=e.stsb_with(
             train=b"sentence1\tsentence2\tscore\n" + "caf\xe9\tx\t1\n".encode("latin-1"))),
             e.out), subprocess=True),
    Case("missing-field", 5, ("row has 2 fields, the header has 3", "test.tsv:3"),
         lambda e: Setup(e.compress(data=e.stsb_with(
             test="sentence1\tsentence2\tscore\na\tb\t1\nc d 2\te\n")), e.out)),
    Case("score-not-a-number", 5, ("score 'high' is not a number", "dev.tsv:2"),
         lambda e: Setup(e.compress(data=e.stsb_with(
             dev="sentence1\tsentence2\tscore\na\tb\thigh\n")), e.out)),
    Case("labels-out-of-range", 5, ("labels in", "go up to 4", "has 2 classes"),
         lambda e: Setup(e.compress(model=e.tiny_classifier, data=_sst2_with_label(e, 4)),
                         e.out)),
    Case("negative-label", 5, ("label -1 is negative", "dev.tsv:2"),
         lambda e: Setup(e.compress(model=e.tiny_classifier, data=e.data(
             {"train.tsv": "sentence\tlabel\nok\t1\n",
              "dev.tsv": "sentence\tlabel\nbad\t-1\n"})), e.out)),
    Case("task-mismatch", 5, ("classification data but the teacher is an embedding model",),
         lambda e: Setup(e.compress(data=e.sst2), e.out)),
    Case("eval-split-smaller-than-batch", 5,
         ("test.tsv has 40 example(s), fewer than one batch of verify.batch_size=64",
          "--set verify.batch_size=40"),
         lambda e: Setup(e.compress("--set", "verify.batch_size=64"), e.out)),
    Case("blank-training-texts", 5, ("no text to distil on",),
         lambda e: Setup(e.compress(data=e.stsb_with(
             train="sentence1\tsentence2\tscore\n \t \t1\n\t\t2\n")), e.out)),
    Case("missing-unlabeled-file", 5, ("unlabeled text file", "does not exist"),
         lambda e: Setup(e.compress("--unlabeled", str(e.tmp / "extra.txt")), e.out)),
    # --- the run directory (6)
    Case("unwritable-out-dir", 6, ("cannot write to the output directory", "--out"),
         lambda e: Setup(e.compress(out=_file(e) / "run"), e.tmp / "a-file" / "run"),
         subprocess=True),
    Case("run-dir-of-another-profile", 6, ("holds a run of profile 'cpu-int8', not 'other'",
                                           "--force"), _other_profile),
    Case("corrupted-manifest", 6, ("manifest.json is corrupted", "--force"),
         lambda e: Setup(e.compress(out=_damage_manifest(e)), e.out, "unchanged")),
    Case("corrupted-onnx-verify", 6,
         ("artifact student_int8", "is damaged", "model.onnx does not match its sha256"),
         lambda e: Setup(["verify", str(_corrupt_onnx(e))], e.out, "unchanged"),
         subprocess=True),
    Case("corrupted-onnx-bench", 6, ("is damaged", "model.onnx does not match its sha256"),
         lambda e: Setup(["bench", str(_corrupt_onnx(e))], e.out, "unchanged")),
    Case("corrupted-bench-json-verify", 6, ("artifact bench", "bench.json does not match"),
         lambda e: Setup(["verify", str(_damage_bench_json(e))], e.out, "unchanged")),
    Case("bench-on-incomplete-run", 6, ("is incomplete", "export", "have not finished"),
         lambda e: Setup(["bench", str(e.incomplete_run())], e.out, "unchanged")),
    Case("verify-on-incomplete-run", 6, ("is incomplete", "rerun `kdeploy compress`"),
         lambda e: Setup(["verify", str(e.incomplete_run())], e.out, "unchanged")),
    Case("data-changed-since-run", 6, ("changed since the run used it", "--data"),
         lambda e: Setup(["verify", str(_run_with_changed_data(e))], e.out, "unchanged")),
    Case("from-before-unfinished", 6, ("stage export comes before --from quantize",),
         lambda e: Setup(e.compress("--from", "quantize", out=e.incomplete_run()), e.out,
                         "consistent")),
    Case("disk-full-in-our-write", 6, ("no space left on device", "bench.json",
                                       "rerun the same command"), _case_disk_full_bench),
    Case("disk-full-in-a-library", 6, ("no space left on device during stage quantize",
                                       "rerun the same command"), _case_disk_full_quantize),
    # --- conflicting flags (2)
    Case("force-and-from", 2, ("--force and --from", "drop --force"),
         lambda e: Setup(e.compress("--force", "--from", "bench"), e.out), subprocess=True),
    Case("from-after-until", 2, ("--from bench comes after --until export",),
         lambda e: Setup(e.compress("--from", "bench", "--until", "export"), e.out)),
    Case("unknown-stage", 2, ("--until compile: no such stage", "distill, sparsify, export"),
         lambda e: Setup(e.compress("--until", "compile"), e.out)),
    Case("verify-model-without-reference", 2, ("needs --reference",),
         lambda e: Setup(["verify", str(e.tiny_run / "package" / "deploy"), "--data",
                          str(e.stsb)])),
]  # fmt: skip


def _broken_config(env: Env) -> Path:
    d = env.model()
    (d / "config.json").write_text('{"model_type": "bert",')
    return d


def _sst2_with_label(env: Env, label: int) -> Path:
    d = env.tmp / "sst2"
    shutil.copytree(env.sst2, d)
    with open(d / "train.tsv", "a", encoding="utf-8") as f:
        f.write(f"an extra sentence\t{label}\n")
    return d


def _damage_manifest(env: Env) -> Path:
    run = env.run_copy()
    _write(run / "manifest.json", '{"stag')
    return run


def _damage_bench_json(env: Env) -> Path:
    run = env.run_copy()
    _write(run / "bench" / "bench.json", "{}")
    return run


def _file(env: Env) -> Path:
    f = env.tmp / "a-file"
    f.write_text("not a directory")
    return f


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _run_with_changed_data(env: Env) -> Path:
    """A finished run whose recorded data dir no longer holds the same files."""
    data = env.tmp / "data"
    shutil.copytree(env.stsb, data)
    run = env.run_copy()
    m = json.loads((run / "manifest.json").read_text())
    m["data"]["path"] = str(data)
    (run / "manifest.json").write_text(json.dumps(m))
    with open(data / "test.tsv", "a", encoding="utf-8") as f:
        f.write("one more\tpair\t2.5\n")
    return run


# ------------------------------------------------------------------------------- the tests


@pytest.fixture
def env(tmp_path, tiny_bert, stsb_small, tiny_run, tiny_classifier, sst2_small) -> Env:
    return Env(tmp_path, tiny_bert, stsb_small, tiny_run, tiny_classifier, sst2_small)


def test_the_table_is_big_enough():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, env: Env, monkeypatch):
    setup = case.build(env)
    before = snapshot(setup.run_dir) if setup.run_dir else None
    for patch in env.patches:
        patch(monkeypatch)
    res = CliRunner().invoke(cli, setup.args, catch_exceptions=False)
    monkeypatch.undo()
    assert res.exit_code == case.code, res.output
    check_message(res.output, case)
    assert_nothing_half_written(setup, before)


SUBPROCESS_CASES = [c for c in CASES if c.subprocess]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_bad_input_real_process(case: Case, env: Env):
    """The same through `python -m kdeploy.cli`: real exit status, real stderr."""
    setup = case.build(env)
    before = snapshot(setup.run_dir) if setup.run_dir else None
    proc = subprocess.run(
        [sys.executable, "-m", "kdeploy.cli", *setup.args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == case.code, proc.stderr
    check_message(proc.stdout + proc.stderr, case)
    assert_nothing_half_written(setup, before)


def test_malicious_pickle_never_runs_its_code(env: Env):
    """--allow-pickle loads with weights_only=True: the pickle's command never runs."""
    model = env.pickle_model(evil=True)
    res = CliRunner().invoke(cli, env.compress("--allow-pickle", model=model))
    assert res.exit_code == 4
    assert not (env.tmp / "PWNED").exists()


def test_clean_pickle_checkpoint_loads_when_allowed(env: Env):
    """A plain pytorch_model.bin teacher goes through distillation and export."""
    model = env.pickle_model()
    res = CliRunner().invoke(
        cli, env.compress("--allow-pickle", "--until", "export", model=model),
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    m = load_manifest(env.out)
    assert list(m.stages) == ["distill", "export"]
    assert (env.out / "distill" / "student" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "case_id, ran",
    [
        ("disk-full-in-our-write", ["bench", "verify", "package"]),
        ("disk-full-in-a-library", ["quantize", "bench", "verify", "package"]),
    ],
)
def test_rerun_after_disk_full_resumes(case_id, ran, env: Env, monkeypatch):
    """After space is freed the same command resumes: earlier stages are reused."""
    case = next(c for c in CASES if c.id == case_id)
    setup = case.build(env)
    for patch in env.patches:
        patch(monkeypatch)
    res = CliRunner().invoke(cli, setup.args, catch_exceptions=False)
    assert res.exit_code == 6
    monkeypatch.undo()
    res = CliRunner().invoke(cli, setup.args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"ran {len(ran)} stage(s), reused {6 - len(ran)}" in res.output
    for stage in ran:
        assert f"[{stage}] running" in res.output
    assert_nothing_half_written(Setup(setup.args, setup.run_dir, "consistent"), None)


def test_internal_error_is_one_message_with_a_log(env: Env, monkeypatch):
    """A bug (an unexpected exception) still prints no traceback; the log holds it."""
    import kdeploy.config

    def boom(*a, **kw):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(kdeploy.config, "load_profile", boom)
    monkeypatch.setattr("tempfile.tempdir", str(env.tmp))
    res = CliRunner().invoke(cli, env.compress(), catch_exceptions=False)
    assert res.exit_code == 1
    assert "internal error: unexpected ZeroDivisionError" in res.output
    assert "Traceback" not in res.output
    logs = list(env.tmp.glob("kdeploy-crash-*.log"))
    assert logs and "ZeroDivisionError" in logs[0].read_text()
