"""What the two serving validations share (``capsim validate --vllm-serve`` measured here, ``--serving``
published): the error of each benchmark statistic, its summary over the runs, and the summary's Markdown table."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def get(d: dict, path: tuple[str, ...]):
    """``d[path[0]][path[1]]...`` (a statistic of a ``capsim serve`` report)."""
    for k in path:
        d = d[k]
    return d


def error(measured_si: float | None, predicted: float | None) -> float | None:
    """predicted / measured - 1, or None where either is missing (or the measurement is 0)."""
    if measured_si in (None, 0) or predicted is None or not math.isfinite(predicted):
        return None
    return predicted / measured_si - 1.0


def summary(runs: list[dict[str, Any]], names) -> dict[str, dict[str, Any]]:
    """Per statistic: runs with an error, median |error|, share within 25%, the worst run and its error."""
    out = {}
    for name in names:
        e = [(r["id"], r["errors"][name]) for r in runs if r["errors"][name] is not None]
        if e:
            a = np.abs([x for _, x in e])
            worst = max(e, key=lambda t: abs(t[1]))
            out[name] = {"runs": len(e), "median_abs": float(np.median(a)), "within_25": float(np.mean(a <= 0.25)),
                         "worst_run": worst[0], "worst_error": worst[1]}
    return out


def summary_lines(summ: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| statistic | runs | held-out median abs error | within 25% | worst run |", "|---|---|---|---|---|"]
    for name, s in summ.items():
        lines.append(f"| {name} | {s['runs']} | {s['median_abs']:.1%} | {s['within_25']:.0%} | "
                     f"{s['worst_run']} {s['worst_error']:+.0%} |")
    return lines
