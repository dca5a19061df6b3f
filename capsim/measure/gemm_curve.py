"""A probe's measured GEMM efficiency curve, as an engine profile uses it, and its Hockney n_1/2.

The probe times ``M x K @ K x N`` as M grows from 1 (:func:`capsim.measure.probe_gemm.gemm_curve`).
The engine profile parameter ``gemm_half_rows`` models that curve as ``M / (M + n_1/2)``
(R. W. Hockney, "The Science of Computer Benchmarking", SIAM 1996, ch. 1; see
:mod:`capsim.sim.roofline`). This fits n_1/2 to a curve by least squares on the log of the
efficiency, using only the points whose time exceeds the time to read the weight matrix at the
probe's memory read rate: below that the GEMM is memory bound and says nothing about compute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from capsim.errors import CapsimError

LOG_HALF_ROWS_BOUNDS = (0.0, np.log(4096.0))  # n_1/2 between 1 and 4096 rows


def half_rows(curve: dict[str, Any], read_bytes_per_s: float) -> dict[str, Any]:
    """{"half_rows", "points" (the M used), "log_residuals"} for one probe GEMM curve."""
    pts = curve["points"]
    peak = max(p["flop_per_s"] for p in pts)
    read_s = curve["weight_bytes"] / read_bytes_per_s
    used = [p for p in pts if p["median_s"] > read_s]
    if len(used) < 3:
        raise CapsimError(f"GEMM curve {curve.get('dtype')}: fewer than 3 compute-bound points")
    m = np.array([p["m"] for p in used], dtype=float)
    frac = np.array([p["flop_per_s"] / peak for p in used])

    def sq(log_half: float) -> float:
        return float(np.sum((np.log(frac) - np.log(m / (m + np.exp(log_half)))) ** 2))

    best = minimize_scalar(sq, bounds=LOG_HALF_ROWS_BOUNDS, method="bounded")
    half = float(np.exp(best.x))
    return {"half_rows": half, "points": [int(x) for x in m],
            "log_residuals": [float(r) for r in np.log(frac) - np.log(m / (m + half))]}


def curves_from_probe(path: Path, dtype: str, sizes: tuple[int, ...] | None = None
                      ) -> tuple[tuple[float, float, tuple[tuple[float, float], ...]], ...]:
    """The CPU GEMM curves of ``dtype`` in a probe result file as an engine profile holds them:
    ((K, N, ((rows, fraction of the peak), ...)), ...) sorted by shape. ``sizes`` None: the weight-shape
    curves (``cpu.gemm_linear``, ``capsim probe --gemm-shapes-of``) when the probe has them, else the N = K
    curves; a tuple: only the N = K curves with N in it. Fractions are of the highest rate any curve of
    ``dtype`` reached (the hardware entry's peak)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CapsimError(f"{path}: unreadable probe result ({err})") from None
    cpu = data.get("cpu", {})
    square = [c for key in ("gemm", "gemm_small") if (c := cpu.get(key, {}).get(dtype)) and c.get("points")]
    linear = [c for c in (cpu.get("gemm_linear") or {}).get(dtype) or [] if c.get("points")]
    chosen = linear if sizes is None and linear else [c for c in square if sizes is None or c["n"] in sizes]
    if not chosen:
        raise CapsimError(f"{path}: no cpu.gemm.{dtype} curve" + (f" with N = K in {list(sizes)}" if sizes else "")
                          + " in the probe result")
    peak = max(p["flop_per_s"] for c in square + linear for p in c["points"])
    return tuple(sorted((float(c["k"]), float(c["n"]),
                         tuple((float(p["m"]), p["flop_per_s"] / peak) for p in sorted(c["points"], key=lambda p: p["m"])))
                        for c in chosen))


def half_rows_from_probe(path: Path, dtype: str) -> dict[str, Any]:
    """n_1/2 of the CPU GEMM curve of ``dtype`` in a probe result file (``<db>/probe/<id>.json``)."""
    return half_rows(*_probe_curve(path, dtype))


def _probe_curve(path: Path, dtype: str) -> tuple[dict[str, Any], float]:
    try:
        data = json.loads(Path(path).read_text())
        curve = data["cpu"]["gemm"][dtype]
        read = data["cpu"]["memory"]["read_bytes_per_s"]
    except (OSError, json.JSONDecodeError) as err:
        raise CapsimError(f"{path}: unreadable probe result ({err})") from None
    except KeyError as err:
        raise CapsimError(f"{path}: no {err.args[0]!r} in the probe result (expected cpu.gemm.{dtype})") from None
    return curve, read
