"""The deliverable in the layouts users already load: a sentence-transformers folder for
embedding students and an optimum folder for classifiers. Torch-free: the package stage
only copies files (the ``last_hidden_state`` graphs are cut host-side by export and
quantize, ``kdeploy.onnxtools.hidden``).

``package/sentence-transformers/`` is laid out as sentence-transformers' own ONNX export
helpers leave a model folder (sentence_transformers/backend: ``load.py`` looks for
``onnx/model.onnx`` or ``model_kwargs={"file_name": ...}``, ``quantize.py`` /
``utils.py`` save dynamic-INT8 models as ``onnx/model_<suffix>.onnx`` with the suffix
``<weights dtype>_quantized`` for a custom quantization config): the HF config and
tokenizer files, ``modules.json`` with the pooling (and normalisation) modules' configs,
``sentence_bert_config.json``, and under ``onnx/`` the fp32 graph (``model.onnx``) and the
INT8 one (``model_qint8_quantized.onnx``), both with output ``last_hidden_state``. No torch
weights: the folder loads with ``backend="onnx"``.

``package/optimum/`` is what optimum's ``ORTModelForSequenceClassification.from_pretrained``
(and sentence-transformers' ``CrossEncoder(..., backend="onnx")``) load: the HF config
(with the labels), the tokenizer files, ``model.onnx`` (fp32) and ``model_quantized.onnx``
(INT8, the name optimum's ``ORTQuantizer`` gives it), both with output ``logits``: the
graphs verify measured, unchanged.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from kdeploy.core.errors import ModelError

ST_DIR = "sentence-transformers"
OPTIMUM_DIR = "optimum"
# what AutoConfig / AutoTokenizer read (whichever of them the model has)
HF_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


@dataclass(frozen=True)
class HfFolder:
    """A written folder: its layout and the model files in it (relative paths)."""

    layout: str  # ST_DIR | OPTIMUM_DIR
    path: Path
    fp32_file: str | None
    int8_file: str | None
    copied: dict[str, Path]  # file in the folder -> the file it is a copy of

    @property
    def default_file(self) -> str:
        """The file users should load: the INT8 one when the run quantized."""
        return self.int8_file or self.fp32_file or ""


def st_quantized_name(weight_type: str) -> str:
    """sentence-transformers' file name for a dynamic-INT8 model made with a custom
    quantization config: ``model_{weights dtype}_quantized.onnx`` (``QuantType.QInt8`` ->
    ``qint8``), ``export_dynamic_quantized_onnx_model``'s default suffix."""
    return f"model_q{weight_type}_quantized.onnx"


def _copy_hf_files(src: Path, dst: Path, names: tuple[str, ...]) -> dict[str, Path]:
    copied = {}
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied[name] = src / name
    if "config.json" not in copied:
        raise ModelError(
            f"{src} has no config.json to package",
            where=str(src),
            fix="rerun `kdeploy compress` (the student dir is written with its HF config)",
        )
    return copied


def _copy_model(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    return src


def write_sentence_transformers_folder(
    out: Path,
    *,
    model_dir: Path,
    fp32_hidden: Path,
    int8_hidden: Path | None,
    weight_type: str = "int8",
) -> HfFolder:
    """``out``: ``model_dir``'s HF config, tokenizer and sentence-transformers modules
    (weights left out) + the ``last_hidden_state`` graphs under ``onnx/``."""
    if not (model_dir / "modules.json").is_file():
        raise ModelError(
            f"{model_dir} has no modules.json: not a sentence-transformers model dir",
            where=str(model_dir),
            fix="a kdeploy bug (embedding students are saved with their modules): report it",
        )
    out.mkdir(parents=True, exist_ok=True)
    copied = _copy_hf_files(model_dir, out, (*HF_FILES, *ST_FILES))
    for module in json.loads((model_dir / "modules.json").read_text(encoding="utf-8")):
        sub = module.get("path") or ""
        if sub and (model_dir / sub).is_dir():
            shutil.copytree(model_dir / sub, out / sub, dirs_exist_ok=True)
            for f in (model_dir / sub).rglob("*"):
                if f.is_file():
                    copied[f.relative_to(model_dir).as_posix()] = f
    fp32 = "onnx/model.onnx"
    copied[fp32] = _copy_model(fp32_hidden / "model.onnx", out / fp32)
    int8 = None
    if int8_hidden is not None:
        int8 = f"onnx/{st_quantized_name(weight_type)}"
        copied[int8] = _copy_model(int8_hidden / "model.onnx", out / int8)
    return HfFolder(ST_DIR, out, fp32, int8, copied)


def write_optimum_folder(
    out: Path, *, model_dir: Path, fp32_model: Path, int8_model: Path | None
) -> HfFolder:
    """``out``: ``model_dir``'s HF config and tokenizer + the classifier graphs (output
    ``logits``) as ``model.onnx`` / ``model_quantized.onnx``."""
    out.mkdir(parents=True, exist_ok=True)
    copied = _copy_hf_files(model_dir, out, HF_FILES)
    copied["model.onnx"] = _copy_model(fp32_model, out / "model.onnx")
    int8 = None
    if int8_model is not None:
        int8 = "model_quantized.onnx"
        copied[int8] = _copy_model(int8_model, out / int8)
    return HfFolder(OPTIMUM_DIR, out, "model.onnx", int8, copied)
