"""Triton model repository: config.pbtxt parsed by tritonclient's ModelConfig and checked
against the ONNX graph; client-side tokenization fits the config; serve-check."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

from kdeploy.api import serve_check  # noqa: E402
from kdeploy.config import load_profile  # noqa: E402
from kdeploy.core.errors import ModelError  # noqa: E402
from kdeploy.packaging.triton import build_config, render_config, settings_for  # noqa: E402
from kdeploy.packaging.triton_check import check_config, check_request, load_config  # noqa: E402
from kdeploy.packaging.triton_io import graph_io  # noqa: E402
from kdeploy.runtime import Classifier, Encoder  # noqa: E402
from kdeploy.runtime.card import ModelCard  # noqa: E402
from tests.conftest import TINY_OVERRIDES  # noqa: E402


def _repo_model(run):
    repo = run / "package" / "triton"
    dirs = [p.parent for p in repo.glob("*/config.pbtxt")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _parse(path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def clf_run(tmp_path_factory, tiny_classifier, sst2_small):
    from kdeploy.api import RunRequest, run_pipeline
    from kdeploy.stages import RunOptions

    out = tmp_path_factory.mktemp("clf") / "run"
    run_pipeline(
        RunRequest(
            profile=load_profile("cpu-int8", TINY_OVERRIDES),
            model_dir=tiny_classifier,
            data_dir=sst2_small,
            out_dir=out,
            options=RunOptions(progress=False),
        ),
        log=lambda m: None,
    )
    return out


def test_config_matches_graph_and_profile(tiny_run):
    import onnxruntime as ort

    mdir = _repo_model(tiny_run)
    cfg = _parse(mdir / "config.pbtxt")  # the real schema, independent of kdeploy's reader
    assert cfg.name == mdir.name
    assert cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 64  # export.shapes.batch.max of cpu-int8
    model = mdir / "1" / "model.onnx"
    deploy = tiny_run / "package" / "deploy" / "model.onnx"
    assert model.read_bytes() == deploy.read_bytes()
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert [i.name for i in cfg.input] == [i.name for i in sess.get_inputs()]
    assert {o.name for o in cfg.output} == {o.name for o in sess.get_outputs()}
    for t in cfg.input:
        assert mc.DataType.Name(t.data_type) == "TYPE_INT64"
        assert list(t.dims) == [-1]  # batch is implicit, sequence dynamic
    emb = next(o for o in cfg.output if o.name == "sentence_embedding")
    assert mc.DataType.Name(emb.data_type) == "TYPE_FP32" and list(emb.dims) == [32]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8]  # bench.batch_sizes [1, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group] == ["KIND_CPU"]
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"
    assert check_config(cfg, mdir) == []


def test_check_config_catches_mismatches(tiny_run, tmp_path):
    src = _repo_model(tiny_run)
    mdir = tmp_path / src.name
    shutil.copytree(src, mdir)
    good = load_config(mdir / "config.pbtxt")

    def problems(edit) -> list[str]:
        cfg = mc.ModelConfig()
        cfg.CopyFrom(good)
        edit(cfg)
        return check_config(cfg, mdir)

    assert problems(lambda c: None) == []
    assert any("TYPE_INT32" in p for p in problems(lambda c: setattr(c.input[0], "data_type", 8)))
    assert any("not in the config" in p for p in problems(lambda c: c.input.pop()))
    assert any("dims" in p for p in problems(lambda c: c.output[-1].dims.append(7)))
    assert any(
        "not in the graph" in p for p in problems(lambda c: setattr(c.output[0], "name", "x"))
    )
    assert any(
        "preferred" in p
        for p in problems(lambda c: c.dynamic_batching.preferred_batch_size.append(65))
    )
    assert any("name" in p for p in problems(lambda c: setattr(c, "name", "other")))
    (mdir / "1" / "model.onnx").unlink()
    assert any("missing" in p for p in check_config(good, mdir))


def test_malformed_config_names_file_and_line(tmp_path):
    bad = tmp_path / "config.pbtxt"
    bad.write_text('name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: many\n')
    with pytest.raises(ModelError) as err:
        load_config(bad)
    assert err.value.where == f"{bad}:3"
    bad.write_text('name: "m"\nno_such_field: 1\n')
    with pytest.raises(ModelError, match="no_such_field"):
        load_config(bad)


def test_client_side_tokenization_fits_the_config(tiny_run):
    mdir = _repo_model(tiny_run)
    cfg = load_config(mdir / "config.pbtxt")
    with Encoder(tiny_run / "package" / "deploy") as enc:
        feeds = enc.tokenize(["a short one", "a somewhat longer sentence for the batch"])
        assert check_request(cfg, feeds) == []
        bucketed = enc.tokenize(["a short one"], pad_to_multiple_of=16)
        assert bucketed["input_ids"].shape == (1, 16) and check_request(cfg, bucketed) == []
        wrong = {k: v.astype(np.int32) for k, v in feeds.items()}
        assert any("int32" in p for p in check_request(cfg, wrong))
        too_big = enc.tokenize(["x"] * 65)
        assert any("outside 1..64" in p for p in check_request(cfg, too_big))
        assert any(
            "does not take" in p for p in check_request(cfg, {**feeds, "extra": feeds["input_ids"]})
        )


def test_gpu_profile_gives_tensorrt_plan_on_gpu_instances(tiny_run):
    """A GPU profile's engine is served by tensorrt_plan on KIND_GPU (config only: building
    an engine needs TensorRT and a GPU; the graph I/O here is the ONNX it is built from)."""
    deploy = tiny_run / "package" / "deploy"
    card = ModelCard.load(deploy)
    profile = load_profile("h100-int8").profile
    settings = settings_for(profile, deploy / "model.plan", "m_plan", card)
    inputs, outputs = graph_io(deploy / "model.onnx")
    cfg = text_format.Parse(
        render_config(build_config(settings, inputs, outputs)), mc.ModelConfig()
    )
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert cfg.max_batch_size == profile.export.shapes.batch.max
    assert list(cfg.dynamic_batching.preferred_batch_size) == [32, 128]
    assert mc.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_GPU"
    assert "intra_op_thread_count" not in cfg.parameters


def test_classifier_repository_has_labels(clf_run):
    mdir = _repo_model(clf_run)
    cfg = load_config(mdir / "config.pbtxt")
    logits = next(o for o in cfg.output if o.name == "logits")
    assert logits.label_filename == "labels.txt" and list(logits.dims) == [2]
    card = ModelCard.load(clf_run / "package" / "deploy")
    assert (mdir / "labels.txt").read_text().split() == card.labels
    assert check_config(cfg, mdir) == []
    with Classifier(clf_run) as clf:
        labels, probs = clf.predict(["a fine film", "dull and long"])
    assert labels.shape == (2,) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_serve_check_passes_on_fresh_runs(tiny_run, clf_run):
    for run in (tiny_run, clf_run):
        result = serve_check(run, log=lambda m: None)
        assert result["passed"], result
        names = [c["check"] for c in result["checks"]]
        assert names[1] == "runtime replay" and names[2].startswith("triton requests")
        assert all(c.get("identical") for c in result["checks"][1:]), result["checks"]
    ref = json.loads((clf_run / "package" / "reference" / "reference.json").read_text())
    assert ref["task"] == "classification" and len(ref["labels"]) == len(ref["texts"])


def test_serve_check_fails_when_outputs_drift(tiny_run_copy):
    """Reference outputs that the model no longer produces are caught (the stored digest is
    updated too, so this is drift, not a damaged file)."""
    from kdeploy.core.fsutil import digest_files
    from kdeploy.engine.manifest import load_manifest, make_artifact

    ref_dir = tiny_run_copy / "package" / "reference"
    out = np.load(ref_dir / "outputs.npy")
    rng = np.random.default_rng(0)
    np.save(ref_dir / "outputs.npy", out + rng.normal(0, 0.2, out.shape).astype(out.dtype))
    m = load_manifest(tiny_run_copy)
    outputs = m.stages["package"].outputs
    outputs["reference"] = make_artifact(tiny_run_copy, ref_dir, digest_files(ref_dir))
    m.save(tiny_run_copy)
    result = serve_check(tiny_run_copy, log=lambda m: None)
    assert not result["passed"]
    failed = [c["check"] for c in result["checks"] if not c["passed"]]
    assert failed == ["runtime replay"]


def test_serve_check_refuses_a_damaged_package(tiny_run_copy):
    from kdeploy.core.errors import RunDirError

    cfg = next((tiny_run_copy / "package" / "triton").glob("*/config.pbtxt"))
    cfg.write_text(cfg.read_text().replace("max_batch_size: 64", "max_batch_size: 65"))
    with pytest.raises(RunDirError, match="damaged"):
        serve_check(tiny_run_copy, log=lambda m: None)
