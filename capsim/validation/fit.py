"""Fit an engine profile's few parameters to measured cases (scipy least squares on log error).

Only the declared fitting subset is used; the profile records exactly which cases fitted it,
and validation reports error on the held-out rest.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Sequence

import numpy as np
from scipy.optimize import least_squares

from capsim.engines import EngineProfile
from capsim.hardware.target import Target
from capsim.validation.cases import Case, predict_case

# name, lower bound, upper bound, start; efficiencies are fractions of the measured peaks.
FIT_PARAMETERS = (
    ("compute_efficiency", 0.02, 1.0, 0.5),
    ("memory_efficiency", 0.02, 1.0, 0.5),
    ("kernel_overhead_s", 1e-8, 1e-2, 1e-5),
    ("step_overhead_s", 1e-8, 1.0, 1e-4),
    ("attention_efficiency", 0.02, 1.0, 0.5),
)


def split(cases: Sequence[Case], patterns: Sequence[str]) -> tuple[list[Case], list[Case]]:
    """(fitting subset, held out): a case fits when its id matches one of the patterns."""
    fit = [c for c in cases if any(fnmatch.fnmatch(c.id, p) for p in patterns)]
    ids = {c.id for c in fit}
    return fit, [c for c in cases if c.id not in ids]


def _with(base: EngineProfile, x: np.ndarray, names: Sequence[str]) -> EngineProfile:
    return dataclasses.replace(base, **{n: float(v) for n, v in zip(names, np.exp(x), strict=True)})


def fit_profile(cases: Sequence[Case], target: Target, base: EngineProfile, dtype: str = "fp32",
                predict: Callable = predict_case) -> tuple[EngineProfile, dict]:
    names = [p[0] for p in FIT_PARAMETERS]
    lo = np.log([p[1] for p in FIT_PARAMETERS])
    hi = np.log([p[2] for p in FIT_PARAMETERS])
    x0 = np.log([p[3] for p in FIT_PARAMETERS])
    measured = np.array([c.measured_s for c in cases])

    def residuals(x):
        prof = _with(base, x, names)
        pred = np.array([predict(c, target, prof, dtype) for c in cases])
        return np.log(pred / measured)

    res = least_squares(residuals, x0, bounds=(lo, hi), x_scale=1.0, diff_step=1e-3)
    prof = _with(base, res.x, names)
    info = {"cases": [c.id for c in cases], "rms_log_error": float(np.sqrt(np.mean(res.fun ** 2))),
            "status": res.message}
    return prof, info
