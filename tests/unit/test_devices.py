"""Profiles know their device: the capability table and what `profiles check` rejects."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kdeploy.cli import cli
from kdeploy.config import load_profile
from kdeploy.core.devices import DEVICES, caps, target_problems
from kdeploy.core.errors import ProfileError


def test_capability_table():
    assert caps("a100").sm == (8, 0) and caps("h100").sm == (9, 0)
    assert caps("t4").sm == (7, 5) and caps("orin").sm == (8, 7)
    assert [d for d, c in DEVICES.items() if "fp8" in c.precisions] == ["h100"]
    assert {d for d, c in DEVICES.items() if c.sparse_tensor_cores} == {"a100", "h100", "orin"}
    assert {d: c.dla_cores for d, c in DEVICES.items() if c.dla_cores} == {"orin": 2}


def test_fitting_target_has_no_problems():
    assert target_problems("orin", "int8", 1, sparsify=True, runtime="trt") == []
    assert target_problems("h100", "fp8", None, sparsify=True, runtime="trt") == []


@pytest.mark.parametrize(
    "profile, overrides, message",
    [
        ("a100-int8", ["target.precision=fp8"], r"a100 \(SM 8.0\) cannot run precision fp8"),
        ("t4-int8", ["target.precision=fp8"], "devices with it: h100"),
        ("h100-int8", ["target.dla_core=0"], "h100 has no DLA"),
        ("t4-int8", ["sparsify.enabled=true"], r"t4 \(SM 7.5\) has no sparse tensor cores"),
        (
            "orin-int8",
            ["target.dla_core=0", "target.precision=fp32", "quantize.enabled=false"],
            "DLA runs fp16/int8 only",
        ),
        ("cpu-int8", ["target.ort_providers=[cuda]"], "need a GPU device"),
        ("h100-int8", ["target.precision=fp8"], "quantize stage writes INT8 only"),
        ("a100-int8", ["quantize.format=qoperator"], "qat writes symmetric int8 Q/DQ"),
        (
            "a100-int8",
            ["quantize.method=static", "quantize.format=qoperator"],
            "explicit, symmetric int8 Q/DQ",
        ),
        ("a100-int8", ["quantize.method=dynamic"], "method: qat, ptq or static"),
        (
            "a100-int8",
            ["quantize.method=static", "quantize.op_types=null"],
            r"quantize.op_types: \[MatMul\]",
        ),
        ("a100-int8", ["quantize.activation_type=uint8"], "activation_type: int8"),
        ("orin-int8", ["verify.batch_size=64"], "exceeds export.shapes.batch.max=32"),
        # strongly typed engines run the graph's types: an FP16 engine needs an FP16 graph
        (
            "t4-int8",
            ["target.precision=fp16", "quantize.enabled=false"],
            "needs an FP16 graph .* quantize.method: fp16",
        ),
        ("cpu-int8", ["quantize.method=fp16"], "quantize.method fp16 writes no INT8"),
        ("a100-int8", ["quantize.method=fp16"], "method: qat, ptq or static"),
        (
            "cpu-int8",
            ["target.precision=fp16", "quantize.method=fp16"],
            "quantize.enabled is true but target.precision is fp16",
        ),
        ("a100-int8", ["quantize.keep_fp32=[gelu]"], "keep_fp32"),
        ("a100-int8", ["quantize.cast_budget.min_cosine=0"], "min_cosine"),
    ],
)
def test_profile_rejects_what_the_device_lacks(profile, overrides, message):
    with pytest.raises(ProfileError, match=message):
        load_profile(profile, overrides)


def test_shipped_gpu_profiles_fit_their_devices():
    for name in ("a100-int8", "h100-int8", "t4-int8", "orin-int8"):
        p = load_profile(name).profile
        assert p.target.runtime == "trt" and p.target.providers() == ["cuda"]
    assert load_profile("orin-int8", ["target.dla_core=1"]).profile.target.dla_core == 1
    assert load_profile("h100-int8", ["sparsify.enabled=true"]).profile.sparsify.enabled


def test_profiles_check_cli_names_the_file(tmp_path):
    bad = tmp_path / "a100-fp8.yaml"
    bad.write_text("name: a100-fp8\nextends: a100-int8\ntarget:\n  precision: fp8\n")
    res = CliRunner().invoke(cli, ["profiles", "check", str(bad)])
    assert res.exit_code == 3
    assert f"{bad}:3" in res.output  # the line of the target: section
    assert "cannot run precision fp8" in res.output
