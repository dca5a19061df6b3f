"""The cost-throughput plot of a provisioning search: USD per hour against the output tokens/s each candidate
sustains within the latency limits (its capacity), qualifying candidates filled, the Pareto front joined, the
throughput asked for drawn across. Candidates with no price (no USD value to place them by) are drawn in a
strip labelled "unpriced" at the right edge, on the same tokens/s axis; the few that cannot be drawn at all
(no tokens/s at any batch: a log axis has no place for 0) are counted in a note. Written atomically as PNG or
SVG (by the file's suffix)."""

from __future__ import annotations

import math
from pathlib import Path

from capsim.atomic import save_figure
from capsim.provision.search import Candidate, Result, pareto

LABELLED = 6  # Pareto points labelled on the plot (more would overlap)
FIGSIZE_IN = (9.0, 6.0)
DPI = 120
STRIP_WIDTH = 0.09  # of the figure's plot width, for the unpriced candidates
MARKERS = ("o", "s", "D", "^")  # the 1st to 10th hardware get circles, the 11th to 20th squares, ...


def _capacity(c: Candidate) -> float:
    """Tokens/s at the largest qualifying batch, or at the closest point for candidates that do not qualify."""
    return c.max_tokens_per_s if c.max_tokens_per_s is not None else c.tokens_per_s


def dollars(x: float, _pos=None) -> str:
    """A tick label of the USD axis: $0.20, $1, $10, $1,000 (plain numbers, no powers of ten)."""
    if not x > 0 or not math.isfinite(x):
        return ""
    if x >= 1 and abs(x - round(x)) < 1e-6 * x:
        return f"${x:,.0f}"
    if x >= 0.01:
        return f"${x:,.2f}"
    return f"${x:.1g}"


def plain(x: float, _pos=None) -> str:
    """A tick label of the tokens/s axis: 200, 1,000, 100,000 (no powers of ten)."""
    if not x > 0 or not math.isfinite(x):
        return ""
    return f"{x:,.0f}" if x >= 1 else f"{x:.1g}"


