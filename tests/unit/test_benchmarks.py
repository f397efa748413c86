"""Benchmarks cannot rot unseen: every command README and RESULTS quote exists and parses its
arguments, and every benchmark script runs end to end on the tiny model (seconds each),
writing its table into a results file the way ``--write`` writes RESULTS.md."""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
DOCS = (ROOT / "README.md", BENCH / "RESULTS.md")
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "results")


def bench_module(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def quoted_commands(path: Path) -> list[str]:
    """`kdeploy ...` and `python benchmarks/...` commands in code blocks and code spans."""
    text = path.read_text(encoding="utf-8")
    chunks = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        chunks += re.sub(r"\\\n\s*", " ", block).splitlines()
    inline = re.sub(r"```.*?```", "", text, flags=re.S)
    chunks += [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", inline)]
    commands = []
    for chunk in chunks:
        for part in re.split(r"&&|;|\|", re.sub(r"\s#.*$", "", chunk)):
            words = part.split()
            while words and re.match(r"^[A-Z_]+=\S*$", words[0]):  # HF_HUB_OFFLINE=1 ...
                words.pop(0)
            if words and re.match(r"^benchmarks/\w+\.py$", words[0]):
                words.insert(0, "python")  # `benchmarks/x.py --flag` quoted without python
            cmd = " ".join(words)
            if cmd.startswith(("kdeploy ", "python benchmarks/", "python3 benchmarks/")):
                commands.append(cmd)
    return commands


ALL_COMMANDS = sorted({c for doc in DOCS for c in quoted_commands(doc)})


def test_the_docs_quote_commands():
    assert len(ALL_COMMANDS) >= 15, ALL_COMMANDS
    assert any(c.startswith("python benchmarks/vs_baselines.py") for c in ALL_COMMANDS)


def check_kdeploy(argv: list[str]) -> None:
    """The subcommand exists, every option is one of its options, and compress's
    --profile / --set load as a valid profile."""
    import click

    from kdeploy.cli import cli
    from kdeploy.config import load_profile

    cmd, args = cli, list(argv)
    while isinstance(cmd, click.Group):
        assert args and not args[0].startswith("-"), f"no subcommand in {argv}"
        sub = cmd.get_command(click.Context(cmd), args.pop(0))
        assert sub is not None, f"no such command in {argv}"
        cmd = sub
    opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
    for token in args:
        if token.startswith("-"):
            assert token.split("=")[0] in opts, f"{token} is not an option of {argv[:2]}"
    if cmd.name == "compress":
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        profile = args[args.index("--profile") + 1] if "--profile" in args else "cpu-int8"
        load_profile(profile, sets)


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_every_quoted_command_exists_and_parses(command):
    argv = shlex.split(command)
    if argv[0] == "kdeploy":
        check_kdeploy(argv[1:])
        return
    script = Path(argv[1])
    assert (ROOT / script).is_file(), f"{script} does not exist"
    if len(argv) == 2:
        return  # the script named, not a command to run (its required options are absent)
    parser = bench_module(script.stem).build_parser()
    try:
        parser.parse_args(argv[2:])
    except SystemExit as exc:
        pytest.fail(f"{command}: arguments do not parse (exit {exc.code})")


def test_every_benchmark_has_a_smoke_test():
    tested = {n.removeprefix("test_smoke_") for n in globals() if n.startswith("test_smoke_")}
    assert set(SCRIPTS) <= tested, set(SCRIPTS) - tested


def written(results: Path, tag_prefix: str, script: str) -> str:
    """The block a benchmark's --write put into ``results``: stamped and non-empty."""
    text = results.read_text()
    match = re.search(rf"<!-- ({re.escape(tag_prefix)}[^ ]*) -->\n(.*?)<!-- /\1 -->", text, re.S)
    assert match, text
    body = match.group(2)
    assert f"by `python benchmarks/{script}.py" in body and "| " in body
    return body


def test_smoke_code_shape(tmp_path):
    out = tmp_path / "R.md"
    bench_module("code_shape").main(["--top", "3", "--write", "--results", str(out)])
    assert "| imports against the layer order | 0 |" in written(out, "code_shape", "code_shape")


def test_smoke_install_size(tmp_path):
    out = tmp_path / "R.md"
    bench_module("install_size").main(["--write", "--results", str(out)])
    assert "no torch" in written(out, "install_size", "install_size")


def test_smoke_runtime_overhead(tiny_run, stsb_small, tmp_path):
    out = tmp_path / "R.md"
    argv = [str(tiny_run), "--data", str(stsb_small), "--texts", "48", "--repeats", "2"]
    bench_module("runtime_overhead").main([*argv, "--write", "--results", str(out)])
    body = written(out, "runtime_overhead", "runtime_overhead")
    assert "runtime output == hand output: True" in body and "| bucketed |" in body


def run_in_child(script: str, argv: list[str], **env: str) -> None:
    """A benchmark in its own process. The two that run OpenVINO and NNCF (vs_baselines,
    cpu_variants) do not run inside the test process: after them, a SIGINT this process
    sends itself (test_interrupt_safety) ended it with a segfault (not reproduced outside
    pytest; see the closing notes of issue 18)."""
    import os
    import subprocess

    res = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), *argv],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )
    assert res.returncode == 0, res.stderr[-3000:]


