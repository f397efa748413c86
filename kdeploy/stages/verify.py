"""verify: the task metric of every model on the eval split, retention vs the teacher, the
transfer checks of embedding models (neighbour agreement, the --probe linear probe, which
texts were trained on) and the profile's budgets (``kdeploy.evaluation.verify``).
Torch-free."""

from __future__ import annotations

from pathlib import Path

from kdeploy.core.fsutil import atomic_write_json, read_json
from kdeploy.evaluation.variants import models_of
from kdeploy.evaluation.verify import verify_models
from kdeploy.stages.base import (
    MODEL_INPUTS,
    Stage,
    StageInputs,
    StageResult,
    maybe,
    need,
)


class Verify(Stage):
    name = "verify"
    consumes = (
        *MODEL_INPUTS,
        need("dataset"),
        need("bench"),
        maybe("probe_data"),
        maybe("kd_texts"),
    )
    produces = ("verify",)
    tools = ("onnxruntime", "tokenizers", "numpy")

    def config(self) -> dict:
        t = self.profile.target
        return {
            "verify": self.profile.verify.model_dump(mode="json"),
            "threads": t.threads,
            "providers": t.providers(),
            "engines": t.engine_list(),  # which models may be deployed
        }

    def run(self, inputs: StageInputs, out_dir: Path) -> StageResult:
        result = verify_models(
            models_of(inputs.by_artifact()),
            inputs["dataset"],
            self.profile,
            read_json(inputs["bench"]),
            log=self.log,
            probe_dir=inputs.get("probe_data"),
            kd_texts=inputs.get("kd_texts"),
        )
        for b in result["budgets"]:
            self.log(
                f"budget {b['name']}: {'pass' if b['passed'] else 'MISSED'} "
                f"(value {b['value']}, limit {b['limit']})"
            )
        path = out_dir / "verify.json"
        atomic_write_json(path, result)
        return StageResult(outputs={"verify": path}, metrics=result)