def _log_axis(axis, lo: float, hi: float, fmt) -> None:
    """Log ``axis`` (ax.xaxis, ax.yaxis) labelled by ``fmt``: ticks at 1, 2, 5 x 10^k when it spans under 3
    decades, else at the decades; unlabelled minor ticks at every 1-9 x 10^k."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    subs = (1.0, 2.0, 5.0) if hi < 1e3 * lo else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    axis.set_minor_formatter(NullFormatter())


def _drawable(c: Candidate) -> bool:
    y = _capacity(c)
    return y is not None and math.isfinite(y) and y > 0


def pareto_plot(res: Result, path: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    path = Path(path)
    ok = list(res.ranked)  # qualifying, priced
    no = [c for c in res.closest if c.usd_per_h is not None and _drawable(c)]  # priced, do not qualify
    unpriced_ok = [c for c in res.unpriced if _drawable(c)]
    unpriced_no = [c for c in res.closest if c.usd_per_h is None and _drawable(c)]
    undrawn = len(res.unpriced) - len(unpriced_ok) + sum(not _drawable(c) for c in res.closest)
    strip = bool(unpriced_ok or unpriced_no)

    if strip:
        fig, (ax, sx) = plt.subplots(1, 2, figsize=FIGSIZE_IN, dpi=DPI, sharey=True, layout="constrained",
                                     gridspec_kw={"width_ratios": [1 - STRIP_WIDTH, STRIP_WIDTH]})
    else:
        fig, ax = plt.subplots(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
        sx = None
    hardware = sorted({c.layout.hardware for c in ok + no + unpriced_ok + unpriced_no})
    colours = {h: plt.get_cmap("tab10")(i % 10) for i, h in enumerate(hardware)}
    markers = {h: MARKERS[(i // 10) % len(MARKERS)] for i, h in enumerate(hardware)}  # past 10 colours
    qualifying_hw = {c.layout.hardware for c in ok + unpriced_ok}
    filled = {"s": 46, "zorder": 3, "edgecolor": "black", "linewidth": 0.4}
    hollow = {"s": 30, "zorder": 2, "facecolor": "none", "linewidth": 1.0}

    def draw(axes, pts, xs, h, qualifies):
        if qualifies:
            axes.scatter(xs, [_capacity(c) for c in pts], color=colours[h], marker=markers[h], **filled)
        else:
            axes.scatter(xs, [_capacity(c) for c in pts], edgecolor=colours[h], marker=markers[h], **hollow)

    for h in hardware:
        for group, q in ((ok, True), (no, False)):
            pts = [c for c in group if c.layout.hardware == h]
            if pts:
                draw(ax, pts, [c.usd_per_h for c in pts], h, q)
    if strip:  # qualifying left, not qualifying right, spread a little so that equal capacities stay apart
        for group, q, x0 in ((unpriced_ok, True, 0.3), (unpriced_no, False, 0.7)):
            x = {id(c): x0 + 0.13 * ((k % 3) - 1) for k, c in enumerate(sorted(group, key=_capacity))}
            for h in hardware:
                pts = [c for c in group if c.layout.hardware == h]
                if pts:
                    draw(sx, pts, [x[id(c)] for c in pts], h, q)

    # one legend entry per hardware with the marker of its points: filled if any candidate of it qualifies
    def entry(h: str) -> Line2D:
        if h in qualifying_hw:
            return Line2D([], [], linestyle="none", marker=markers[h], markersize=7, markerfacecolor=colours[h],
                          markeredgecolor="black", markeredgewidth=0.4, label=h)
        return Line2D([], [], linestyle="none", marker=markers[h], markersize=6, markerfacecolor="none",
                      markeredgecolor=colours[h], markeredgewidth=1.0, label=f"{h} (none qualifies)")

    handles = [entry(h) for h in hardware]
    notes = ["filled: meets every limit; hollow: closest point of a candidate that does not"]
    if strip:
        n_ok, n_no = len(unpriced_ok), len(unpriced_no)
        notes.append(f"unpriced (no USD/h to place them by): {n_ok} qualifying"
                     + (f" and {n_no} not" if n_no else "") + ", drawn in the strip at the right")
    if undrawn:
        notes.append(f"not drawn: {undrawn} candidate{'s' if undrawn != 1 else ''} with 0 output tokens/s "
                     "at every batch (no place on a log axis)")
    ax.text(0.01, 0.99, "\n".join(notes), transform=ax.transAxes, fontsize=7, va="top")

    front = pareto(ok)
    if front:
        ax.plot([c.usd_per_h for c in front], [_capacity(c) for c in front], "-", color="black", linewidth=1.0,
                zorder=1)
        handles.append(Line2D([], [], color="black", linewidth=1.0, label="Pareto front (qualifying)"))
        for i, c in enumerate(front[:LABELLED], 1):  # numbered on the plot, named in a box (no overlaps)
            ax.annotate(str(i), (c.usd_per_h, _capacity(c)), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=8, fontweight="bold")
        names = "\n".join(f"{i}: {c.layout.label()}, ${c.usd_per_h:,.2f}/h"
                          for i, c in enumerate(front[:LABELLED], 1))
        ax.text(0.01, 0.99 - 0.035 * len(notes), "Pareto front:\n" + names, transform=ax.transAxes, fontsize=7,
                va="top", bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    need = res.requirements.tokens_per_s
    if need is not None:
        for axes in (ax, sx) if strip else (ax,):
            axes.axhline(need, color="tab:red", linestyle="--", linewidth=1.0)
        handles.append(Line2D([], [], color="tab:red", linestyle="--", linewidth=1.0,
                              label=f"required {need:,.0f} tokens/s"))

    ax.set_xscale("log")
    ax.set_yscale("log")
    xs = [c.usd_per_h for c in ok + no]
    if xs:
        _log_axis(ax.xaxis, min(xs), max(xs), dollars)
    else:  # nothing priced: an empty dollar axis beside the strip
        ax.set_xlim(1, 100)
        _log_axis(ax.xaxis, 1, 100, dollars)
        ax.text(0.5, 0.5, "no priced candidate", transform=ax.transAxes, ha="center", va="center", color="0.4")
    ys = [_capacity(c) for c in ok + no + unpriced_ok + unpriced_no] + ([need] if need is not None else [])
    if ys:
        _log_axis(ax.yaxis, min(ys), max(ys), plain)
    ax.set_xlabel("cost (USD per hour of serving)")
    ax.set_ylabel("output tokens/s within the limits (largest qualifying batch)")
    ax.grid(True, which="both", alpha=0.3)
    if strip:
        sx.set_xlim(0, 1)
        sx.set_xticks([])
        sx.set_xlabel("unpriced", fontsize=9)
        sx.set_facecolor("0.95")
        sx.grid(True, axis="y", which="both", alpha=0.3)
        sx.tick_params(axis="y", which="both", left=False)
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    fig.suptitle(title or f"{res.workload.model}: {res.requirements.describe()}", fontsize=10)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