def test_smoke_vs_baselines(tiny_ov_run, tmp_path):
    out = tmp_path / "R.md"
    run = tmp_path / "run"
    shutil.copytree(tiny_ov_run, run)
    argv = ["--run", str(run), "--rounds", "1", "--batches", "1", "8", "--bucket"]
    run_in_child(
        "vs_baselines",
        [*argv, "--write", "--results", str(out)],
        KDEPLOY_CACHE=str(tmp_path / "cache"),
    )
    body = written(out, "vs_baselines", "vs_baselines")
    assert "| teacher optimum+ORT dyn INT8 |" in body and "| kdeploy student_int8 |" in body
    # the strongest CPU peer and kdeploy's OpenVINO model, ratios against the faster peer
    assert "| teacher OpenVINO NNCF INT8 |" in body and "| kdeploy student_openvino |" in body
    assert "x strongest peer (b8)" in body and "strongest peer at batch 8: teacher" in body


def test_smoke_cpu_variants(tiny_run_copy, tmp_path):
    out = tmp_path / "R.md"
    argv = ["--run", str(tiny_run_copy), "--rounds", "1", "--latency-texts", "4"]
    argv += ["--only", "dyn-s8-pc", "dyn-matmul", "ov-nncf", "ov-static-qdq-s8s8"]
    argv += ["--work", str(tmp_path / "v")]
    run_in_child("cpu_variants", [*argv, "--write", "--results", str(out)])
    body = written(out, "cpu_variants", "cpu_variants")
    assert "| dyn-s8-pc |" in body and "| teacher optimum dyn-INT8 |" in body
    assert "| ov-nncf |" in body and "| ov-static-qdq-s8s8 |" in body


def test_smoke_distill_sweep(tiny_bert, stsb_small, sst2_small, tmp_path):
    out = tmp_path / "R.md"
    sets = [x for o in TINY_OVERRIDES if not o.startswith("verify.") for x in ("--set", o)]
    argv = ["--model", str(tiny_bert), "--data", str(stsb_small), "--keeps", "0,3"]
    argv += ["--loss-sets", "emb", "--out", str(tmp_path / "sweep"), *sets]
    argv += ["--probe", str(sst2_small)]
    bench_module("distill_sweep").main([*argv, "--write", "--results", str(out)])
    body = written(out, "distill_sweep", "distill_sweep")
    row = next(line for line in body.splitlines() if line.startswith("| model | [0, 3] |"))
    # the transfer cells: the student's recall@10 and probe retention, optimum's beside them
    assert re.search(r"\| \d+\.\d% \(\d+\.\d%\) \| \d+\.\d% \(\d+\.\d%\) \|$", row), row


def test_smoke_transfer(tiny_bert, stsb_small, sst2_small, tmp_path):
    out = tmp_path / "R.md"
    sets = [x for o in TINY_OVERRIDES for x in ("--set", o)]
    argv = ["--model", str(tiny_bert), "--data", str(stsb_small), "--probe", str(sst2_small)]
    argv += ["--unlabeled", str(sst2_small), "--out", str(tmp_path / "shipped"), *sets]
    bench_module("transfer").main([*argv, "--write", "--results", str(out)])
    body = written(out, "transfer", "transfer")
    rows = [
        line
        for line in body.splitlines()
        if line.startswith("| shipped") or line.startswith("| cross-domain")
    ]
    assert [r.split(" | ")[1] for r in rows] == [
        "teacher_fp32",
        "teacher_int8",
        "student_int8",
        "student_int8",
    ]
    # the cross-domain student trained on none of the STS-B test texts
    cross = rows[-1].split(" | ")
    assert cross[8].startswith("0/") and (tmp_path / "shipped-xdomain" / "manifest.json").is_file()


def test_smoke_slice_importance(tiny_bert, stsb_small, tmp_path):
    out = tmp_path / "R.md"
    argv = ["--model", str(tiny_bert), "--layers", "0", "3", "--widths", "16/32"]
    argv += ["--data", str(stsb_small)]
    bench_module("slice_importance").main([*argv, "--write", "--results", str(out)])
    assert "| 16/32 |" in written(out, "slice_importance", "slice_importance")


def test_smoke_sparse_gemm(tiny_bert, capsys):
    argv = ["--model", str(tiny_bert), "--device", "cpu", "--iters", "2", "--no-compile"]
    bench_module("sparse_gemm").main(argv)
    printed = capsys.readouterr().out
    assert "CPU (smoke run" in printed and "attention.self.query" in printed
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench_module("sparse_gemm").main([*argv, "--write"])


