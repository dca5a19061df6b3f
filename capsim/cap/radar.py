"""The CAP radar diagram's normalisation and classes, after MoE-CAP (pure functions, no I/O).

Source: MoE-CAP (Y. Jiang et al., "MoE-CAP: Benchmarking Cost, Accuracy and Performance of Sparse
Mixture-of-Experts Systems", arXiv 2412.07067, NeurIPS 2025 Datasets and Benchmarks) and its public
repository, as summarised in ../shared/reference/moecap_metrics.md, section "CAP radar diagram".

Each of the three axes maps the systems compared onto [FLOOR, CEIL] = [20, 100]; higher is better on every
axis of the diagram:

* performance, min-max over the systems compared.
  TPOT (seconds per output token, lower is better):   score = 20 + 80 x (max - x) / (max - min)
  throughput (decode output tokens/s, higher better): score = 20 + 80 x (x - min) / (max - min)
  All systems equal: 100 for every one.
* cost, capital cost in USD (lower is better), against a tick maximum: tick_max is the smallest value of the
  1-2-5 series (1, 2, 5, 10, 20, 50, ... x 10^k) that is >= the largest cost, and
  score = 20 + 80 x (1 - cost / tick_max). The most expensive system therefore scores a little above 20
  (exactly 20 when its cost is itself a 1-2-5 value).
* accuracy, a fraction in [0, 1], from the lowest of the systems compared up to 1.0:
  score = 20 + 80 x (a - min) / (1 - min); when min == 1 every system scores 100.

Class: the two axes with the highest scores name the system's class: {performance, accuracy} ->
"performance-accuracy", {performance, cost} -> "performance-cost", {cost, accuracy} -> "cost-accuracy".
Ties are broken in the fixed order performance, cost, accuracy (an axis earlier in that order wins a tie), so
a system with three equal scores is "performance-cost".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from capsim.errors import CapsimError

FLOOR = 20.0  # score of the worst system on an axis (MoE-CAP radar)
CEIL = 100.0  # score of the best
SPAN = CEIL - FLOOR
AXES = ("performance", "cost", "accuracy")  # also the tie-break order of classify()
PERFORMANCE_METRICS = ("tpot", "throughput")  # TPOT: lower is better; throughput: higher is better
TICKS_1_2_5 = (1, 2, 5, 10)  # mantissas of the 1-2-5 series (10 closes the decade)
_REL_TOL = 1e-12  # a cost equal to a tick value up to float rounding is that tick
CLASSES = {
    frozenset(("performance", "accuracy")): "performance-accuracy",
    frozenset(("performance", "cost")): "performance-cost",
    frozenset(("cost", "accuracy")): "cost-accuracy",
}


@dataclass(frozen=True)
class RadarScores:
    performance: float
    cost: float
    accuracy: float
    cap_class: str

    def as_dict(self) -> dict[str, float]:
        return {axis: getattr(self, axis) for axis in AXES}


def _check(values: Sequence[float], what: str, positive: bool = True) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise CapsimError(f"{what}: no values")
    bad = [v for v in out if not math.isfinite(v) or (positive and not v > 0)]
    if bad:
        raise CapsimError(f"{what}: {bad[0]!r} is not a {'positive ' if positive else ''}finite number")
    return out


def tick_max(x: float) -> float:
    """The smallest 1-2-5 value (1, 2, 5, 10, 20, 50, ... x 10^k) that is >= ``x`` (> 0)."""
    if not (math.isfinite(x) and x > 0):
        raise CapsimError(f"tick maximum of {x!r}: expected a positive finite number")
    exponent = math.floor(math.log10(x))
    for mantissa in TICKS_1_2_5:
        tick = float(f"{mantissa}e{exponent}")  # exact decimal: 5e-1, not 5 * 0.1 = 0.5000000000000001
        if tick >= x * (1 - _REL_TOL):
            return tick
    raise AssertionError("unreachable: 10 x 10^floor(log10 x) > x")  # pragma: no cover


def performance_scores(values: Sequence[float], metric: str = "tpot") -> list[float]:
    """Min-max over the systems: TPOT (s, lower is better) or throughput (tokens/s, higher is better)."""
    if metric not in PERFORMANCE_METRICS:
        raise CapsimError(f"--performance {metric}: expected one of {', '.join(PERFORMANCE_METRICS)}")
    xs = _check(values, "performance (TPOT s)" if metric == "tpot" else "performance (tokens/s)")
    lo, hi = min(xs), max(xs)
    if hi == lo:
        return [CEIL] * len(xs)
    if metric == "tpot":  # = FLOOR + SPAN x (hi - x) / (hi - lo), written so that the fastest is exactly CEIL
        return [CEIL - SPAN * (x - lo) / (hi - lo) for x in xs]
    return [FLOOR + SPAN * (x - lo) / (hi - lo) for x in xs]


def cost_scores(values_usd: Sequence[float]) -> tuple[list[float], float]:
    """Scores against the 1-2-5 tick maximum of the largest cost, and that tick maximum (USD)."""
    xs = _check(values_usd, "cost (USD)")
    top = tick_max(max(xs))
    return [FLOOR + SPAN * (1 - x / top) for x in xs], top


def accuracy_scores(values: Sequence[float]) -> list[float]:
    """From the lowest accuracy of the systems (FLOOR) up to 1.0 (CEIL)."""
    xs = _check(values, "accuracy", positive=False)
    if any(not 0 <= a <= 1 for a in xs):
        raise CapsimError(f"accuracy {next(a for a in xs if not 0 <= a <= 1)!r}: expected a fraction in [0, 1]")
    lo = min(xs)
    if lo == 1:
        return [CEIL] * len(xs)
    return [FLOOR + SPAN * (a - lo) / (1 - lo) for a in xs]


def classify(performance: float, cost: float, accuracy: float) -> str:
    """The class named by the two highest axes; ties go to the earlier axis of performance, cost, accuracy."""
    scores = dict(zip(AXES, (performance, cost, accuracy), strict=True))
    ranked = sorted(AXES, key=lambda axis: (-scores[axis], AXES.index(axis)))
    return CLASSES[frozenset(ranked[:2])]


def radar(performance: Sequence[float], cost_usd: Sequence[float], accuracy: Sequence[float],
          metric: str = "tpot") -> tuple[list[RadarScores], dict[str, float]]:
    """Scores and class of every system, and the normalisation used (for the report)."""
    n = len(performance)
    if not n == len(cost_usd) == len(accuracy):
        raise CapsimError("performance, cost and accuracy need one value per system")
    p = performance_scores(performance, metric)
    c, top = cost_scores(cost_usd)
    a = accuracy_scores(accuracy)
    scores = [RadarScores(p[i], c[i], a[i], classify(p[i], c[i], a[i])) for i in range(n)]
    basis = {"floor": FLOOR, "ceil": CEIL, "performance_metric": metric,
             "performance_min": float(min(performance)), "performance_max": float(max(performance)),
             "cost_tick_max_usd": top, "accuracy_min": float(min(accuracy)), "accuracy_max": 1.0}
    return scores, basis
