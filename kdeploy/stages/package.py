"""package: what a serving stack embeds, and the report.

- ``deploy/``: the deployable model dir (``kdeploy.runtime`` loads it, torch-free)
- ``triton/<name>/``: a Triton model repository (config.pbtxt validated with tritonclient)
- ``reference/``: real dev sentences and the deployed model's outputs (for serve-check)
- ``sentence-transformers/`` (embedding models) or ``optimum/`` (classifiers): the same
  model in the folder layout those libraries load, with a model card (``README.md``);
  the ``last_hidden_state`` graphs come cut from export and quantize, so this stays a copy
- ``report.json`` / ``report.md`` / ``plots/*.png``: the chain, every number, the pictures
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kdeploy.core.errors import DependencyError
from kdeploy.core.fsutil import atomic_write_json, atomic_write_text, read_json
from kdeploy.data import load_task_data
from kdeploy.evaluation.variants import deploy_name, models_of
from kdeploy.packaging.hf_folders import (
    OPTIMUM_DIR,
    ST_DIR,
    HfFolder,
    write_optimum_folder,
    write_sentence_transformers_folder,
)
from kdeploy.packaging.model_card import CardContext, render_model_card, teacher_id
from kdeploy.packaging.reference import write_reference
from kdeploy.report.build import build_report
from kdeploy.report.markdown import render_markdown
from kdeploy.report.stats import model_stats
from kdeploy.runtime.card import ModelCard
from kdeploy.stages.base import MODEL_INPUTS, Stage, StageInputs, StageResult, maybe, need

# folder layout -> the artifact it is recorded as
FOLDER_ARTIFACTS = {ST_DIR: "sentence_transformers", OPTIMUM_DIR: "optimum"}


class Package(Stage):
    name = "package"
    consumes = (
        *MODEL_INPUTS,
        maybe("bench"),
        maybe("verify"),
        need("dataset"),
        # the HF config, tokenizer and sentence-transformers modules of the student
        maybe("sparse_model", "student_model", "teacher_model", role="student_model"),
        maybe("student_hidden_onnx"),
        maybe("student_hidden_int8"),
    )
    # + triton, plots, report_md; sentence_transformers (embedding) or optimum (classifier)
    produces = ("report", "deploy", "reference")
    tools = ("onnxruntime", "tokenizers", "tritonclient", "matplotlib")

    def config(self) -> dict:
        return {"profile": self.profile.digest()}

    def deployed(self, inputs: StageInputs, models: dict[str, Path]) -> str:
        """The model verify chose (the fastest engine within the budgets), else the chain's
        last model (a run without verify)."""
        chosen = read_json(inputs["verify"]).get("deploy") if "verify" in inputs else None
        return chosen if chosen in models else deploy_name(models)

    def run(self, inputs: StageInputs, out_dir: Path) -> StageResult:
        models = models_of(inputs.by_artifact())
        chosen = self.deployed(inputs, models)
        deploy = out_dir / "deploy"
        shutil.copytree(models[chosen], deploy)
        outputs = {"deploy": deploy, "reference": out_dir / "reference"}
        ref = self._reference(inputs["dataset"], deploy, outputs["reference"])
        triton = self._triton(deploy, out_dir / "triton") if self.profile.package.triton else None
        if triton is not None:
            outputs["triton"] = out_dir / "triton"
        folder = self._hf_folder(inputs, models, out_dir)
        report = self._report(inputs, models, ref, triton)
        report["plots"] = self._plots(report, out_dir / "plots")
        if report["plots"].get("files"):
            outputs["plots"] = out_dir / "plots"
        if folder is not None:
            self._model_card(folder, report)
            outputs[FOLDER_ARTIFACTS[folder.layout]] = folder.path
        atomic_write_json(out_dir / "report.json", report)
        atomic_write_text(out_dir / "report.md", render_markdown(report))
        self.log(f"report: {self.final_dir / 'report.md'}")
        return StageResult(
            outputs={
                **outputs,
                "report": out_dir / "report.json",
                "report_md": out_dir / "report.md",
            },
            metrics={
                "deploy_from": chosen,
                "triton": bool(triton),
                "copied_from": self._copied_from(
                    self._copies(deploy, models[chosen], triton, folder), out_dir
                ),
            },
        )

    def _copies(
        self, deploy: Path, source: Path, triton: dict | None, folder: HfFolder | None
    ) -> dict[str, Path]:
        """{package-relative file: the file it was copied from}: the deployable dir (from
        the deployed model's dir), the Triton model file (from the deployable dir) and the
        folder's files."""
        copied = {
            f"deploy/{f.relative_to(deploy).as_posix()}": source / f.relative_to(deploy)
            for f in sorted(deploy.rglob("*"))
            if f.is_file()
        }
        if triton is not None:
            repo_file = Path(triton["model_file"]).relative_to(self.final_dir).as_posix()
            copied[repo_file] = deploy / ModelCard.load(deploy).model_file
        if folder is not None:
            copied |= {f"{folder.layout}/{k}": v for k, v in folder.copied.items()}
        return copied

    def _copied_from(self, copied: dict[str, Path], out_dir: Path) -> dict[str, str]:
        """{run-relative packaged file: run-relative file it is a copy of}, for the files
        copied from this run's artifacts (``kdeploy bench/verify/serve-check`` check that
        the manifest records the same sha256 for both: the deliverable is what was
        measured)."""
        run = self.env.run_dir.resolve()
        out = {}
        for dest, src in sorted(copied.items()):
            src = src.resolve()
            if src.is_relative_to(out_dir.resolve()):  # within package: its final place
                src = self.final_dir.resolve() / src.relative_to(out_dir.resolve())
            if src.is_relative_to(run):
                out[f"{self.name}/{dest}"] = src.relative_to(run).as_posix()
        return out

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

    def _hf_folder(
        self, inputs: StageInputs, models: dict[str, Path], out_dir: Path
    ) -> HfFolder | None:
        """The sentence-transformers folder (embedding students whose token-output graphs
        export and quantize cut) or the optimum folder (classifiers); None otherwise."""
        src = inputs.get("student_model")
        if src is None:
            return None
        card = ModelCard.load(models["student_fp32"])
        if card.task == "embedding":
            if "student_hidden_onnx" not in inputs:
                return None
            folder = write_sentence_transformers_folder(
                out_dir / ST_DIR,
                model_dir=src,
                fp32_hidden=inputs["student_hidden_onnx"],
                int8_hidden=inputs.get("student_hidden_int8"),
                weight_type=self.profile.quantize.weight_type,
            )
        else:
            fp32 = models.get("student_sparse", models["student_fp32"])
            int8 = models.get("student_int8")
            folder = write_optimum_folder(
                out_dir / OPTIMUM_DIR,
                model_dir=src,
                fp32_model=fp32 / ModelCard.load(fp32).model_file,
                int8_model=None if int8 is None else int8 / ModelCard.load(int8).model_file,
            )
        self.log(f"{folder.layout} folder: {self.final_dir / folder.layout}")
        return folder

    def _model_card(self, folder: HfFolder, report: dict) -> None:
        """README.md of the folder, from the report (every figure is the run's)."""
        ctx = CardContext(
            folder=folder,
            display_path=str(self.final_dir / folder.layout),
            run_dir=str(self.env.run_dir),
            teacher_id=teacher_id(self.env.manifest["model"]["path"]),
        )
        atomic_write_text(folder.path / "README.md", render_model_card(report, ctx))

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
