"""Evaluate a scenario frame: one vectorised request-pipeline call per configuration, the numbers of ``predict``.

The scenarios (rows of :func:`capsim.sweep.grid.expand`, or any frame with its columns) are grouped by
the columns that change the scenario (:data:`capsim.sweep.grid.CONFIG_COLUMNS`: model, hardware, layout,
engine, expert placement, trace). Each configuration is resolved once (:func:`capsim.scenario.resolve`);
its batch, input and output lengths go as whole arrays through what :func:`capsim.predict.predict` calls:
:func:`capsim.placement.residency` (offload), :func:`capsim.routing.replay` (a trace),
:func:`capsim.sim.request.simulate`, :func:`capsim.sim.metrics.request_metrics` and
:func:`capsim.capacity.per_device`, in blocks of at most :data:`CHUNK_ROWS` rows (fewer with a trace,
whose samples multiply the rows) to bound memory. Tests check rows against ``predict``. The cost columns
come from :mod:`capsim.cap.hourly`.

A configuration that cannot run (a layout that does not divide the heads or the experts, more devices
than a system has, a weight format the device cannot compute in) or a row whose expert placement does
not fit gives rows whose metrics are NaN and whose ``error`` column says why; it never stops the sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from capsim import capacity, placement, routing
from capsim.cap.cost import usd_per_million_tokens
from capsim.errors import CapsimError
from capsim.scenario import Query, Scenario, resolve
from capsim.sim.metrics import request_metrics
from capsim.sim.request import simulate
from capsim.sim.roofline import CATEGORIES
from capsim.sweep.frame import CHUNK_ROWS, Masked, Text, combine, configurations, iter_chunks
from capsim.sweep.grid import AUTO, AUTO_CACHE, AXES, CONFIG_COLUMNS, NONE, NUMERIC_COLUMNS

__all__ = ["CHUNK_ROWS", "COLUMNS", "DTYPES", "combine", "configure", "evaluate", "iter_chunks", "metrics"]

# Output columns, in order. Text columns are categorical, layout counts nullable integers (missing where an
# error row could not resolve them), metrics float64 in SI units (NaN on error rows).
TEXT = ("model", "model_id", "hardware", "device", "precision", "kv_precision", "compute_dtype", "engine",
        "offload", "expert_tier", "cache_policy", "trace")
LAYOUT = ("devices", "nodes", "devices_total", "tp", "ep", "dp", "pp", "expert_cache")
METRICS = (
    "ttft_s", "tpot_s", "request_latency_s", "prefill_tokens_per_s", "decode_tokens_per_s",
    "decode_tokens_per_s_per_user", "s_mbu", "s_mfu", "mbu", "mfu", "activated_experts_per_layer",
    "memory_per_device_bytes", "weights_per_device_bytes", "kv_cache_per_device_bytes", "memory_capacity_bytes",
    "output_tokens_per_s_total", "experts_resident_per_layer", "hit_rate_decode",
)
BOTTLENECKS = ("bottleneck_prefill", "bottleneck_decode")
COST_COLUMNS: tuple[str, ...] = ("usd_per_h", "usd_per_million_output_tokens")  # placed after METRICS
COLUMNS = (*TEXT[:4], *LAYOUT[:7], *TEXT[4:8], "offload", "expert_cache", "expert_tier", "cache_policy", "trace",
           *NUMERIC_COLUMNS, *METRICS, "fits", *BOTTLENECKS, *COST_COLUMNS, "error")
DTYPES: dict[str, str] = {
    **{c: "category" for c in (*TEXT, *BOTTLENECKS, "error")}, **{c: "Int64" for c in LAYOUT},
    **{c: "int64" for c in NUMERIC_COLUMNS}, **{c: "float64" for c in (*METRICS, *COST_COLUMNS)}, "fits": "boolean",
}
DEFAULTS = {a.column: a.default[0] for a in AXES if a.default}  # a frame may leave out the newer configuration columns


@dataclass(frozen=True)
class Configuration:
    """One resolved configuration: its scenario and price per hour, or the error it raised."""

    key: tuple
    query: Query
    sc: Scenario | None
    usd_per_h: float | None
    error: str | None
    labels: dict[str, Any]  # values of the TEXT and LAYOUT columns


def _routing(value: str) -> dict[str, Any]:
    """The Query fields of a ``traces`` axis value: 'real', 'uniform' or 'none' (uniform), a trace folder or a
    routing model file."""
    if value in ("real", "uniform"):
        return {"routing": value}
    if value == NONE:
        return {"routing": "uniform"}
    return {"routing": value} if str(value).endswith(".json") else {"trace": value}


def configure(key: tuple, db) -> Configuration:
    """Resolve one configuration (``key``: the CONFIG_COLUMNS values of its rows)."""
    k = dict(zip(CONFIG_COLUMNS, key, strict=True))
    prec, kv, ep, cache = k["precision"], k["kv_precision"], k["ep"], k["expert_cache"]
    q = Query(model=k["model"], hardware=k["hardware"], devices=k["devices"] or None, nodes=k["nodes"],
              engine=k["engine"], precision=None if prec == "native" else prec,
              kv_precision=None if kv == "auto" else kv, tp=k["tp"] or None, ep=None if ep == AUTO else ep,
              pp=k["pp"], dp=k["dp"] or None, offload=None if k["offload"] == NONE else k["offload"],
              expert_cache=None if cache == AUTO_CACHE else cache, expert_tier=k["expert_tier"],
              cache_policy=k["cache_policy"], check_memory=False, **_routing(k["trace"]))
    given = dict(k, devices=k["devices"] or None, tp=k["tp"] or None, ep=ep or None, dp=k["dp"] or None,
                 expert_cache=None if cache == AUTO_CACHE else cache)
    try:
        sc = resolve(q, db)
        if ep == AUTO and sc.target.n_devices > 1:  # 'all': every device of a stage
            q = replace(q, ep=sc.target.n_devices)
            sc = resolve(q, db)
    except CapsimError as err:
        return Configuration(key, q, None, None, str(err), given)
    d = sc.describe()
    labels = dict(given, model_id=d["model"], device=d["device"], devices=d["devices_per_node"], nodes=d["nodes"],
                  devices_total=d["devices"], precision=d["precision"], kv_precision=d["kv_precision"],
                  compute_dtype=d["compute_dtype"], engine=d["engine"], tp=d["tp"], ep=d["ep"], dp=d["dp"], pp=d["pp"])
    return Configuration(key, q, sc, sc.price.usd_per_h if sc.price is not None else None, None, labels)


def _bottleneck(timing, shape) -> np.ndarray:
    """Index into CATEGORIES of each row's largest share of the step (predict's: first on ties; sampled
    compositions averaged first)."""
    t = np.stack([np.broadcast_to(np.asarray(timing.by_category_s[c], float), shape) for c in CATEGORIES])
    if t.ndim > 2:
        t = t.mean(axis=-1)
    return np.argmax(t, axis=0)


def metrics(cfg: Configuration, batch: np.ndarray, input_len: np.ndarray, output_len: np.ndarray
            ) -> dict[str, np.ndarray]:
    """The METRICS (and fits, bottlenecks, cost columns, per-row errors) of one configuration over arrays of
    lengths, computed as :func:`capsim.predict.predict` computes them for one scenario."""
    sc, rows = cfg.sc, len(batch)
    assert sc is not None
    place, errors = None, [None] * rows
    if sc.offload is not None:
        place = placement.residency(sc, batch, input_len, output_len)
        errors = placement.problems(sc, place, batch, input_len, output_len)
    frac = place.expert_fraction if place is not None else 1.0
    res = simulate(sc, batch, input_len, output_len, routing.replay(sc, batch, input_len, mean=True), place)
    m = request_metrics(sc, res, batch, input_len, output_len)
    mem = capacity.per_device(sc, batch, input_len, output_len, frac)
    cap = float(sc.target.memory_capacity_bytes)
    e = sc.shape.num_experts
    out = {k: m[k] for k in METRICS[:11] + ("output_tokens_per_s_total",)}
    out.update(memory_per_device_bytes=mem.total, weights_per_device_bytes=mem.weights,
               kv_cache_per_device_bytes=mem.kv_cache, memory_capacity_bytes=np.nan if np.isinf(cap) else cap,
               experts_resident_per_layer=place.experts_resident if place is not None else e,
               hit_rate_decode=place.hit_rate_decode if place is not None else 1.0)
    out = {k: np.broadcast_to(np.asarray(v, float), (rows,)) for k, v in out.items()}
    out["fits"] = np.broadcast_to(mem.fits, (rows,))
    out["bottleneck_prefill"] = _bottleneck(res.prefill_timing, np.shape(res.ttft_s))
    out["bottleneck_decode"] = _bottleneck(res.decode_timing, np.shape(res.tpot_s))
    per_h = np.nan if cfg.usd_per_h is None else cfg.usd_per_h
    out["usd_per_h"] = np.full(rows, per_h)
    out["usd_per_million_output_tokens"] = usd_per_million_tokens(per_h, out["output_tokens_per_s_total"])
    out["error"] = errors
    return out


REQUIRED = ("model", "hardware", "devices", "nodes", "precision", "kv_precision", "engine", "tp", "ep", "pp",
            *NUMERIC_COLUMNS)  # the other configuration columns take their axis's default when absent


def _check_frame(frame: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise CapsimError(f"scenario frame: missing column(s) {', '.join(missing)}")
    for c in NUMERIC_COLUMNS:
        col = frame[c]
        if not pd.api.types.is_integer_dtype(col.dtype) or (len(col) and col.min() < 1):
            raise CapsimError(f"scenario frame: column {c!r}: expected integers >= 1")
    absent = [c for c in CONFIG_COLUMNS if c not in frame.columns]
    return frame.assign(**{c: DEFAULTS[c] for c in absent}) if absent else frame


def _blocks(cfg: Configuration, blocks: list) -> list:
    """A traced configuration's blocks cut so that the sampled compositions' tables stay within CHUNK_ROWS."""
    if cfg.sc is None or routing.trace_path(cfg.sc) is None:
        return blocks
    size = max(1, CHUNK_ROWS // max(1, cfg.sc.query.trace_samples))
    out = []
    for where in blocks:
        idx = np.arange(where.start, where.stop) if isinstance(where, slice) else where
        out += [idx[x:x + size] for x in range(0, len(idx), size)]
    return out


def evaluate(frame: pd.DataFrame, db, *, progress: Callable[[int], None] | None = None,
             cache: dict | None = None) -> pd.DataFrame:
    """The result frame (:data:`COLUMNS`, row for row, same index) of a scenario frame. ``progress(rows)``
    is called after each block; ``cache`` (key -> Configuration) may be shared between calls."""
    frame = _check_frame(frame)
    rows = len(frame)
    cache = {} if cache is None else cache
    text = {c: Text(rows) for c in TEXT}
    text.update({c: Text(rows, CATEGORIES) for c in BOTTLENECKS})
    text["error"] = Text(rows)
    masked = {c: Masked(rows, np.int64) for c in LAYOUT}
    masked["fits"] = Masked(rows, bool)
    floats = {c: np.full(rows, np.nan) for c in (*METRICS, *COST_COLUMNS)}
    lengths = {c: frame[c].to_numpy(np.int64) for c in NUMERIC_COLUMNS}
    for key, blocks in configurations(frame):
        cfg = cache.get(key)
        if cfg is None:
            cfg = cache[key] = configure(key, db)
        for where in _blocks(cfg, blocks):
            n = len(range(rows)[where]) if isinstance(where, slice) else len(where)
            row_errors: list = [cfg.error] * n
            if cfg.error is None:
                try:
                    m = metrics(cfg, *(lengths[c][where] for c in NUMERIC_COLUMNS))
                    row_errors = m["error"]
                except CapsimError as err:
                    m, row_errors = None, [str(err)] * n
            for c in (*TEXT, *LAYOUT):
                (text.get(c) or masked[c]).put(where, cfg.labels.get(c))
            idx = np.arange(rows)[where]
            ok = np.fromiter((e is None for e in row_errors), bool, count=n)
            if cfg.error is None and m is not None:
                good = idx[ok]
                for c in floats:
                    floats[c][good] = m[c][ok]
                masked["fits"].put(good, m["fits"][ok])
                for c in BOTTLENECKS:
                    text[c].codes[good] = m[c][ok]
            for j in np.flatnonzero(~ok).tolist():
                text["error"].put(int(idx[j]), row_errors[j])
            if progress:
                progress(n)
    cols: dict[str, Any] = {c: t.build() for c, t in text.items()}
    cols.update({c: m.build() for c, m in masked.items()})
    cols.update(floats)
    cols.update({c: lengths[c] for c in NUMERIC_COLUMNS})
    return pd.DataFrame({c: cols[c] for c in COLUMNS}, index=frame.index)
