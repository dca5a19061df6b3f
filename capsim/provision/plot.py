"""The cost-throughput plot of a provisioning search: USD per hour against the output tokens/s each candidate
sustains within the latency limits (its capacity), qualifying candidates filled, the Pareto front joined, the
throughput asked for drawn across. Written atomically as PNG or SVG (by the file's suffix)."""

from __future__ import annotations

from pathlib import Path

from capsim.atomic import save_figure
from capsim.provision.search import Candidate, Result, pareto

LABELLED = 6  # Pareto points labelled on the plot (more would overlap)
FIGSIZE_IN = (9.0, 6.0)
DPI = 120


def _capacity(c: Candidate) -> float:
    """Tokens/s at the largest qualifying batch, or at the closest point for candidates that do not qualify."""
    return c.max_tokens_per_s if c.max_tokens_per_s is not None else c.tokens_per_s


def pareto_plot(res: Result, path: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=FIGSIZE_IN, dpi=DPI)
    ok = [c for c in res.ranked]
    no = [c for c in res.closest if c.usd_per_h is not None and c.tokens_per_s > 0]
    hardware = sorted({c.layout.hardware for c in ok + no})
    colours = {h: plt.get_cmap("tab10")(i % 10) for i, h in enumerate(hardware)}
    for h in hardware:
        xs = [c.usd_per_h for c in ok if c.layout.hardware == h]
        ys = [_capacity(c) for c in ok if c.layout.hardware == h]
        if xs:
            ax.scatter(xs, ys, s=46, color=colours[h], label=h, zorder=3, edgecolor="black", linewidth=0.4)
        xs = [c.usd_per_h for c in no if c.layout.hardware == h]
        ys = [_capacity(c) for c in no if c.layout.hardware == h]
        if xs:
            ax.scatter(xs, ys, s=30, facecolor="none", edgecolor=colours[h], linewidth=1.0, zorder=2,
                       label=None if any(c.layout.hardware == h for c in ok) else f"{h} (none qualifies)")
    front = pareto(ok)
    if front:
        ax.plot([c.usd_per_h for c in front], [_capacity(c) for c in front], "-", color="black", linewidth=1.0,
                zorder=1, label="Pareto front (qualifying)")
        for i, c in enumerate(front[:LABELLED], 1):  # numbered on the plot, named in a box (no overlaps)
            ax.annotate(str(i), (c.usd_per_h, _capacity(c)), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=8, fontweight="bold")
        names = "\n".join(f"{i}: {c.layout.label()}, ${c.usd_per_h:,.2f}/h"
                           for i, c in enumerate(front[:LABELLED], 1))
        ax.text(0.01, 0.94, "Pareto front:\n" + names, transform=ax.transAxes, fontsize=7, va="top",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    need = res.requirements.tokens_per_s
    if need is not None:
        ax.axhline(need, color="tab:red", linestyle="--", linewidth=1.0, label=f"required {need:,.0f} tokens/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cost (USD per hour of serving)")
    ax.set_ylabel("output tokens/s within the limits (largest qualifying batch)")
    ax.set_title(title or f"{res.workload.model}: {res.requirements.describe()}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.text(0.01, 0.99, "filled: meets every limit; hollow: closest point of a candidate that does not",
            transform=ax.transAxes, fontsize=7, va="top")
    fig.tight_layout()
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
