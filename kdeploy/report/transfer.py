"""The report's transfer section: how well each embedding model stands in for the teacher
beyond the task metric (verify's ``transfer``), and which evaluated texts were trained on."""

from __future__ import annotations

from typing import Any


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: Any, nd: int) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _seen_lines(seen: dict[str, Any]) -> list[str]:
    if not seen.get("recorded"):
        return ["", "Which texts were trained on: not recorded (the run has no distill stage)."]
    names = {
        "eval": "task eval split",
        "neighbour_pool": "neighbour pool",
        "probe_train": "probe fit",
        "probe_eval": "probe score",
    }
    out = [
        "",
        f"Texts seen in training ({seen['training_texts']} distinct training texts):",
        "",
        "| texts | split | distinct | seen in training |",
        "|---|---|---|---|",
    ]
    for key, label in names.items():
        if key in seen:
            row = seen[key]
            out.append(f"| {label} | {row['split']} | {row['texts']} | {row['seen']} |")
    return out


def transfer_lines(verify: dict[str, Any] | None) -> list[str]:
    """Markdown for verify's transfer checks (nothing for classifiers or older runs)."""
    t = (verify or {}).get("transfer") or {}
    if not t.get("applicable"):
        return []
    nb, probe = t.get("neighbours"), t.get("probe")
    k = nb["k"] if nb else "k"
    out = ["", "## Beyond the task metric", ""]
    if nb:
        out.append(
            f"Neighbours: the {nb['pool']} distinct texts of the {nb['split']} split; recall@{k} "
            f"of teacher_fp32's {k} nearest neighbours, and the mean Spearman of each text's "
            "similarities to all the others."
        )
    if probe:
        out.append(
            f"Linear probe: logistic regression on frozen embeddings of {probe['data']}, fitted "
            f"on {probe['train_examples']} train rows, scored on its {probe['eval_split']} "
            f"split ({probe['eval_examples']} rows)."
        )
    out += [
        "",
        f"| model | recall@{k} | similarity Spearman | probe accuracy | probe retention |",
        "|---|---|---|---|---|",
    ]
    for name, r in t["models"].items():
        out.append(
            f"| {name} | {_pct(r.get('neighbour_recall'))} | "
            f"{_num(r.get('neighbour_rank_spearman'), 4)} | {_num(r.get('probe_accuracy'), 2)} | "
            f"{_pct(r.get('probe_retention'))} |"
        )
    return out + _seen_lines(t.get("texts_seen") or {})
