"""Evaluate a scenario frame: one vectorised simulator call per configuration, the numbers of ``predict``.

The scenarios (rows of :func:`capsim.sweep.grid.expand`, or any frame with its
columns) are grouped by the columns that change the Shape, the hardware, the layout
or the engine profile (:data:`capsim.sweep.grid.CONFIG_COLUMNS`). Each configuration
is resolved once with :func:`capsim.predict.resolve`, then its batch, input and output
lengths go as whole arrays through the same functions :func:`capsim.predict.predict`
calls (``simulate_request``, the link latencies, pipelining, ``capacity.per_device``,
``utilisation``), in blocks of at most :data:`CHUNK_ROWS` rows to bound memory. A test
checks rows against ``predict`` to 1e-9. Not covered (``predict`` only): trace replay,
expert offload, ``--dp``, ``--compute-dtype``, ``--usd-per-hour`` and the capacity search. The cost
columns come from :mod:`capsim.cap.hourly` (see :func:`cost_columns`), not from ``predict``'s older cost.

A configuration that cannot run (a layout that does not divide the heads or the experts,
more devices than a system has, a weight format the device cannot compute in) gives rows
whose metrics are NaN and whose ``error`` column says why; it never stops the sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from capsim import capacity, collectives, pipeline
from capsim.cap.cost import usd_per_million_tokens
from capsim.cap.hourly import default_pricer
from capsim.errors import CapsimError
from capsim.predict import Query, resolve
from capsim.sim.metrics import utilisation
from capsim.sim.request import simulate_request
from capsim.sim.roofline import CATEGORIES
from capsim.sweep.grid import AUTO, CONFIG_COLUMNS, NUMERIC_COLUMNS

CHUNK_ROWS = 1 << 18  # rows per simulator call: about 0.5 GB of temporaries

# Output columns, in order. Text columns are categorical, layout counts nullable integers (missing where an
# error row could not resolve them), metrics float64 in SI units (NaN on error rows).
TEXT = ("model", "model_id", "hardware", "device", "precision", "kv_precision", "compute_dtype", "engine")
LAYOUT = ("devices", "nodes", "devices_total", "tp", "ep", "dp", "pp")
METRICS = (
    "ttft_s", "tpot_s", "request_latency_s", "prefill_tokens_per_s", "decode_tokens_per_s",
    "decode_tokens_per_s_per_user", "s_mbu", "s_mfu", "mbu", "mfu", "activated_experts_per_layer",
    "memory_per_device_bytes", "weights_per_device_bytes", "kv_cache_per_device_bytes", "memory_capacity_bytes",
)
BOTTLENECKS = ("bottleneck_prefill", "bottleneck_decode")


def cost_columns(r: dict[str, Any], q: Query, m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The cost columns of one configuration's rows (:mod:`capsim.cap.hourly`, basis ``auto``: the listed
    cloud price where there is one, else owned: capex over the lifetime plus energy, default assumptions):
    ``usd_per_h`` of the devices used (a part of a system pro rata, N nodes N times), and
    ``usd_per_million_output_tokens`` = USD/h / (batch x output_len / request latency x 3600) x 1e6, the rate
    ``capsim cap cost --model`` uses. NaN where the hardware has no price."""
    per_h = r.get("usd_per_h")
    per_h = np.nan if per_h is None else per_h
    tokens_per_s = np.asarray(q.batch, float) * np.asarray(q.output_len, float) / m["request_latency_s"]
    rows = len(tokens_per_s)
    return {"usd_per_h": np.full(rows, per_h),
            "usd_per_million_output_tokens": usd_per_million_tokens(per_h, tokens_per_s)}


COST_COLUMNS: tuple[str, ...] = ("usd_per_h", "usd_per_million_output_tokens")  # placed after METRICS


def _hourly_usd(db, hardware: str, devices: int, nodes: int) -> float | None:
    try:
        return default_pricer(db).price(hardware, devices, nodes).usd_per_h
    except CapsimError:
        return None


COLUMNS = (*TEXT[:4], *LAYOUT, *TEXT[4:], *NUMERIC_COLUMNS, *METRICS, "fits", *BOTTLENECKS, *COST_COLUMNS,
           "error")
