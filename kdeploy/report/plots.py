"""Report plots (PNG, matplotlib): accuracy vs throughput, latency vs batch and sequence.

matplotlib is the optional ``plots`` extra; ``make_plots`` raises DependencyError without it
and the package stage then notes in the report that plots were skipped and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdeploy.core.deps import require

KIND_STYLE = {
    "reference": {"color": "black", "marker": "s"},
    "baseline": {"color": "tab:gray", "marker": "D"},
    "chain": {"color": "tab:blue", "marker": "o"},
    "engine": {"color": "tab:orange", "marker": "^"},
}


def _pyplot():
    mpl = require("matplotlib", feature="report plots")
    mpl.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def make_plots(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Write the PNGs into ``out_dir``; returns {plot: file name}."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    rows = [r for r in report.get("chain", []) if r.get("value") is not None]
    rows = [r for r in rows if r.get("sentences_per_s")]
    if rows:
        pareto_plot(plt, report, rows, out_dir / "pareto.png")
        files["pareto"] = "pareto.png"
    bench = report.get("bench") or {}
    if bench.get("models"):
        latency_plot(plt, report, bench, out_dir / "latency.png")
        files["latency"] = "latency.png"
    return files


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 >= x and y2 >= y) and (x2 > x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _host_line(report: dict[str, Any]) -> str:
    host = (report.get("host") or {}).get("cpu", "?")
    return f"{host}, {report.get('threads') or 'default'} threads"


def pareto_plot(plt, report: dict[str, Any], rows: list[dict], path: Path) -> None:
    """Each model's task metric over its throughput, the Pareto front, the deployed model
    ringed and the retention budget. Drawn in legend order: front, kinds, deployed, budget."""
    metric = rows[0].get("metric") or "metric"
    split = (report.get("verify") or {}).get("split", "")
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    pts = [(r["sentences_per_s"], r["value"]) for r in rows]
    _draw_front(ax, pts)
    _draw_models(ax, rows, pts)
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    pad = max(max(ys) - min(ys), 0.5) * 0.25
    lo, hi = min(ys) - pad, max(ys) + pad
    ax.set_xlim(0, max(xs) * 1.35)
    ax.set_ylim(lo, hi)
    _draw_retention_budget(ax, report, rows, lo, hi)
    bs = rows[0].get("throughput_batch")
    ax.set_xlabel(f"throughput, sentences/s (batch {bs}, real dev sentences)")
    ax.set_ylabel(f"{metric} ({split})" if split else metric)
    ax.set_title(
        f"Accuracy vs throughput: {report['profile']['name']}\n{_host_line(report)}", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _draw_front(ax, pts: list[tuple[float, float]]) -> None:
    front = pareto_front(pts)
    if len(front) > 1:
        ax.plot(
            [pts[i][0] for i in front],
            [pts[i][1] for i in front],
            color="tab:orange",
            lw=1.5,
            ls="--",
            zorder=1,
            label="Pareto front",
        )


def _draw_models(ax, rows: list[dict], pts: list[tuple[float, float]]) -> None:
    """One marker per model, styled by kind (one legend entry per kind), the deployed one
    ringed, each labelled with its name and size."""
    seen: set[str] = set()
    for r, (x, y) in zip(rows, pts, strict=True):
        style = KIND_STYLE.get(r["kind"], KIND_STYLE["chain"])
        label = r["kind"] if r["kind"] not in seen else None
        seen.add(r["kind"])
        ax.scatter(x, y, s=70, zorder=3, label=label, **style)
        if r.get("deploy"):
            ax.scatter(
                x,
                y,
                s=260,
                facecolors="none",
                edgecolors="tab:red",
                lw=2,
                zorder=4,
                label="deployed",
            )
        ax.annotate(
            f"{r['model']}\n{r['size_mb']:.1f} MB" if r.get("size_mb") else r["model"],
            (x, y),
            textcoords="offset points",
            xytext=(8, -4),
            fontsize=8,
        )


def _draw_retention_budget(
    ax, report: dict[str, Any], rows: list[dict], lo: float, hi: float
) -> None:
    """The min_retention budget as a line when it falls in the y range, else as a note."""
    ref = next((r for r in rows if r["kind"] == "reference"), None)
    floor = (report.get("budget_limits") or {}).get("min_retention")
    if not (ref and floor):
        return
    line = ref["value"] * floor
    text = f"retention budget: {line:.2f} ({100 * floor:.0f}% of teacher)"
    if lo <= line <= hi:
        ax.axhline(line, color="tab:red", lw=1, ls=":", label=text)
    else:  # far below the models: a note, not a line that squashes the plot
        ax.text(
            0.99,
            0.02,
            f"{text},\nbelow this range" if line < lo else text,
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color="tab:red",
        )


def latency_plot(plt, report: dict[str, Any], bench: dict[str, Any], path: Path) -> None:
    models = bench["models"]
    fig, (ax_b, ax_s) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=120)
    seqs = sorted({g["sequence"] for m in models.values() for g in m["latency"]})
    batches = sorted({g["batch"] for m in models.values() for g in m["latency"]})
    seq_fixed, batch_fixed = max(seqs), min(batches)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, m) in enumerate(models.items()):
        color = colors[k % len(colors)]
        by_b = sorted(
            (g for g in m["latency"] if g["sequence"] == seq_fixed), key=lambda g: g["batch"]
        )
        by_s = sorted(
            (g for g in m["latency"] if g["batch"] == batch_fixed), key=lambda g: g["sequence"]
        )
        for ax, cells, key in ((ax_b, by_b, "batch"), (ax_s, by_s, "sequence")):
            if not cells:
                continue
            x = [g[key] for g in cells]
            ax.plot(x, [g["p50_ms"] for g in cells], marker="o", color=color, label=f"{name} p50")
            ax.fill_between(
                x,
                [g["p50_ms"] for g in cells],
                [g["p99_ms"] for g in cells],
                color=color,
                alpha=0.15,
            )
    for ax, xs, title in (
        (ax_b, batches, f"latency vs batch (sequence {seq_fixed})"),
        (ax_s, seqs, f"latency vs sequence (batch {batch_fixed})"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.set_ylabel("ms per call (line p50, band up to p99)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    ax_b.set_xlabel("batch size")
    ax_s.set_xlabel("sequence length (tokens)")
    ax_b.legend(fontsize=8)
    fig.suptitle(f"{report['profile']['name']}: {_host_line(report)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
