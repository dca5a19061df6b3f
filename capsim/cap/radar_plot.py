"""Drawing of the CAP radar diagram (matplotlib, Agg; no pyplot state): three axes, one polygon per system, and
a table of the raw values, scores and class beside it. PNG and SVG are written atomically (a temporary file in
the destination folder, then os.replace) and reproducibly (no date, fixed SVG id salt).

``rows`` are the per-system objects of ``capsim cap radar --json`` (see capsim/cli/cap_radar.py).
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any

from capsim import outputs
from capsim.atomic import save_figure
from capsim.cap.radar import CEIL, FLOOR
from capsim.errors import CapsimError

FORMATS = ("png", "svg")
PNG_DPI = 120
FIG_SIZE_IN = (15.0, 6.6)  # width, height: radar on the left, table on the right
ANGLES_DEG = {"performance": 90.0, "cost": 210.0, "accuracy": 330.0}  # performance at the top
RLABEL_DEG = 30.0  # score labels between the performance and accuracy axes
GRID_STEP = 20  # score rings at 20, 40, ... 100
FILL_ALPHA = 0.12
SVG_SALT = "capsim-cap-radar"  # fixed ids in the SVG, so the same input gives the same file
NAME_WRAP = 34  # characters per line of a system name in the table
CELL_PAD_CHARS = 3  # padding of a column, in characters, when sharing out the table's width
CELL_PAD = 0.03  # text padding inside a cell, fraction of the cell width (matplotlib's default 0.1 is wide)
TABLE_TOP = 1.0  # table's top edge, axes fraction
ROW_HEIGHT = 0.055  # height of one text line of the table, axes fraction
TABLE_FONT = 9
BOLD_WIDTH = 1.15  # bold DejaVu Sans is about 15% wider than regular
FOOT_FONT = 8
FOOT_GAP = 0.05  # between the table and the notes under it, axes fraction


def _usd(x: float) -> str:
    return f"${x:,.0f}"


def performance_text(row: dict[str, Any], metric: str) -> str:
    if metric == "tpot":
        return f"{row['tpot_s'] * 1e3:,.3g} ms"
    return f"{row['decode_tokens_per_s']:,.4g} tok/s"


def _axis_labels(metric: str, benchmark: str | None) -> dict[str, str]:
    perf = "TPOT (s/token), lower is better" if metric == "tpot" else "decode tokens/s, higher is better"
    bench = f"{benchmark} score" if benchmark else "task accuracy"
    return {"performance": f"Performance\n{perf}", "cost": "Cost\ncapital cost (USD),\nlower is better",
            "accuracy": f"Accuracy\n{bench},\nhigher is better"}


def _radar(ax, rows: list[dict[str, Any]], colours, metric: str, benchmark: str | None) -> None:
    order = list(ANGLES_DEG)
    theta = [math.radians(ANGLES_DEG[a]) for a in order]
    ax.set_ylim(0, CEIL)
    ax.set_yticks(range(GRID_STEP, int(CEIL) + 1, GRID_STEP))
    ax.set_yticklabels([str(t) for t in range(GRID_STEP, int(CEIL) + 1, GRID_STEP)], fontsize=7, color="0.45")
    ax.set_rlabel_position(RLABEL_DEG)
    labels = _axis_labels(metric, benchmark)
    ax.set_xticks(theta)
    ax.set_xticklabels([labels[a] for a in order], fontsize=9)
    ax.tick_params(axis="x", pad=22)
    ring = [math.radians(d) for d in range(0, 361, 2)]
    ax.plot(ring, [FLOOR] * len(ring), color="0.55", lw=0.9, ls="--", zorder=1)
    ax.spines["polar"].set_visible(False)
    for row, colour in zip(rows, colours, strict=True):
        r = [row["scores"][a] for a in order]
        ax.plot(theta + theta[:1], r + r[:1], color=colour, lw=2, marker="o", ms=4, zorder=3,
                label=f"{row['name']}  [{row['class']}]")
        ax.fill(theta + theta[:1], r + r[:1], color=colour, alpha=FILL_ALPHA, zorder=2)


def _widths(cells: list[list[str]]) -> list[float]:
    """Column widths as fractions of the table, from the longest line of each column."""
    chars = [max(len(line) for row in cells for line in row[j].split("\n")) + CELL_PAD_CHARS
             for j in range(len(cells[0]))]
    chars[0] *= BOLD_WIDTH  # the system names are bold
    return [c / sum(chars) for c in chars]


def _table(ax, rows: list[dict[str, Any]], colours, metric: str, foot: str) -> None:
    ax.axis("off")
    head = ["system", "class", "TPOT" if metric == "tpot" else "tokens/s", "capex", "accuracy", "P", "C", "A"]
    cells = [[textwrap.fill(r["name"], NAME_WRAP), r["class"], performance_text(r, metric), _usd(r["capex_usd"]),
              f"{r['accuracy']:.3f}", *(f"{r['scores'][a]:.1f}" for a in ANGLES_DEG)] for r in rows]
    lines = max(c.count("\n") + 1 for row in cells for c in row)
    height = min(TABLE_TOP, ROW_HEIGHT * (1 + len(rows) * lines))
    t = ax.table(cellText=cells, colLabels=head, cellLoc="right", colLoc="right",
                 bbox=(0.0, TABLE_TOP - height, 1.0, height))
    t.auto_set_font_size(False)
    t.set_fontsize(TABLE_FONT)
    widths = _widths([head, *cells])
    for (i, j), cell in t.get_celld().items():
        cell.set_width(widths[j])
        cell.set_edgecolor("0.8")
        cell.set_linewidth(0.6)
        if j in (0, 1):
            cell.get_text().set_horizontalalignment("left")
            cell.PAD = CELL_PAD
        if i == 0:
            cell.set_facecolor("0.92")
            cell.get_text().set_fontweight("bold")
        elif j == 0:
            cell.get_text().set_color(colours[i - 1])
            cell.get_text().set_fontweight("bold")
    ax.text(0.0, TABLE_TOP - height - FOOT_GAP, foot, transform=ax.transAxes, va="top", ha="left",
            fontsize=FOOT_FONT, color="0.25", linespacing=1.45)


def _footnote(rows: list[dict[str, Any]], basis: dict[str, float], metric: str) -> str:
    lo, hi = basis["performance_min"], basis["performance_max"]
    if metric == "tpot":
        perf = f"performance: min-max over the systems, TPOT {lo * 1e3:.3g} ms = 100 ... {hi * 1e3:.3g} ms = 20"
    else:
        perf = f"performance: min-max over the systems, {hi:,.4g} tokens/s = 100 ... {lo:,.4g} tokens/s = 20"
    lines = [
        "Scores on [20, 100] after MoE-CAP (arXiv 2412.07067); P, C, A = performance, cost, accuracy scores.",
        perf + ".",
        f"cost: 20 + 80 x (1 - capex / {_usd(basis['cost_tick_max_usd'])}), the 1-2-5 tick at or above the "
        "largest capex.",
        f"accuracy: {basis['accuracy_min']:.3f} = 20 ... 1.0 = 100.  Class: the two highest axes.",
        "Performance predicted by capsim; capex from hardware_db prices unless stated. Accuracy sources:",
    ]
    lines += [f"  {r['name']}: {r['accuracy_source']}" for r in rows]
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], basis: dict[str, float], metric: str, benchmark: str | None, title: str,
           subtitle: str = ""):
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIG_SIZE_IN, layout=None)
    colours = [colormaps["tab10"](i % 10) for i in range(len(rows))]
    ax = fig.add_axes((0.05, 0.25, 0.33, 0.6), projection="polar")
    _radar(ax, rows, colours, metric, benchmark)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8.5, frameon=False, ncol=1)
    _table(fig.add_axes((0.46, 0.05, 0.52, 0.8)), rows, colours, metric, _footnote(rows, basis, metric))
    fig.suptitle(title, fontsize=13, fontweight="bold", x=0.5, y=0.975)
    if subtitle:
        fig.text(0.5, 0.915, subtitle, ha="center", va="center", fontsize=9.5, color="0.3")
    return fig


def _write(fig, path: Path, fmt: str) -> None:
    from matplotlib import rc_context

    with rc_context({"svg.hashsalt": SVG_SALT}):
        meta = {"Date": None} if fmt == "svg" else {"Software": None}
        save_figure(fig, path, flag="--out", dpi=PNG_DPI, metadata=meta, facecolor="white")


def destination(prefix: str) -> Path:
    """PREFIX without a .png/.svg suffix; a one-line error before any work when its folder cannot be written."""
    base = Path(prefix)
    if base.suffix.lower() in {f".{f}" for f in FORMATS}:
        base = base.with_suffix("")
    if not base.name:
        raise CapsimError(f"--out {prefix}: expected a file name prefix (PREFIX.png and PREFIX.svg are written)")
    if not base.parent.is_dir():
        raise CapsimError(f"--out {prefix}: no folder {base.parent}")
    if not os.access(base.parent, os.W_OK):
        raise CapsimError(f"--out {prefix}: folder {base.parent} is not writable")
    for fmt in FORMATS:
        outputs.check_output(base.with_suffix(f".{fmt}"), "figure", "--out")
    return base


def write(rows: list[dict[str, Any]], basis: dict[str, float], prefix: str, metric: str, benchmark: str | None,
          title: str, subtitle: str = "") -> list[str]:
    """PREFIX.png and PREFIX.svg; the paths written."""
    base = destination(prefix)
    fig = figure(rows, basis, metric, benchmark, title, subtitle)
    paths = [base.with_name(f"{base.name}.{fmt}") for fmt in FORMATS]
    for path, fmt in zip(paths, FORMATS, strict=True):
        _write(fig, path, fmt)
    return [str(p) for p in paths]
