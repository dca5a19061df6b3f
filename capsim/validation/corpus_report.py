"""A cross-validated corpus (:mod:`capsim.validation.corpus`) as a Markdown report and a log-log plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from capsim.validation.corpus import WITHIN, Spec


def markdown(result: dict[str, Any], spec: Spec, command: str, intro: str) -> str:
    from capsim import __version__

    lines = [f"# {spec.title}", "", f"Written by `{command}` (capsim {__version__}). {intro}", "",
             "| engine | regime | rows held out | held out by | held-out median abs error | within 25% | worst (factor) | "
             "fit median |", "|---|---|---|---|---|---|---|---|"]
    for engine, e in result["engines"].items():
        if "cross_validated" not in e:
            lines.append(f"| {engine} | - | {e['rows']} | | {e['note']} | | | |")
            continue
        for name, cv in e["cross_validated"].items():
            fit_med = e["fit"].get(name, {}).get("median_abs")
            lines.append(f"| {engine} | {name} | {cv['rows']} | {e['held_out_by']} | {cv['median_abs']:.1%} | "
                         f"{cv['within_25']:.0%} | {cv['worst_row']} {cv['worst_error']:+.0%} "
                         f"({cv['worst_factor']:.2f}x) | {'' if fit_med is None else f'{fit_med:.1%}'} |")
    lines += ["", "| engine | rows | sources | fitted parameters |", "|---|---|---|---|"]
    for engine, e in result["engines"].items():
        if "parameters" in e:
            params = ", ".join(f"{k} {v:.4g}" for k, v in e["parameters"].items())
            lines.append(f"| {engine} | {e['rows']} | {e['sources']} | {params} |")
    lines += ["", "| row | engine | model | hardware | metric | regime | published (SI) | error (fit) | error "
              "(held out) | source |", "|---|---|---|---|---|---|---|---|---|---|"]
    for rid, r in result["rows"].items():
        held = "-" if r["error_held_out"] is None else f"{r['error_held_out']:+.1%}"
        lines.append(f"| {rid} | {r['engine']} | {r['model']} | {r['hardware']} | {r['metric']} | {r['regime']} | "
                     f"{r['published']:.4g} | {r['error_fit']:+.1%} | {held} | {r['source']} |")
    if result["unsupported"]:
        lines += ["", "Rows capsim cannot express yet:", ""]
        lines += [f"- {u['row']}: {' '.join(str(u['reason']).split())}" for u in result["unsupported"]]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], spec: Spec, path: Path, title: str) -> None:
    """Held-out predicted against published (log-log, y = x and +-25% lines), one colour per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from capsim import atomic

    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    lo, hi = np.inf, 0.0
    for i, engine in enumerate(spec.engines):
        pts = [(r["published"], r["published"] * (1 + r["error_held_out"])) for r in result["rows"].values()
               if r["engine"] == engine and r["error_held_out"] is not None]
        if not pts:
            continue
        x, y = np.array(pts).T
        lo, hi = min(lo, x.min(), y.min()), max(hi, x.max(), y.max())
        ax.scatter(x, y, s=14, color=f"C{i % 10}", marker="os^D"[i // 10 % 4], label=f"{engine} ({len(pts)})",
                   alpha=0.8)
    if hi > 0:
        line = np.array([lo / 2, hi * 2])
        ax.plot(line, line, "k-", lw=0.8)
        for f in (1 + WITHIN, 1 / (1 + WITHIN)):
            ax.plot(line, line * f, "k:", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("published (tokens/s or s, SI)")
    ax.set_ylabel("predicted, held out (same unit)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic.save_figure(fig, path, "--plot")
    plt.close(fig)
