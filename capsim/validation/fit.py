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
from capsim.errors import CapsimError
from capsim.hardware.target import Target
from capsim.validation.cases import Case, predict_case

# name -> (lower bound, upper bound, start); efficiencies are fractions of the hardware's peaks.
BOUNDS = {
    "compute_efficiency": (0.02, 1.0, 0.5),
    "memory_efficiency": (0.02, 1.0, 0.5),
    "kernel_overhead_s": (1e-8, 1e-2, 1e-5),
    "step_overhead_s": (1e-8, 1.0, 1e-4),
    "attention_efficiency": (0.02, 1.0, 0.5),
    "host_memory_efficiency": (0.02, 1.0, 0.5),
    "host_compute_efficiency": (1e-3, 1.0, 0.03),  # CPU kernels may reach ~1% of an AMX peak they do not use
    "link_efficiency": (0.02, 1.0, 0.5),
    "gemm_half_rows": (1.0, 4096.0, 32.0),  # rows; a GEMM reaches half its peak at this many rows
    "memory_half_bytes": (1e3, 1e9, 1e6),  # bytes; a memory-bound kernel reaches half the bandwidth
    "per_sequence_overhead_s": (1e-8, 1e-3, 1e-5),  # host seconds per running sequence per step
    "expert_fetch_s": (1e-6, 1.0, 1e-3),  # host seconds per expert fetched on demand (gpu-fetch)
    "sync_s_per_thread": (1e-10, 1e-5, 1e-7),  # seconds per kernel per thread at a CPU barrier
}
# What the CPU runs fit (hf-eager); the rest of a profile is set by mechanism in validation/config.yaml.
FIT_PARAMETERS = ("compute_efficiency", "memory_efficiency", "kernel_overhead_s", "step_overhead_s",
                  "attention_efficiency")


def split(cases: Sequence[Case], patterns: Sequence[str]) -> tuple[list[Case], list[Case]]:
    """(fitting subset, held out): a case fits when its id matches one of the patterns."""
    fit = [c for c in cases if any(fnmatch.fnmatch(c.id, p) for p in patterns)]
    ids = {c.id for c in fit}
    return fit, [c for c in cases if c.id not in ids]


def _with(base: EngineProfile, x: np.ndarray, names: Sequence[str]) -> EngineProfile:
    return dataclasses.replace(base, **{n: float(v) for n, v in zip(names, np.exp(x), strict=True)})


def fit_parameters(log_residuals: Callable[[EngineProfile], np.ndarray], base: EngineProfile,
                   names: Sequence[str], tolerance: float = 1e-8, loss: str = "linear",
                   loss_scale: float = 1.0) -> tuple[EngineProfile, dict]:
    """Least squares (scipy, in log parameter space within BOUNDS) of ``log_residuals(profile)``
    (log predicted / measured per case) over the named parameters of ``base``; ``tolerance``: scipy's relative
    ftol and xtol (stop when the cost or the parameters change by less); ``loss``, ``loss_scale``: scipy's
    loss and f_scale ("soft_l1": log errors beyond loss_scale count about linearly, so one far row cannot
    pull every parameter)."""
    unknown = [n for n in names if n not in BOUNDS]
    if unknown:
        raise CapsimError(f"cannot fit {', '.join(unknown)} (fittable: {', '.join(BOUNDS)})")
    lo = np.log([BOUNDS[n][0] for n in names])
    hi = np.log([BOUNDS[n][1] for n in names])
    x0 = np.log([BOUNDS[n][2] for n in names])
    res = least_squares(lambda x: log_residuals(_with(base, x, names)), x0, bounds=(lo, hi), x_scale=1.0,
                        diff_step=1e-3, ftol=tolerance, xtol=tolerance, loss=loss, f_scale=loss_scale)
    return _with(base, res.x, names), {"rms_log_error": float(np.sqrt(np.mean(res.fun ** 2))),
                                       "status": res.message}


def fit_profile(cases: Sequence[Case], target: Target, base: EngineProfile, dtype: str = "fp32",
                predict: Callable = predict_case) -> tuple[EngineProfile, dict]:
    measured = np.array([c.measured_s for c in cases])

    def residuals(prof: EngineProfile) -> np.ndarray:
        return np.log(np.array([predict(c, target, prof, dtype) for c in cases]) / measured)

    prof, info = fit_parameters(residuals, base, FIT_PARAMETERS)
    return prof, {"cases": [c.id for c in cases], **info}
