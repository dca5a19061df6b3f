"""The load axis of a sweep (``capsim sweep ... --request-rate R1,R2,...``): every configuration of the grid served
under Poisson load at each rate with ``capsim serve`` (:mod:`capsim.serve`), one row per configuration, prompt
and output length, and rate, with the latency percentiles and throughputs the serving benchmark reports.

The grid's ``batch`` axis does not apply (under load the engine's scheduler sets the batch); the configurations
are resolved as the static sweep resolves them (:func:`capsim.sweep.evaluate.configure`), so a layout that cannot
run, or one serve does not model yet (offload, data-parallel groups, pipeline stages), gives a row with its
``error``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from capsim.errors import CapsimError
from capsim.sweep.evaluate import configure
from capsim.sweep.frame import configurations
from capsim.sweep.grid import Grid, expand

LABELS = ("model", "hardware", "devices", "nodes", "tp", "ep", "dp", "pp", "precision", "engine")
STATS = ("ttft_s", "tpot_s", "itl_s", "e2e_s")
COLUMNS = (*LABELS, "input_len", "output_len", "request_rate_per_s",
           *(f"{s[:-2]}_{p}_s" for s in STATS for p in ("p50", "p99")), "ttft_mean_s", "tpot_mean_s",
           "output_tokens_per_s", "request_throughput_per_s", "batch_size_mean", "preemptions", "usd_per_h", "error")


def load_sweep(grid: Grid, db, rates: Sequence[float], *, num_requests: int, seed: int = 0,
               progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    from capsim.serve import workload
    from capsim.serve.run import serve

    frame = expand(grid)
    rows: list[dict[str, Any]] = []
    for key, blocks in configurations(frame):
        cfg = configure(key, db)
        idx = np.concatenate([np.arange(len(frame))[b] for b in blocks])
        pairs = sorted({(int(i), int(o)) for i, o in zip(frame["input_len"].to_numpy()[idx],
                                                          frame["output_len"].to_numpy()[idx], strict=True)})
        for i, o in pairs:
            for rate in rates:
                row: dict[str, Any] = {c: cfg.labels.get(c) for c in LABELS}
                row.update(input_len=i, output_len=o, request_rate_per_s=float(rate), usd_per_h=cfg.usd_per_h)
                try:
                    if cfg.error is not None:
                        raise CapsimError(cfg.error)
                    rep = serve(cfg.sc, workload.build(num_requests, request_rate=float(rate), input_len=i,
                                                       output_len=o, seed=seed))
                except CapsimError as err:
                    row["error"] = str(err)
                else:
                    for s in STATS:
                        row[f"{s[:-2]}_p50_s"], row[f"{s[:-2]}_p99_s"] = rep[s]["p50"], rep[s]["p99"]
                    row.update(ttft_mean_s=rep["ttft_s"]["mean"], tpot_mean_s=rep["tpot_s"]["mean"],
                               output_tokens_per_s=rep["output_tokens_per_s"],
                               request_throughput_per_s=rep["request_throughput_per_s"],
                               batch_size_mean=rep["batch_size"]["mean"], preemptions=rep["preemptions"], error=None)
                rows.append(row)
                if progress is not None:
                    progress(1)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def size(grid: Grid, rates: Sequence[float]) -> int:
    """Serving runs a load sweep makes: configurations x prompt lengths x output lengths x rates."""
    return grid.configurations * len(grid.axes["input_len"]) * len(grid.axes["output_len"]) * len(rates)
