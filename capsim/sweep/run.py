"""Run a sweep (locally or on a Dask cluster) and summarise its result frame."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from capsim.sweep.evaluate import combine, evaluate
from capsim.sweep.grid import Grid, expand

BEST_BY = "decode_tokens_per_s"
CONFIG_LABELS = ("model", "hardware", "devices", "nodes", "precision", "kv_precision", "engine", "tp", "ep", "pp")


def run_sweep(grid: Grid, db, *, scheduler: Any = None, chunk_rows: int | None = None,
              progress: Callable[[int], None] | None = None, timeout: float = 10.0) -> pd.DataFrame:
    """The result frame of every scenario of ``grid``: evaluated here, or on the Dask scheduler at
    ``scheduler`` (an address, or a distributed Cluster / Client-compatible object)."""
    if scheduler is not None:
        from capsim.sweep.dask_run import run_on_cluster

        return run_on_cluster(grid, db, scheduler, chunk_rows=chunk_rows, progress=progress, timeout=timeout)
    return combine([evaluate(expand(grid), db, progress=progress)])


def summary(frame: pd.DataFrame, top: int = 10) -> dict[str, Any]:
    """Counts, the distinct errors, and per configuration the scenario with the highest decode
    tokens/s among those without error that fit (at most ``top`` configurations, best first)."""
    ok = frame["error"].isna().to_numpy()
    fits = frame["fits"].fillna(False).to_numpy(bool)
    good = frame[ok & fits]
    best = pd.DataFrame()
    configs = 0
    if len(good):
        keys = [c for c in CONFIG_LABELS if c in good.columns]
        grouped = good.groupby(keys, observed=True, dropna=False, sort=False)[BEST_BY]
        configs = grouped.ngroups
        best = good.loc[grouped.idxmax().to_numpy()].sort_values(BEST_BY, ascending=False, kind="stable")
    errors = frame.loc[~ok, "error"].value_counts()
    return {
        "scenarios": len(frame), "ok": int(ok.sum()), "errors": int((~ok).sum()),
        "does_not_fit": int((ok & ~fits).sum()), "configurations_that_fit": configs,
        "error_messages": {str(k): int(v) for k, v in errors.items() if v},
        "best": best.head(top),
    }


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts (NaN / NA -> None, numpy scalars -> Python)."""
    out = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
                clean[k] = None
            elif isinstance(v, np.generic):
                clean[k] = v.item()
            else:
                clean[k] = v
        out.append(clean)
    return out
