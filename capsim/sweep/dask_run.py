"""A sweep on a Dask distributed cluster (``capsim sweep --scheduler ADDRESS``).

The scenarios are cut into chunks of consecutive rows and each chunk is evaluated on a
worker with :func:`capsim.sweep.evaluate.evaluate`, then the result frames are gathered
in order and merged by :func:`capsim.sweep.evaluate.combine`: the same frame as a local
run, since every row is computed on its own. From a :class:`~capsim.sweep.grid.Grid` a
task carries only the grid and its row range and expands those rows itself, so the
client never holds the scenario frame; a frame is scattered chunk by chunk. The hardware
database goes once to every worker. Workers need capsim installed (the same version);
models given as config.json paths must be readable at the same path on every worker.

dask is imported only here, only when a scheduler is named.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from capsim.errors import CapsimError
from capsim.sweep.evaluate import CHUNK_ROWS, combine, evaluate, iter_chunks
from capsim.sweep.grid import Grid, expand

CHUNKS_PER_WORKER = 4  # enough chunks to balance the load and show progress
_CACHES: dict[int, dict] = {}  # per worker process: configurations resolved, by id of the database object


def _cache(db) -> dict:
    if id(db) not in _CACHES:
        _CACHES.clear()  # one database at a time
        _CACHES[id(db)] = {}
    return _CACHES[id(db)]


def evaluate_rows(grid: Grid, start: int, stop: int, db) -> pd.DataFrame:
    """Task: expand and evaluate rows ``start:stop`` of a grid."""
    return evaluate(expand(grid, start, stop), db, cache=_cache(db))


def evaluate_frame(frame: pd.DataFrame, db) -> pd.DataFrame:
    """Task: evaluate a chunk of a scenario frame."""
    return evaluate(frame, db, cache=_cache(db))


def connect(address, timeout: float = 10.0):
    """A distributed.Client for a scheduler address (or a Cluster object); one-line errors."""
    try:
        from distributed import Client
    except ImportError:
        raise CapsimError("--scheduler: dask.distributed is not installed (pip install 'capsim[sweep]')") from None
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as err:
        raise CapsimError(f"--scheduler {address}: cannot reach the scheduler ({' '.join(str(err).split())})"
                          ) from None


def run_on_cluster(scenarios: Grid | pd.DataFrame, db, address, *, chunk_rows: int | None = None,
                   progress: Callable[[int], None] | None = None, timeout: float = 10.0) -> pd.DataFrame:
    """The result frame of ``scenarios`` (a Grid or a scenario frame) evaluated on the cluster at
    ``address``. ``chunk_rows``: rows per task (default: about CHUNKS_PER_WORKER tasks per worker, at most
    CHUNK_ROWS); ``progress(rows)`` is called as tasks finish."""
    from distributed import as_completed

    total = scenarios.size if isinstance(scenarios, Grid) else len(scenarios)
    with connect(address, timeout) as client:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        if chunk_rows is None:
            chunk_rows = min(CHUNK_ROWS, math.ceil(total / (CHUNKS_PER_WORKER * workers)))
        if chunk_rows < 1:
            raise CapsimError(f"--chunk-rows {chunk_rows}: expected a positive integer")
        ranges = list(iter_chunks(total, max(1, chunk_rows)))
        if not ranges:
            ranges = [(0, 0)]
        db_future = client.scatter(db, broadcast=True)
        if isinstance(scenarios, Grid):
            futures = [client.submit(evaluate_rows, scenarios, a, b, db_future, pure=False) for a, b in ranges]
        else:
            parts = client.scatter([scenarios.iloc[a:b] for a, b in ranges])
            futures = [client.submit(evaluate_frame, p, db_future, pure=False) for p in parts]
        rows = {f.key: b - a for f, (a, b) in zip(futures, ranges, strict=True)}
        for done in as_completed(futures):
            if done.status == "error":
                done.result()  # raises the task's exception here
            if progress:
                progress(rows[done.key])
        results = client.gather(futures)
    return combine(results)