DTYPES: dict[str, str] = {
    **{c: "category" for c in (*TEXT, *BOTTLENECKS, "error")}, **{c: "Int64" for c in LAYOUT},
    **{c: "int64" for c in NUMERIC_COLUMNS}, **{c: "float64" for c in (*METRICS, *COST_COLUMNS)}, "fits": "boolean",
}


@dataclass(frozen=True)
class Configuration:
    """One resolved configuration: ``r`` from :func:`capsim.predict.resolve`, or the error it raised."""

    key: tuple
    query: Query
    r: dict[str, Any] | None
    error: str | None
    labels: dict[str, Any]  # values of the TEXT and LAYOUT columns


def configure(key: tuple, db) -> Configuration:
    model, hardware, devices, nodes, prec, kv, engine, tp, ep, pp = key
    q = Query(model=model, hardware=hardware, devices=devices or None, nodes=nodes, engine=engine,
              precision=None if prec == "native" else prec, kv_precision=None if kv == "auto" else kv,
              tp=tp or None, ep=None if ep == AUTO else ep, pp=pp, check_memory=False)
    given = {"model": model, "hardware": hardware, "precision": prec, "kv_precision": kv, "engine": engine,
             "devices": devices or None, "nodes": nodes, "tp": tp or None, "ep": ep or None, "pp": pp}
    try:
        r = resolve(q, db)
        if ep == AUTO and r["target"].n_devices > 1:  # 'all': every device of a stage
            q = replace(q, ep=r["target"].n_devices)
            r = resolve(q, db)
    except CapsimError as err:
        return Configuration(key, q, None, str(err), given)
    sc = r["scenario"]
    r["usd_per_h"] = _hourly_usd(db, hardware, sc["devices_per_node"], sc["nodes"])
    labels = dict(given, model_id=sc["model"], device=sc["device"], devices=sc["devices_per_node"],
                  nodes=sc["nodes"], devices_total=sc["devices"], precision=sc["precision"],
                  kv_precision=sc["kv_precision"], compute_dtype=sc["compute_dtype"], engine=sc["engine"],
                  tp=sc["tp"], ep=sc["ep"], dp=sc["dp"], pp=sc["pp"])
    return Configuration(key, q, r, None, labels)


def _bottleneck(timing, rows: int) -> np.ndarray:
    """Index into CATEGORIES of each row's largest share of the step (predict's ``_phase``: first on ties)."""
    t = np.stack([np.broadcast_to(np.asarray(timing.by_category_s[c], float), (rows,)) for c in CATEGORIES])
    return np.argmax(t, axis=0)


def metrics(cfg: Configuration, batch: np.ndarray, input_len: np.ndarray, output_len: np.ndarray
            ) -> dict[str, np.ndarray]:
    """The METRICS (and fits, bottlenecks, cost columns) of one configuration over arrays of lengths,
    computed as :func:`capsim.predict.predict` computes them for one scenario."""
    r, rows = cfg.r, len(batch)
    assert r is not None
    target, s = r["target"], r["shape"]
    q = replace(cfg.query, batch=batch, input_len=input_len, output_len=output_len)
    mb = pipeline.microbatch(batch, q.pp)
    res = simulate_request(
        s, batch=mb, input_len=input_len, output_len=output_len, kv_bytes_per_element=r["kv_bytes"],
        peak_flop_per_s=r["peaks"], bandwidth_bytes_per_s=target.memory_bandwidth_bytes_per_s,
        ring_bandwidth_bytes_per_s=target.ring_bandwidth_bytes_per_s,
        alltoall_bandwidth_bytes_per_s=target.alltoall_bandwidth_bytes_per_s, profile=r["profile"],
        tp=r["tp"], ep=r["ep"], n=target.n_devices)
    res = collectives.with_link_latency(res, r, q)
    if q.pp > 1:
        res = collectives.pipelined(res, r, q, mb)
    mem = capacity.per_device(r, q, q.batch, q.input_len)
    u = utilisation(res.decode, res.decode_timing, bandwidth_bytes_per_s=target.memory_bandwidth_bytes_per_s,
                    peak_flop_per_s=r["peaks"])
    cap = float(target.memory_capacity_bytes)
    m = {
        "ttft_s": res.ttft_s, "tpot_s": res.tpot_s, "request_latency_s": res.request_s,
        "prefill_tokens_per_s": batch * input_len / res.ttft_s, "decode_tokens_per_s": batch / res.tpot_s,
        "decode_tokens_per_s_per_user": 1.0 / res.tpot_s,
        "s_mbu": u["s_mbu"], "s_mfu": u["s_mfu"], "mbu": u["mbu"], "mfu": u["mfu"],
        "activated_experts_per_layer": res.decode.activated_experts,
        "memory_per_device_bytes": mem.total, "weights_per_device_bytes": mem.weights,
        "kv_cache_per_device_bytes": mem.kv_cache, "memory_capacity_bytes": np.nan if np.isinf(cap) else cap,
    }
    m = {k: np.broadcast_to(np.asarray(v, float), (rows,)) for k, v in m.items()}
    m["fits"] = np.broadcast_to(mem.fits, (rows,))
    m["bottleneck_prefill"] = _bottleneck(res.prefill_timing, rows)
    m["bottleneck_decode"] = _bottleneck(res.decode_timing, rows)
    extra = cost_columns(r, q, m)
    if set(extra) != set(COST_COLUMNS):
        raise AssertionError(f"cost_columns returned {sorted(extra)}, COST_COLUMNS says {sorted(COST_COLUMNS)}")
    return dict(m, **extra)


