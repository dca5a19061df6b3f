"""Arithmetic that stays in Python floats for one scenario and broadcasts over numpy arrays for many.

The simulator's formulas are written once and run on both: a single prediction passes plain numbers (a
numpy call on a 0-d array costs about a microsecond, a float operation a few tens of nanoseconds), a sweep
passes arrays. These helpers take the numpy route as soon as one argument is an array; for plain numbers
they give what numpy would (IEEE double arithmetic; NaN propagates through maximum and minimum; ceil of an
infinity is the infinity).
"""

from __future__ import annotations

import math

import numpy as np

ndarray = np.ndarray


def f(x):
    """A float, or an array of floats."""
    if isinstance(x, ndarray):
        return x if x.dtype == np.float64 else x.astype(np.float64)
    if isinstance(x, (list, tuple)):
        return np.asarray(x, dtype=np.float64)
    return float(x)


def where(cond, a, b):
    if isinstance(cond, ndarray) or isinstance(a, ndarray) or isinstance(b, ndarray):
        return np.where(cond, a, b)
    return a if cond else b


def maximum(a, b):
    if isinstance(a, ndarray) or isinstance(b, ndarray):
        return np.maximum(a, b)
    return a if (a >= b or a != a) else b


def minimum(a, b):
    if isinstance(a, ndarray) or isinstance(b, ndarray):
        return np.minimum(a, b)
    return a if (a <= b or a != a) else b


def ceil(x):
    if isinstance(x, ndarray):
        return np.ceil(x)
    return float(math.ceil(x)) if math.isfinite(x) else float(x)


def fullest_group(seqs, dp):
    """Sequences of the fullest of ``dp`` data-parallel groups sharing ``seqs`` evenly (the tolerance keeps an
    exact division from rounding up)."""
    return ceil(f(seqs) / f(dp) - 1e-9)


def clip(x, lo, hi):
    if isinstance(x, ndarray) or isinstance(lo, ndarray) or isinstance(hi, ndarray):
        return np.clip(x, lo, hi)
    return minimum(maximum(x, lo), hi)


def zeros_like(*xs):
    """0.0, or zeros of the broadcast shape of the arrays among ``xs``."""
    arrays = [x for x in xs if isinstance(x, ndarray)]
    return np.zeros(np.broadcast(*arrays).shape) if arrays else 0.0


def div(a, b):
    """a / b with numpy's answer for a zero divisor (inf, or NaN for 0 / 0) instead of an exception."""
    if isinstance(a, ndarray) or isinstance(b, ndarray):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.true_divide(a, b)
    if b:
        return a / b
    return math.nan if a == 0 or a != a else math.copysign(math.inf, a) * math.copysign(1.0, b)


def any_true(x) -> bool:
    return bool(np.any(x)) if isinstance(x, ndarray) else bool(x)
