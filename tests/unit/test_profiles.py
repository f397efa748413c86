"""Profiles: the shipped ones validate; every kind of mistake names its file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdeploy.config import available_profiles, dump_profile, json_schema, load_profile
from kdeploy.core.errors import ProfileError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["cpu-int8", "a100-int8", "h100-int8", "t4-int8", "orin-int8"]


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_validate(name):
    loaded = load_profile(name)
    assert loaded.name == name
    assert loaded.sources[0].name == f"{name}.yaml"


def test_all_shipped_profiles_are_listed():
    assert set(SHIPPED) <= set(available_profiles())


def test_extends_merges_parent_and_child():
    h100 = load_profile("h100-int8").profile
    a100 = load_profile("a100-int8").profile
    assert h100.target.device == "h100"
    assert h100.target.runtime == a100.target.runtime == "trt"
    assert h100.verify.budgets.max_latency.p50_ms == 1.5
    assert h100.verify.budgets.min_retention == a100.verify.budgets.min_retention
    assert h100.quantize == a100.quantize


def test_dumped_profile_reloads_to_same_digest(tmp_path):
    loaded = load_profile("h100-int8")
    path = write(tmp_path, dump_profile(loaded.profile))
    assert load_profile(path).digest() == loaded.digest()


def test_digest_changes_with_content_not_formatting(tmp_path):
    base = load_profile("cpu-int8")
    assert load_profile("cpu-int8", ["distill.epochs=5"]).digest() != base.digest()
    assert load_profile("cpu-int8", ["description=other words"]).digest() == base.digest()


def test_unknown_profile_suggests_close_name():
    with pytest.raises(ProfileError) as e:
        load_profile("cpu-int9")
    assert "unknown profile 'cpu-int9'" in e.value.what
    assert "did you mean 'cpu-int8'" in e.value.fix


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "name: x\ntarget:\n  device: cpu\n   runtime: ort\n")
    with pytest.raises(ProfileError) as e:
        load_profile(p)
    assert "malformed YAML" in e.value.what
    assert e.value.where.startswith(f"{p}:4")


def test_unknown_key_names_line_and_suggests(tmp_path):
    p = write(tmp_path, "name: x\nextends: cpu-int8\ndistil:\n  epochs: 2\n")
    with pytest.raises(ProfileError) as e:
        load_profile(p)
    assert f"{p}:3: distil: unknown key (did you mean 'distill'?)" in e.value.what


def test_nested_unknown_key(tmp_path):
    p = write(tmp_path, "name: x\nextends: cpu-int8\ndistill:\n  epoch: 2\n")
    with pytest.raises(ProfileError) as e:
        load_profile(p)
    assert f"{p}:4: distill.epoch: unknown key (did you mean 'epochs'?)" in e.value.what


def test_wrong_type_names_line(tmp_path):
    p = write(tmp_path, "name: x\nextends: cpu-int8\ndistill:\n  batch_size: many\n")
    with pytest.raises(ProfileError) as e:
        load_profile(p)
    assert f"{p}:4: distill.batch_size" in e.value.what
    assert "'many'" in e.value.what


def test_out_of_range_value(tmp_path):
    p = write(tmp_path, "name: x\nextends: cpu-int8\nexport:\n  opset: 9\n")
    with pytest.raises(ProfileError) as e:
        load_profile(p)
    assert f"{p}:4: export.opset: Input should be greater than or equal to 13" in e.value.what


def test_error_in_parent_names_parent_file(tmp_path):
    write(tmp_path, "name: base\nextends: cpu-int8\nbench:\n  iterations: 0\n", "base.yaml")
    child = write(tmp_path, "name: child\nextends: base.yaml\n", "child.yaml")
    with pytest.raises(ProfileError) as e:
        load_profile(child)
    assert f"{tmp_path / 'base.yaml'}:4: bench.iterations" in e.value.what


def test_extends_missing_profile(tmp_path):
    p = write(tmp_path, "name: x\nextends: nowhere-int8\n")
    with pytest.raises(ProfileError) as e:
        load_profile(p)
    assert "extends 'nowhere-int8', which cannot be found" in e.value.what
    assert e.value.where == f"{p}:2"


def test_extends_cycle(tmp_path):
    write(tmp_path, "name: a\nextends: b.yaml\n", "a.yaml")
    write(tmp_path, "name: b\nextends: a.yaml\n", "b.yaml")
    with pytest.raises(ProfileError) as e:
        load_profile(tmp_path / "a.yaml")
    assert "extends itself" in e.value.what


def test_extends_itself(tmp_path):
    p = write(tmp_path, "name: a\nextends: a.yaml\n", "a.yaml")
    with pytest.raises(ProfileError, match="extends itself"):
        load_profile(p)


def test_duplicate_key(tmp_path):
    p = write(tmp_path, "name: a\nname: b\n")
    with pytest.raises(ProfileError) as e:
        load_profile(p)
    assert "duplicate key 'name'" in e.value.what
    assert e.value.where == f"{p}:2"


def test_not_a_mapping(tmp_path):
    p = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ProfileError, match="must be a YAML mapping"):
        load_profile(p)


def test_override_errors_name_the_flag():
    with pytest.raises(ProfileError) as e:
        load_profile("cpu-int8", ["distill.epochs=abc"])
    assert e.value.where == "--set distill.epochs=abc"
    with pytest.raises(ProfileError, match="not of the form"):
        load_profile("cpu-int8", ["distill.epochs"])


def test_override_applies():
    p = load_profile("cpu-int8", ["distill.epochs=7", "bench.batch_sizes=[1, 8]"]).profile
    assert p.distill.epochs == 7
    assert p.bench.batch_sizes == [1, 8]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["target.runtime=trt"], "runtime 'trt' needs a GPU device"),
        (["student.strategy=explicit"], "needs a 'keep' list"),
        (["student.keep=[0,1,2]"], "only used with strategy 'explicit'"),
        (["export.shapes.batch={min: 4, opt: 2, max: 8}"], "min <= opt <= max"),
        (["verify.budgets.max_latency.batch=512"], "outside the exported batch range"),
        (["bench.sequence_lengths=[128, 1024]"], "outside export.shapes.sequence"),
        (["quantize.enabled=false"], "precision is int8 but quantize.enabled is false"),
        (["distill.losses={embedding_mse: 0, logit_kd: 0}"], "at least one"),
        (["verify.budgets.max_latency.sequence=16"], "not in the bench grid"),
    ],
)
def test_cross_field_rules(overrides, message):
    with pytest.raises(ProfileError, match=message):
        load_profile("cpu-int8", overrides)


def test_schema_file_is_current():
    """profiles/profile.schema.json is what `kdeploy profiles schema` prints."""
    committed = json.loads((ROOT / "profiles" / "profile.schema.json").read_text())
    assert committed == json_schema()


def test_student_widths():
    """Widths are optional (None = the teacher's); set, they must be positive. Whether they
    fit the teacher is checked by the pipeline (tests/unit/test_bad_inputs.py)."""
    default = load_profile("cpu-int8").profile.student
    assert (default.hidden_size, default.intermediate_size) == (None, None)
    assert default.intermediate_fraction == 0.75
    assert default.ffn_width(1536) == 1152 and default.ffn_width(3072) == 2304
    assert default.ffn_width(64) == 48 and default.ffn_width(1) == 1  # never 0 or wider
    narrow = load_profile(
        "cpu-int8",
        [
            "student.hidden_size=256",
            "student.intermediate_size=768",
            "student.intermediate_fraction=null",
        ],
    ).profile.student
    assert (narrow.hidden_size, narrow.intermediate_size) == (256, 768)
    assert narrow.ffn_width(1536) == 768
    assert load_profile("a100-int8").profile.student.ffn_width(1536) is None
    with pytest.raises(ProfileError, match="intermediate_size or intermediate_fraction, not both"):
        load_profile("cpu-int8", ["student.intermediate_size=768"])
    for key in ("hidden_size", "intermediate_size", "intermediate_fraction"):
        with pytest.raises(ProfileError, match=f"--set student.{key}=0"):
            load_profile("cpu-int8", [f"student.{key}=0"])
