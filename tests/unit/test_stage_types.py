"""The Stage type and the method registries: declarations that the engine and the handlers
rely on, checked as data (no pipeline run)."""

from __future__ import annotations

import json
import typing

import pytest

from kdeploy.config import available_profiles, load_profile
from kdeploy.config.methods import (
    QatQuant,
    QuantizeMethod,
    SparseGptSparsity,
    SparsifyMethod,
    StaticQuant,
)
from kdeploy.stages import ORDER, STAGES, Stage, StageEnv
from kdeploy.stages.base import RunOptions

RUN_INPUTS = {"teacher_model", "dataset", "unlabeled_text"}


def _members(union) -> set[type]:
    return set(typing.get_args(typing.get_args(union)[0]))


def test_every_quantize_method_has_one_handler():
    from kdeploy.stages.quantize import QUANTIZERS

    assert set(QUANTIZERS) == _members(QuantizeMethod)


def test_every_sparsify_method_has_one_handler():
    from kdeploy.train.sparsify import MASKERS

    assert set(MASKERS) == _members(SparsifyMethod)


@pytest.mark.parametrize(
    ("overrides", "kind", "absent"),
    [
        ([], "DynamicQuant", "calibration_texts"),
        (["quantize.method=static"], "StaticQuant", "fine_tune"),
        (
            ["quantize.method=ptq", "quantize.format=qdq", "quantize.activation_type=int8"],
            "PtqQuant",
            "fine_tune",
        ),
    ],
)
def test_a_method_config_holds_only_its_own_fields(overrides, kind, absent):
    cfg = load_profile("cpu-int8", overrides).profile.quantize.method_config()
    assert type(cfg).__name__ == kind
    assert not hasattr(cfg, absent)


def test_method_configs_carry_the_profile_values():
    p = load_profile("a100-int8").profile
    q, s = p.quantize.method_config(), p.sparsify.method_config()
    assert isinstance(q, QatQuant) and q.fine_tune.learning_rate == 5e-5
    assert q.calibration_texts == 512 and q.keep_float == p.quantize.keep_float
    assert isinstance(s, SparseGptSparsity) and s.damp == p.sparsify.damp
    static = load_profile("cpu-int8", ["quantize.method=static", "quantize.format=qdq"])
    assert isinstance(static.profile.quantize.method_config(), StaticQuant)


def test_stages_are_declared_once_in_order():
    assert tuple(s.name for s in STAGES) == ORDER
    assert len(set(ORDER)) == len(ORDER)
    for cls in STAGES:
        assert issubclass(cls, Stage) and cls.run is not Stage.run, cls
        assert len({c.role for c in cls.consumes}) == len(cls.consumes), cls.name


def test_every_consumed_artifact_is_produced_earlier():
    """What a stage consumes is a run input or produced by a stage before it (its declared
    outputs, plus the optional ones the stages add: teacher_int8, sparse_onnx, triton ...)."""
    extra = {"export": {"sparse_onnx"}, "quantize": {"teacher_int8"}}
    available = set(RUN_INPUTS)
    for cls in STAGES:
        for c in cls.consumes:
            assert c.optional or available & set(c.artifacts), (cls.name, c)
        available |= set(cls.produces) | extra.get(cls.name, set())


@pytest.mark.parametrize("name", sorted(available_profiles()))
def test_every_stage_config_of_every_profile_is_json(name, tmp_path):
    """The profile section a stage key hashes is plain JSON (digest_json must not fall back
    to str() of an object, which could differ between runs)."""
    env = StageEnv(profile=load_profile(name).profile, options=RunOptions(), run_dir=tmp_path)
    for cls in STAGES:
        stage = cls(env)
        cfg = stage.config()
        assert json.loads(json.dumps(cfg)) == cfg, cls.name
        assert isinstance(stage.enabled(), bool)
