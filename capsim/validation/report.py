"""Predicted beside measured: per-case rows, aggregate errors, the log-log plot, the Markdown report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from capsim.atomic import save_figure


def rows(cases, predicted: Sequence[float], held_out_ids: set[str]) -> list[dict[str, Any]]:
    out = []
    for c, p in zip(cases, predicted, strict=True):
        out.append({"case": c.id, "phase": c.phase, "batch": c.batch, "length": c.length,
                    "subset": "held-out" if c.id in held_out_ids else "fit",
                    "predicted_s": p, "measured_s": c.measured_s, "measured_p10_s": c.spread[0],
                    "measured_p90_s": c.spread[1], "error_pct": 100.0 * (p - c.measured_s) / c.measured_s})
    return out


def group_errors(groups: dict[str, list[str]], errors: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per named group of case ids: cases, median |error| and the worst error (largest |log(1 + error)|, so a
    factor of 2 too slow and too fast weigh the same). ``errors``: predicted / measured - 1 per id."""
    out = {}
    for name, ids in groups.items():
        e = np.array([errors[i] for i in ids])
        out[name] = {"cases": len(ids), "median_abs": float(np.median(np.abs(e))),
                     "worst": float(e[np.argmax(np.abs(np.log1p(e)))])}
    return out


def summary_by(cases, errors: dict[str, float], *fields: tuple[str, Sequence[str] | None]) -> dict[str, dict[str, float]]:
    """:func:`group_errors` over "all" and, per (attribute, order) in ``fields``, one group per value of that
    attribute of the cases (in ``order``; None: sorted)."""
    groups = {"all": [c.id for c in cases]}
    for attr, order in fields:
        for value in order if order is not None else sorted({getattr(c, attr) for c in cases}):
            groups[value] = [c.id for c in cases if getattr(c, attr) == value]
    return group_errors(groups, errors)


def aggregates(table: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median and max absolute % error per (subset, phase)."""
    out = {}
    for subset in ("held-out", "fit"):
        for phase in ("prefill", "decode"):
            err = [abs(r["error_pct"]) for r in table if r["subset"] == subset and r["phase"] == phase]
            if err:
                out[f"{subset}/{phase}"] = {"cases": len(err), "median_abs_pct": float(np.median(err)),
                                            "max_abs_pct": float(np.max(err))}
    return out


def plot(table: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    colour = {"prefill": "C0", "decode": "C1"}
    for (subset, phase), marker in {("fit", "prefill"): "s", ("fit", "decode"): "o",
                                    ("held-out", "prefill"): "D", ("held-out", "decode"): "^"}.items():
        pts = [r for r in table if r["subset"] == subset and r["phase"] == phase]
        if pts:  # fit hollow, held-out filled; the edge colour is explicit, or hollow markers are invisible
            ax.scatter([r["measured_s"] for r in pts], [r["predicted_s"] for r in pts], marker=marker,
                       label=f"{phase}, {subset}", alpha=0.8, edgecolors=colour[phase], linewidths=1.0,
                       facecolors="none" if subset == "fit" else colour[phase])
    vals = [v for r in table for v in (r["measured_s"], r["predicted_s"])]
    lo, hi = min(vals) / 1.5, max(vals) * 1.5
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
    for f in (0.9, 1.1):
        ax.plot([lo, hi], [lo * f, hi * f], "k:", lw=0.6, label="y = x \u00b1 10%" if f < 1 else None)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured (s)",
           ylabel="predicted (s)", title=title)
    ax.legend(fontsize=8)
    try:
        return save_figure(fig, path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def markdown(table, agg, header: str) -> str:
    lines = [header, "", "| subset / phase | cases | median abs error | max abs error |", "|---|---|---|---|"]
    for k, v in agg.items():
        lines.append(f"| {k} | {v['cases']} | {v['median_abs_pct']:.1f}% | {v['max_abs_pct']:.1f}% |")
    lines += ["", "| case | subset | predicted | measured (p10-p90) | error |", "|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['case']} | {r['subset']} | {r['predicted_s'] * 1e3:.2f} ms | {r['measured_s'] * 1e3:.2f} ms "
                     f"({r['measured_p10_s'] * 1e3:.2f}-{r['measured_p90_s'] * 1e3:.2f}) | {r['error_pct']:+.1f}% |")
    return "\n".join(lines) + "\n"
