"""The front end's intake (capsim.engines.frontend) fitted to published serving runs (``capsim validate --serving``).

The one parameter, ``intake_s_per_request`` (a), is fitted to the runs that release every request at once
(``--request-rate inf``, no ``--max-concurrency``): least squares on the log error of their mean and p99 TTFT,
bounded to [0, ``BOUND_S``]. For such a burst of N requests the front end shares its CPU equally among them, so
all N reach the engine together at N x a, and the engine's run is its run without a front end, shifted by N x a
(:func:`shifted`; the test checks it against the simulator): the fit needs one simulation per run, not one per
trial value. Runs with a concurrency limit are predicted with the fitted value but do not enter the fit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from capsim.errors import CapsimError

BOUND_S = 0.1  # s per request: a bound far above any front end seen (the fitted values are a few ms)
FITTED_STATS = ("ttft_mean", "ttft_p99")


def is_burst(row: dict[str, str]) -> bool:
    return not row.get("max_concurrency")


def shifted(pred: dict[str, Any], n: int, intake_s: float) -> dict[str, float | None]:
    """Statistics of a burst of ``n`` requests with a front end of ``intake_s`` per request, from the same run
    without one (``pred``, capsim serve's report): TTFT and E2E + n x intake_s; TPOT and ITL as they were; the
    duration + n x intake_s, so output tokens/s x duration / (duration + n x intake_s)."""
    d, delay = pred["duration_s"], n * intake_s

    def plus(x):
        return None if x is None else x + delay
    return {"ttft_mean": plus(pred["ttft_s"]["mean"]), "ttft_p99": plus(pred["ttft_s"]["p99"]),
            "tpot_mean": pred["tpot_s"]["mean"], "tpot_p99": pred["tpot_s"]["p99"],
            "itl_mean": pred["itl_s"]["mean"], "itl_p99": pred["itl_s"]["p99"], "e2e_mean": plus(pred["e2e_s"]["mean"]),
            "output_tokens_per_s": pred["output_tokens_per_s"] * d / (d + delay) if d > 0 else None}


def fit(cases: list[tuple[int, dict[str, Any], dict[str, float | None]]]) -> float:
    """``intake_s_per_request`` for bursts given as (requests, capsim serve's report without a front end,
    measured statistics): least squares on log(predicted / measured) of ``FITTED_STATS``."""
    from scipy.optimize import minimize_scalar

    terms = [(n, pred, meas) for n, pred, meas in cases if any(meas.get(k) for k in FITTED_STATS)]
    if not terms:
        raise CapsimError("serving front-end fit: no run released all its requests at once to fit it to")

    def loss(a: float) -> float:
        total = 0.0
        for n, pred, meas in terms:
            p = shifted(pred, n, a)
            total += sum(math.log(p[k] / meas[k]) ** 2 for k in FITTED_STATS if meas.get(k) and p[k])
        return total
    return float(minimize_scalar(loss, bounds=(0.0, BOUND_S), method="bounded", options={"xatol": 1e-6}).x)


def write(intake_s: float, fitted_to: str, path: Path) -> None:
    """Set the profile YAML's ``frontend`` section (the rest of the file as it was; atomic)."""
    import yaml

    from capsim.atomic import write_text
    from capsim.engines.frontend import FrontEnd

    text = path.read_text(encoding="utf-8")
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    data = yaml.safe_load(text)
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k != "frontend":
            out[k] = v
        if k == "scheduler":
            out["frontend"] = FrontEnd(intake_s, fitted_to).to_yaml()
    out.setdefault("frontend", FrontEnd(intake_s, fitted_to).to_yaml())
    write_text(path, header + yaml.safe_dump(out, sort_keys=False, width=110))
