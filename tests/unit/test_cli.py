"""The CLI: thin, clear errors with their own exit codes, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from kdeploy.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_profiles_list_and_show():
    res = invoke("profiles", "list")
    assert res.exit_code == 0
    for name in ("cpu-int8", "a100-int8", "h100-int8", "t4-int8", "orin-int8"):
        assert name in res.output
    res = invoke("profiles", "show", "h100-int8")
    assert res.exit_code == 0
    assert "device: h100" in res.output and "runtime: trt" in res.output


def test_profiles_check_reports_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nextends: cpu-int8\nbench:\n  iterations: -1\n")
    res = invoke("profiles", "check", "cpu-int8", str(bad))
    assert res.exit_code == 3
    assert f"{bad}:4: bench.iterations" in res.output


def test_profiles_schema_is_json():
    res = invoke("profiles", "schema")
    schema = json.loads(res.output)
    assert schema["title"] == "kdeploy profile"
    assert "distill" in schema["properties"]


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["compress", "--profile", "nope", "--data", "."], 3, "unknown profile 'nope'"),
        (["compress", "--model", "/nonexistent", "--data", "."], 4, "does not exist"),
        (["compress", "--force", "--from", "bench", "--data", "."], 2, "--force and --from"),
        (["verify", "."], 6, "not a kdeploy run directory"),
    ],
)
def test_errors_have_codes_and_no_traceback(args, code, text):
    res = invoke(*args)
    assert res.exit_code == code, res.output
    assert text in res.output
    assert "Traceback" not in res.output


def test_missing_data_dir(tiny_bert, tmp_path):
    res = invoke(
        "compress",
        "--model",
        str(tiny_bert),
        "--data",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "run"),
    )
    assert res.exit_code == 5 and "data directory" in res.output
    assert not (tmp_path / "run").exists()


def test_real_subprocess_prints_no_traceback(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdeploy.cli",
            "compress",
            "--profile",
            "cpu-int9",
            "--data",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 3
    assert "did you mean 'cpu-int8'" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_compress_cli_reuses_finished_run(tiny_run_copy, tiny_bert, stsb_small):
    from tests.conftest import TINY_OVERRIDES

    sets = [x for o in TINY_OVERRIDES for x in ("--set", o)]
    res = invoke(
        "compress",
        "--model",
        str(tiny_bert),
        "--data",
        str(stsb_small),
        "--out",
        str(tiny_run_copy),
        "--no-progress",
        *sets,
    )
    assert res.exit_code == 0, res.output
    assert "ran 0 stage(s), reused 6" in res.output
    assert "**student_int8** (deployed)" in res.output


def test_compress_cli_missed_budget_says_what_ran(tiny_run_copy, tiny_bert, stsb_small):
    """A missed budget exits 8 with the table, the budget that failed and what ran: here
    only verify and package rerun (the budget is part of verify's key)."""
    from tests.conftest import TINY_OVERRIDES

    overrides = [*TINY_OVERRIDES, "verify.budgets.min_retention=1.5"]
    sets = [x for o in overrides for x in ("--set", o)]
    args = ["compress", "--model", str(tiny_bert), "--data", str(stsb_small),
            "--out", str(tiny_run_copy), "--no-progress", *sets]  # fmt: skip
    res = invoke(*args)
    assert res.exit_code == 8, res.output
    assert "budget missed" in res.output and "min_retention" in res.output
    assert "ran 2 stage(s), reused 4" in res.output
    again = invoke(*args)
    assert again.exit_code == 8
    assert "ran 0 stage(s), reused 6" in again.output
    assert "Traceback" not in res.output + again.output


def test_bench_single_model_dir(tiny_run, stsb_small):
    res = invoke(
        "bench",
        str(tiny_run / "package" / "deploy" / "model.onnx"),
        "--data",
        str(stsb_small),
        "--profile",
        "cpu-int8",
    )
    assert res.exit_code == 0, res.output
    assert "| model | 1 x 32 |" in res.output


def test_verify_single_model_against_reference(tiny_run, stsb_small, tmp_path):
    out = tmp_path / "v.json"
    res = invoke(
        "verify",
        str(tiny_run / "package" / "deploy"),
        "--reference",
        str(tiny_run / "export" / "teacher"),
        "--data",
        str(stsb_small),
        "--json",
        str(out),
        "--profile",
        "cpu-int8",
        "--set",
        "verify.budgets.min_speedup=null",
    )
    assert res.exit_code in (0, 8), res.output
    result = json.loads(out.read_text())
    assert set(result["models"]) == {"teacher_fp32", "student_fp32"}
    assert result["models"]["teacher_fp32"]["retention"] == 1.0