def test_smoke_train_classifier_teacher(tiny_bert, sst2_small, tmp_path):
    out = tmp_path / "R.md"
    argv = ["--base", str(tiny_bert), "--data", str(sst2_small), "--max-train", "32"]
    argv += ["--out", str(tmp_path / "teacher"), "--batch-size", "16"]
    bench_module("train_classifier_teacher").main([*argv, "--write", "--results", str(out)])
    assert "| 32 | 1 |" in written(out, "train_classifier_teacher", "train_classifier_teacher")
    assert (tmp_path / "teacher" / "model.safetensors").is_file()


def test_smoke_run_report(tiny_run, tmp_path):
    out = tmp_path / "R.md"
    bench_module("run_report").main(["--run", str(tiny_run), "--write", "--results", str(out)])
    body = written(out, "run_report", "run_report")
    assert "**student_int8** (deployed)" in body and "| budget | value |" in body


def test_smoke_sparse_oneshot(tiny_bert, stsb_small, tmp_path):
    out = tmp_path / "R.md"
    argv = ["--model", str(tiny_bert), "--data", str(stsb_small), "--calibration-texts", "32"]
    argv += ["--min-features", "8", "--write", "--results", str(out)]
    bench_module("sparse_oneshot").main(argv)
    body = written(out, "sparse_oneshot", "sparse_oneshot")
    assert "| dense (no masks) |" in body and "modelopt sparsegpt" in body
    assert "kdeploy sparsegpt (mask + update)" in body


@pytest.mark.serve
def test_smoke_serve_load(tiny_run, stsb_small, tmp_path):
    pytest.importorskip("pytriton", reason="pip install 'kdeploy[serve]'")
    out = tmp_path / "R.md"
    argv = [str(tiny_run), "--data", str(stsb_small), "--texts", "24", "--clients", "1", "4"]
    argv += ["--rounds", "1", "--write", "--results", str(out)]
    bench_module("serve_load").main(argv)
    body = written(out, "serve_load", "serve_load")
    assert "| kdeploy serve, 4 client(s), 1 sentence per request | grpc |" in body
    assert "| runtime in-process, 1 sentence per call |" in body
    rows = [r for r in body.splitlines() if r.startswith("| kdeploy serve")]
    assert len(rows) == 4 and all(r.split("|")[7:9] == [" 0 ", " 0 "] for r in rows), rows


def test_smoke_st_parity(tiny_run, stsb_small, tmp_path):
    out = tmp_path / "R.md"
    argv = ["--run", str(tiny_run), "--data", str(stsb_small), "--batch-size", "8"]
    bench_module("st_parity").main([*argv, "--write", "--results", str(out)])
    body = written(out, "st_parity", "st_parity")
    assert "| student_int8 | `onnx/model_qint8_quantized.onnx` |" in body
    assert "| student_fp32 | `onnx/model.onnx` |" in body


def test_smoke_ddp_scaling(tiny_bert, stsb_small, tmp_path):
    out = tmp_path / "R.md"
    sets = [x for o in TINY_OVERRIDES for x in ("--set", o)]
    argv = ["--model", str(tiny_bert), "--data", str(stsb_small), "--procs", "1", "2"]
    argv += ["--out", str(tmp_path / "runs"), "--timeout", "300", *sets]
    bench_module("ddp_scaling").main([*argv, "--write", "--results", str(out)])
    body = written(out, "ddp_scaling-custom", "ddp_scaling")
    rows = [line for line in body.splitlines() if line.startswith(("| 1 x 2 |", "| 2 x 1 |"))]
    assert len(rows) == 2
    # the same global batch: the same texts and optimizer steps on 1 process and on 2
    assert rows[0].split(" | ")[5:7] == rows[1].split(" | ")[5:7]


def test_smoke_strongly_typed(tiny_run, stsb_small, tmp_path):
    """The FP32 student cast with each rule set and run by the reference evaluator; the
    API-name table covers every supported TensorRT tag with nothing missing."""
    out = tmp_path / "R.md"
    argv = ["--model-dir", str(tiny_run / "export" / "student"), "--data", str(stsb_small)]
    argv += ["--split", "test", "--examples", "16", "--batch-size", "8"]
    bench_module("strongly_typed").main([*argv, "--write", "--results", str(out)])
    body = written(out, "strongly_typed", "strongly_typed")
    assert "| FP32 (ONNX Runtime) |" in body  # the exported student: no Q/DQ
    assert "| FP16 graph, shipped rules (layernorm, softmax, head) |" in body
    assert "| ... nothing kept FP32 |" in body
    share = re.search(r"\n\| (\d+\.\d)% \| (\d+\.\d)% \| (\d+\.\d)% \|", body)
    assert share and float(share[2]) == 100.0  # no Q/DQ in this graph: every GEMM FP16
    for tag in ("v10.12.0", "v10.16", "v11.0", "v11.1"):
        assert re.search(rf"\| {re.escape(tag)} \| \d+ \| none \|", body), tag