class _Text:
    """A categorical column filled by codes; its categories are the values that occur, sorted (the same
    whatever the chunking, and what reading a CSV file back gives)."""

    def __init__(self, rows: int, categories: tuple[str, ...] = ()):
        self.codes = np.full(rows, -1, np.int32)
        self.index = {c: i for i, c in enumerate(categories)}

    def put(self, where, value) -> None:
        if value is not None:
            self.codes[where] = self.index.setdefault(str(value), len(self.index))

    def build(self) -> pd.Categorical:
        names = list(self.index)
        used = np.bincount(self.codes + 1, minlength=len(names) + 1)[1:] > 0  # only values that occur
        order = sorted((i for i in range(len(names)) if used[i]), key=names.__getitem__)
        remap = np.full(len(names) + 1, -1, np.int32)  # code -1 (missing) stays -1
        remap[np.asarray(order, dtype=np.int64)] = np.arange(len(order), dtype=np.int32)
        return pd.Categorical.from_codes(remap[self.codes], categories=[names[i] for i in order])


class _Masked:
    """A nullable Int64 or boolean column."""

    def __init__(self, rows: int, dtype):
        self.values, self.mask = np.zeros(rows, dtype), np.ones(rows, bool)

    def put(self, where, value) -> None:
        if value is not None:
            self.values[where] = value
            self.mask[where] = False

    def build(self):
        if self.values.dtype == bool:
            return pd.arrays.BooleanArray(self.values, self.mask)
        return pd.arrays.IntegerArray(self.values, self.mask)


def configurations(frame: pd.DataFrame) -> list[tuple[tuple, list]]:
    """[(key, [row blocks])]: the frame's rows grouped by CONFIG_COLUMNS, each block a slice (contiguous
    rows, as :func:`capsim.sweep.grid.expand` makes them) or an index array of at most CHUNK_ROWS rows."""
    rows = len(frame)
    if rows == 0:
        return []
    codes, values = [], []
    for c in CONFIG_COLUMNS:
        col = frame[c]
        if isinstance(col.dtype, pd.CategoricalDtype):
            k, u = col.cat.codes.to_numpy().astype(np.int64), col.cat.categories
        else:
            k, u = pd.factorize(col.to_numpy())
        if np.any(k < 0):
            raise CapsimError(f"column {c!r}: missing values")
        codes.append(k)
        values.append(u)
    combined, size = np.zeros(rows, np.int64), 1
    for k, u in zip(codes, values, strict=True):
        if size * max(len(u), 1) >= 1 << 62:
            combined, seen = pd.factorize(combined)
            size = len(seen)
        combined, size = combined * len(u) + k, size * max(len(u), 1)
    starts = np.flatnonzero(np.r_[True, combined[1:] != combined[:-1]])
    ends = np.r_[starts[1:], rows]
    out = []
    if len(np.unique(combined[starts])) == len(starts):  # every configuration is one run of rows
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            blocks = [slice(x, min(x + CHUNK_ROWS, b)) for x in range(a, b, CHUNK_ROWS)]
            out.append((_key(values, codes, a), blocks))
        return out
    _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(inverse))]
    for g, row in enumerate(first.tolist()):
        idx = order[bounds[g]:bounds[g + 1]]
        out.append((_key(values, codes, row), [idx[x:x + CHUNK_ROWS] for x in range(0, len(idx), CHUNK_ROWS)]))
    return out


