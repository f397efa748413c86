"""Triton model repository: ``config.pbtxt`` from the model's real graph I/O and the profile.

The config is built as tritonclient's ``ModelConfig`` protobuf message (Triton's own schema),
written with protobuf ``text_format``, then parsed back from disk and checked against the
graph of the model file in ``<name>/1/`` before the stage keeps it.

Tokenization is client-side: the Triton model takes the token tensors the graph takes
(``input_ids``, ``attention_mask``, ...), and clients make them with ``kdeploy.runtime``
(``Encoder.tokenize``), the same code that computed the run's metrics. See README.

Graph I/O and Triton's type names are in ``triton_io``; reading a config back and checking
it against the graph and a request, in ``triton_check``.

Torch-free; tritonclient (extra ``triton``) is imported only when a config is built or read.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdeploy.core.deps import version_of
from kdeploy.core.errors import ModelError
from kdeploy.packaging.triton_check import check_config, load_config, model_file_of
from kdeploy.packaging.triton_io import (
    BACKENDS,
    COMPANIONS,
    LABELS_FILE,
    PLATFORMS,
    VERSION,
    TensorInfo,
    graph_io,
    model_config_pb2,
)
from kdeploy.runtime.card import ModelCard


@dataclass
class TritonSettings:
    """Everything in config.pbtxt that does not come from the graph."""

    name: str
    platform: str
    model_filename: str
    max_batch_size: int
    preferred_batch_sizes: list[int]
    max_queue_delay_us: int
    kind: str  # KIND_CPU | KIND_GPU
    instances: int
    threads: int | None
    label_output: str | None = None
    performance_hint: str = "LATENCY"  # OpenVINO models


def model_name(teacher_path: str | Path, precision: str) -> str:
    """A repository-safe model name: <teacher dir>_<precision>."""
    p = Path(teacher_path)
    base = p.name
    if base in ("model", "models", "") and p.parent.name:
        base = p.parent.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{base}_{precision}").strip("_.-") or "model"


def settings_for(profile, model_file: Path, name: str, card: ModelCard) -> TritonSettings:
    """Triton settings from the profile: batch limits, preferred sizes, instances."""
    platform, filename = PLATFORMS.get(model_file.suffix.lower(), (None, None))
    if platform is None:
        raise ModelError(f"Triton has no platform for {model_file.name}", where=str(model_file))
    pkg = profile.package
    max_batch = profile.export.shapes.batch.max
    preferred = pkg.preferred_batch_sizes
    if preferred is None:
        preferred = [b for b in profile.bench.batch_sizes if 1 < b <= max_batch]
    return TritonSettings(
        name=name,
        platform=platform,
        model_filename=filename,
        max_batch_size=max_batch,
        preferred_batch_sizes=sorted(set(preferred)),
        max_queue_delay_us=pkg.max_queue_delay_us,
        kind="KIND_CPU" if profile.target.device == "cpu" else "KIND_GPU",
        instances=pkg.instances,
        threads=profile.target.threads if profile.target.device == "cpu" else None,
        label_output=card.output if card.task == "classification" and card.labels else None,
        performance_hint=profile.target.openvino.performance_hint,
    )


def build_config(
    settings: TritonSettings, inputs: list[TensorInfo], outputs: list[TensorInfo]
) -> Any:
    """The ModelConfig message. Batching needs a dynamic first dim on every tensor; a graph
    without one gets max_batch_size 0 and its full shapes."""
    pb = model_config_pb2()
    batched = settings.max_batch_size > 0 and all(
        t.shape and t.shape[0] is None for t in inputs + outputs
    )
    loader = (
        {"backend": settings.platform}
        if settings.platform in BACKENDS
        else {"platform": settings.platform}
    )
    cfg = pb.ModelConfig(
        name=settings.name,
        max_batch_size=settings.max_batch_size if batched else 0,
        default_model_filename=settings.model_filename,
        **loader,
    )

    def dims(t: TensorInfo) -> list[int]:
        shape = t.shape[1:] if batched else t.shape
        return [-1 if d is None else d for d in shape]

    for t in inputs:
        x = cfg.input.add()
        x.name, x.data_type = t.name, pb.DataType.Value(t.dtype)
        x.dims.extend(dims(t))
    for t in outputs:
        y = cfg.output.add()
        y.name, y.data_type = t.name, pb.DataType.Value(t.dtype)
        y.dims.extend(dims(t))
        if t.name == settings.label_output:
            y.label_filename = LABELS_FILE
    if batched:
        db = cfg.dynamic_batching
        db.preferred_batch_size.extend(
            b for b in settings.preferred_batch_sizes if b <= settings.max_batch_size
        )
        db.max_queue_delay_microseconds = settings.max_queue_delay_us
    group = cfg.instance_group.add()
    group.kind = pb.ModelInstanceGroup.Kind.Value(settings.kind)
    group.count = settings.instances
    if settings.platform == "onnxruntime_onnx" and settings.threads:
        # onnxruntime backend parameters (Triton onnxruntime_backend README)
        cfg.parameters["intra_op_thread_count"].string_value = str(settings.threads)
        cfg.parameters["inter_op_thread_count"].string_value = "1"
    if settings.platform == "openvino":
        # openvino backend parameters (Triton openvino_backend README): the profile's hint
        cfg.parameters["PERFORMANCE_HINT"].string_value = settings.performance_hint
        if settings.threads:
            cfg.parameters["INFERENCE_NUM_THREADS"].string_value = str(settings.threads)
    return cfg


def render_config(cfg: Any) -> str:
    from google.protobuf import text_format

    header = (
        f"# Triton model configuration written by kdeploy; schema: tritonclient "
        f"{version_of('tritonclient')} ModelConfig.\n"
        "# Inputs are token tensors: tokenize on the client with kdeploy.runtime "
        "(Encoder.tokenize).\n"
    )
    return header + text_format.MessageToString(cfg, use_short_repeated_primitives=True)


def write_model_repository(repo: Path, model_dir: Path, profile, *, name: str) -> dict[str, Any]:
    """``repo/<name>/{config.pbtxt, 1/model.onnx|model.plan|model.xml+.bin[, labels.txt]}``,
    validated."""
    card = ModelCard.load(model_dir)
    model_file = model_dir / card.model_file
    settings = settings_for(profile, model_file, name, card)
    target = repo / name
    version_dir = target / VERSION
    version_dir.mkdir(parents=True)
    shutil.copy2(model_file, version_dir / settings.model_filename)
    # ONNX external data lives beside the graph under the name the graph records
    for extra in sorted(model_dir.glob(f"{model_file.name}*")):
        if extra != model_file and extra.is_file():
            shutil.copy2(extra, version_dir / extra.name)
    # an OpenVINO model.xml's weights: model.bin, named after the file Triton loads
    for suffix in COMPANIONS.get(model_file.suffix.lower(), ()):
        target_file = (version_dir / settings.model_filename).with_suffix(suffix)
        shutil.copy2(model_file.with_suffix(suffix), target_file)
    if settings.label_output:
        (target / LABELS_FILE).write_text("\n".join(card.labels or []) + "\n", encoding="utf-8")
    inputs, outputs = graph_io(model_file)
    cfg = build_config(settings, inputs, outputs)
    path = target / "config.pbtxt"
    path.write_text(render_config(cfg), encoding="utf-8")
    parsed = load_config(path)  # what Triton will read, not what we meant to write
    problems = check_config(parsed, target)
    if problems:
        raise ModelError(
            f"generated Triton config {path} does not match its model: {'; '.join(problems)}",
            where=str(path),
        )
    return {
        "name": name,
        "platform": parsed.platform or parsed.backend,
        "config": str(path),
        "model_file": str(model_file_of(parsed, target)),
        "max_batch_size": parsed.max_batch_size,
        "preferred_batch_sizes": list(parsed.dynamic_batching.preferred_batch_size),
        "max_queue_delay_us": parsed.dynamic_batching.max_queue_delay_microseconds,
        "instance_kind": settings.kind,
        "instances": settings.instances,
        "inputs": [asdict(t) for t in inputs],
        "outputs": [asdict(t) for t in outputs],
        "validated_with": f"tritonclient {version_of('tritonclient')} ModelConfig",
        "tokenization": "client-side (kdeploy.runtime Encoder/Classifier .tokenize)",
    }
