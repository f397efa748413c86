"""package: what a serving stack embeds, and the report.

- ``deploy/``: the deployable model dir (``kdeploy.runtime`` loads it, torch-free)
- ``triton/<name>/``: a Triton model repository (config.pbtxt validated with tritonclient)
- ``reference/``: real dev sentences and the deployed model's outputs (for serve-check)
- ``report.json`` / ``report.md`` / ``plots/*.png``: the chain, every number, the pictures
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kdeploy.core.errors import DependencyError
from kdeploy.core.fsutil import atomic_write_json, atomic_write_text, read_json
from kdeploy.data import load_task_data
from kdeploy.evaluation.variants import deploy_name, models_of
from kdeploy.packaging.reference import write_reference
from kdeploy.report.build import build_report
from kdeploy.report.markdown import render_markdown
from kdeploy.report.stats import model_stats
from kdeploy.runtime.card import ModelCard
from kdeploy.stages.base import MODEL_INPUTS, Stage, StageInputs, StageResult, maybe, need


class Package(Stage):
    name = "package"
    consumes = (*MODEL_INPUTS, maybe("bench"), maybe("verify"), need("dataset"))
    produces = ("report", "deploy", "reference")  # + triton, plots, report_md
    tools = ("onnxruntime", "tokenizers", "tritonclient", "matplotlib")

    def config(self) -> dict:
        return {"profile": self.profile.digest()}

    def run(self, inputs: StageInputs, out_dir: Path) -> StageResult:
        models = models_of(inputs.by_artifact())
        deploy = out_dir / "deploy"
        shutil.copytree(models[deploy_name(models)], deploy)
        outputs = {"deploy": deploy, "reference": out_dir / "reference"}
        ref = self._reference(inputs["dataset"], deploy, outputs["reference"])
        triton = self._triton(deploy, out_dir / "triton") if self.profile.package.triton else None
        if triton is not None:
            outputs["triton"] = out_dir / "triton"
        report = self._report(inputs, models, ref, triton)
        report["plots"] = self._plots(report, out_dir / "plots")
        if report["plots"].get("files"):
            outputs["plots"] = out_dir / "plots"
        atomic_write_json(out_dir / "report.json", report)
        atomic_write_text(out_dir / "report.md", render_markdown(report))
        self.log(f"report: {self.final_dir / 'report.md'}")
        return StageResult(
            outputs={
                **outputs,
                "report": out_dir / "report.json",
                "report_md": out_dir / "report.md",
            },
            metrics={"deploy_from": deploy_name(models), "triton": bool(triton)},
        )

    def _reference(self, data_dir: Path, deploy: Path, out: Path) -> dict:
        p = self.profile
        split = load_task_data(data_dir, need_train=False).bench_split()
        ref = write_reference(
            out,
            deploy,
            split,
            n=p.package.reference_texts,
            threads=p.target.threads,
            batch_size=p.verify.eval_batch_size,
        )
        self.log(f"reference outputs: {len(ref['texts'])} {split.name} sentences")
        return ref

    def _triton(self, deploy: Path, repo: Path) -> dict:
        from kdeploy.packaging.triton import model_name, write_model_repository

        pkg = self.profile.package
        teacher = self.env.manifest["model"]["path"]
        name = pkg.triton_model_name or model_name(teacher, ModelCard.load(deploy).precision)
        triton = write_model_repository(repo, deploy, self.profile, name=name)
        final = self.final_dir / "triton" / name
        triton["config"] = str(final / "config.pbtxt")
        triton["model_file"] = str(final / "1" / Path(triton["model_file"]).name)
        self.log(f"Triton model repository: {final.parent} ({triton['platform']}, validated)")
        return triton

    def _report(self, inputs: StageInputs, models: dict, ref: dict, triton: dict | None) -> dict:
        manifest = dict(self.env.manifest)
        manifest["stages"] = {k: v for k, v in manifest["stages"].items() if k != self.name}
        return build_report(
            manifest,
            read_json(inputs["bench"]) if "bench" in inputs else None,
            read_json(inputs["verify"]) if "verify" in inputs else None,
            deploy_dir=str(self.final_dir / "deploy"),
            budgets=self.profile.verify.budgets,
            model_stats={name: model_stats(path) for name, path in models.items()},
            triton=triton,
            reference={
                "count": len(ref["texts"]),
                "split": ref["split"],
                "dir": str(self.final_dir / "reference"),
                "tolerance": ref["tolerance"],
                "batch_size": ref["batch_size"],
                "bucketing": ref["bucketing"],
            },
        )

    def _plots(self, report: dict, out: Path) -> dict:
        """{"files": {plot: relative path}} or {"skipped": why}: never fails the run."""
        if not self.profile.package.plots:
            return {"skipped": "package.plots is false in the profile"}
        from kdeploy.report.plots import make_plots

        try:
            files = make_plots(report, out)
        except DependencyError as exc:
            self.log(f"plots skipped: {exc.what}")
            return {"skipped": f"{exc.what} (fix: {exc.fix})"}
        return {"files": {k: f"plots/{v}" for k, v in files.items()}}