def _key(values, codes, row: int) -> tuple:
    def py(v):
        return v.item() if hasattr(v, "item") else v

    return tuple(py(u[k[row]]) for u, k in zip(values, codes, strict=True))


def _check_frame(frame: pd.DataFrame) -> None:
    missing = [c for c in (*CONFIG_COLUMNS, *NUMERIC_COLUMNS) if c not in frame.columns]
    if missing:
        raise CapsimError(f"scenario frame: missing column(s) {', '.join(missing)}")
    for c in NUMERIC_COLUMNS:
        col = frame[c]
        if not pd.api.types.is_integer_dtype(col.dtype) or (len(col) and col.min() < 1):
            raise CapsimError(f"scenario frame: column {c!r}: expected integers >= 1")


def evaluate(frame: pd.DataFrame, db, *, progress: Callable[[int], None] | None = None,
             cache: dict | None = None) -> pd.DataFrame:
    """The result frame (:data:`COLUMNS`, row for row, same index) of a scenario frame. ``progress(rows)``
    is called after each block; ``cache`` (key -> Configuration) may be shared between calls."""
    _check_frame(frame)
    rows = len(frame)
    cache = {} if cache is None else cache
    text = {c: _Text(rows) for c in TEXT}
    text.update({c: _Text(rows, CATEGORIES) for c in BOTTLENECKS})
    text["error"] = _Text(rows)
    masked = {c: _Masked(rows, np.int64) for c in LAYOUT}
    masked["fits"] = _Masked(rows, bool)
    floats = {c: np.full(rows, np.nan) for c in (*METRICS, *COST_COLUMNS)}
    lengths = {c: frame[c].to_numpy(np.int64) for c in NUMERIC_COLUMNS}
    for key, blocks in configurations(frame):
        cfg = cache.get(key)
        if cfg is None:
            cfg = cache[key] = configure(key, db)
        for where in blocks:
            error = cfg.error
            if error is None:
                try:
                    m = metrics(cfg, *(lengths[c][where] for c in NUMERIC_COLUMNS))
                except CapsimError as err:
                    error = str(err)
            for c in (*TEXT, *LAYOUT):
                (text.get(c) or masked[c]).put(where, cfg.labels.get(c))
            if error is None:
                for c in floats:
                    floats[c][where] = m[c]
                masked["fits"].put(where, m["fits"])
                for c in BOTTLENECKS:
                    text[c].codes[where] = m[c]
            text["error"].put(where, error)
            if progress:
                progress(len(range(rows)[where]) if isinstance(where, slice) else len(where))
    cols: dict[str, Any] = {c: t.build() for c, t in text.items()}
    cols.update({c: m.build() for c, m in masked.items()})
    cols.update(floats)
    cols.update({c: lengths[c] for c in NUMERIC_COLUMNS})
    return pd.DataFrame({c: cols[c] for c in COLUMNS}, index=frame.index)


def combine(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Result frames of consecutive chunks as one frame (index 0..n-1), categories merged and sorted: the
    same frame whatever the chunking."""
    if not parts:
        raise ValueError("combine: no parts")
    if len(parts) == 1:
        return parts[0].reset_index(drop=True)
    cols = {}
    for c in parts[0].columns:
        if isinstance(parts[0][c].dtype, pd.CategoricalDtype):
            cols[c] = pd.api.types.union_categoricals([p[c] for p in parts], sort_categories=True)
        else:
            cols[c] = pd.concat([p[c] for p in parts], ignore_index=True)
    return pd.DataFrame(cols)


def iter_chunks(total: int, chunk_rows: int) -> Iterator[tuple[int, int]]:
    for a in range(0, total, chunk_rows):
        yield a, min(a + chunk_rows, total)
