"""bench: latency over a batch x sequence grid and throughput on real sentences, for every
model of the run in one process (``kdeploy.evaluation.bench``). Torch-free."""

from __future__ import annotations

from pathlib import Path

from kdeploy.config.settings import runner_settings
from kdeploy.core.fsutil import atomic_write_json
from kdeploy.evaluation.bench import bench_models, throughput_texts
from kdeploy.evaluation.variants import models_of
from kdeploy.stages.base import MODEL_INPUTS, Stage, StageInputs, StageResult, need


class Bench(Stage):
    name = "bench"
    consumes = (*MODEL_INPUTS, need("dataset"))
    produces = ("bench",)
    tools = ("onnxruntime", "tokenizers", "numpy")

    def config(self) -> dict:
        t = self.profile.target
        return {
            "bench": self.profile.bench.model_dump(mode="json"),
            "threads": t.threads,
            "device": t.device,
            "providers": t.providers(),
        }

    def run(self, inputs: StageInputs, out_dir: Path) -> StageResult:
        p = self.profile
        result = bench_models(
            models_of(inputs.by_artifact()),
            p.bench,
            threads=p.target.threads,
            texts=throughput_texts(inputs["dataset"], p.bench),
            log=self.log,
            settings=runner_settings(p),
        )
        path = out_dir / "bench.json"
        atomic_write_json(path, result)
        return StageResult(outputs={"bench": path}, metrics=result)
