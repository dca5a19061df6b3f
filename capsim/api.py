"""capsim's public Python API: a thin, documented facade over the package, for notebooks and scripts.

Keyword arguments, plain return values (dicts, pandas DataFrames, numpy arrays) and SI units (s, bytes,
FLOP/s, bytes/s, W, USD) throughout. Nothing here imports torch or transformers: predictions, traces and
validation are numpy. Everything else in ``capsim`` is internal and may change. ``from capsim import api``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capsim import data, engines

__all__ = [
    # data
    "hardware_db",
    # prediction and the CAP analysis
    "predict", "sweep", "cost", "accuracy",
    # expert-activation traces
    "open_trace", "synthetic_trace", "trace_summary", "expert_popularity", "activated_experts_curve",
    "expected_activated_experts", "load_imbalance", "cross_layer_affinity",
    # validation
    "validate_cpu", "validate_published", "error_summary",
    # provisioning
    "provision",
]

VALIDATION_CONFIG = data.path("validation") / "config.yaml"
TRACE_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


# ----------------------------------------------------------------------------- data

def hardware_db(path: str | Path | None = None):
    """The hardware database: the built-in ``hardware_db/`` merged with the folder ``path`` (or the folder in
    ``$CAPSIM_HARDWARE_DB``), later ids replacing earlier ones, as ``capsim --hardware-db PATH`` does.

    >>> db = hardware_db()
    >>> db.get("h100").kind
    'accelerator'
    """
    from capsim.hardware import db

    return db.load(path)


def _db(db):
    return db if db is not None and not isinstance(db, (str, Path)) else hardware_db(db)


# ----------------------------------------------------------------------------- prediction, CAP

def predict(model: str, hardware: str, *, hardware_db=None, **options: Any) -> dict[str, Any]:
    """Predict one scenario: the dict of ``capsim predict --json`` (SI units). ``options`` are the fields of
    :class:`capsim.predict.Query` (``devices``, ``batch``, ``input_len``, ``output_len``, ``precision``, ``engine``,
    ``tp``, ``ep``, ``pp``, ``nodes``, ``routing`` ("real" by default, "uniform", or a trace / routing model path),
    ``trace``: a trace folder replayed, ``offload``,
    ``check_memory`` ...). ``hardware_db``: a database from :func:`hardware_db` or a folder to merge.

    >>> rep = predict("mixtral", "dgx-h100", devices=2, batch=32)
    >>> round(rep["tpot_s"] * 1e3, 1), rep["bottleneck"]["decode"]  # ms per output token
    (30.0, 'memory')
    """
    from capsim.predict import Query
    from capsim.predict import predict as _predict

    return _predict(Query(model=model, hardware=hardware, **options), _db(hardware_db))


def serve(model: str, hardware: str, *, num_requests: int, request_rate: float = float("inf"),
          concurrency: int | None = None, input_len: int | None = None, output_len: int | None = None,
          dataset: str | None = None, seed: int = 0, slo_ttft_s: float | None = None, slo_tpot_s: float | None = None,
          hardware_db=None, **options: Any) -> dict[str, Any]:
    """Serve ``num_requests`` requests under load (``capsim serve --json``): Poisson arrivals at ``request_rate``
    requests/s (inf: all at once) or ``concurrency`` in flight, fixed lengths or a ``dataset`` file; ``options``
    are :class:`capsim.predict.Query` fields (``devices``, ``tp``, ``ep``, ``engine``, ``precision``, ``routing``).

    >>> rep = serve("mixtral", "dgx-h100", devices=8, num_requests=50, request_rate=5, input_len=512, output_len=64)
    >>> rep["ttft_s"]["p99"] > rep["ttft_s"]["p50"] > 0
    True
    """
    from capsim.predict import Query
    from capsim.scenario import resolve
    from capsim.serve import workload
    from capsim.serve.run import serve as _serve

    w = workload.build(num_requests, request_rate=request_rate, concurrency=concurrency, input_len=input_len,
                       output_len=output_len, dataset=dataset, seed=seed)
    q = Query(model=model, hardware=hardware, batch=1, input_len=int(w.input_len.max()),
              output_len=int(w.output_len.max()), check_memory=False, **options)
    sc = resolve(q, _db(hardware_db))
    return dict(_serve(sc, w, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s), scenario=sc.describe())


def sweep(grid: Mapping[str, Any], *, hardware_db=None) -> pd.DataFrame:
    """Every combination of the grid's axes, evaluated vectorised: one row per scenario, as ``capsim sweep``.
    ``grid`` has the keys of a grid YAML file (``models`` and ``hardware`` required; ``devices``, ``nodes``,
    ``precisions``, ``kv_precisions``, ``engines``, ``tp``, ``ep``, ``pp``, ``batch``, ``input_len``,
    ``output_len``), each a list or a range string such as ``"1..256:x2"``. Rows that cannot run carry
    an ``error`` and empty metrics.

    >>> df = sweep({"models": ["mixtral"], "hardware": ["h100"], "batch": "1..8:x2"})
    >>> list(df["batch"])
    [1, 2, 4, 8]
    """
    from capsim.sweep import grid as G
    from capsim.sweep.run import run_sweep

    db = _db(hardware_db)
    g = G.build(dict(grid), source="api.sweep grid")
    G.check_names(g, db)
    return run_sweep(g, db)


def cost(hardware: str, tokens_per_s: float, *, devices: int | None = None, cloud: bool = False,
         prices: Mapping[str, float] | None = None, capex_from: str = "auto", hardware_db=None,
         **assumptions: float) -> dict[str, Any]:
    """Capex (USD), $/h, $/1M output tokens and J/output token of ``hardware`` making ``tokens_per_s`` output
    tokens/s, as ``capsim cap cost --json``. ``assumptions`` override the sourced defaults (SI): ``lifetime_s``,
    ``utilisation``, ``pue``, ``usd_per_kwh``, ``idle_power_fraction``, ``dram_usd_per_byte``,
    ``ssd_usd_per_byte``; ``prices`` sets unit prices of parts (name or item id -> USD).

    >>> rep = cost("dgx-h100", 1000.0, cloud=True)
    >>> rep["usd_per_million_output_tokens"] > 0
    True
    """
    from capsim.cap import assumptions as cap_assumptions
    from capsim.cap.report import cost_report

    db = _db(hardware_db)
    a = cap_assumptions.load(db).with_overrides(**assumptions)
    return cost_report(db, hardware, a, tokens_per_s, devices=devices, cloud=cloud, prices=dict(prices or {}),
                       capex_from=capex_from)


def accuracy(model: str, benchmark: str, precision: str | None = None) -> dict[str, Any]:
    """The published score (``value``, a fraction: 0.706 for 70.6%) of ``model`` on ``benchmark`` at
    ``precision`` (default: the checkpoint's), with its source; ``value`` None and a ``reason`` when no
    score is published. Never made up (``capsim/catalogue/accuracy.yaml``)."""
    from capsim.cap import accuracy as acc

    return dataclasses.asdict(acc.score(model, benchmark, precision))


# ----------------------------------------------------------------------------- traces

def open_trace(path: str | Path, verify: bool = False):
    """Open a trace folder (memory-mapped; ``.expert_ids`` is (tokens, moe_layers, top_k), ``.meta`` a dict).
    ``verify`` checks the content hash."""
    from capsim.traces.format import open_trace as _open

    return _open(path, verify=verify)


def _trace(trace):
    """A Trace from a path, a Trace, or a dict of arrays (at least ``expert_ids``)."""
    from capsim.traces.arrays import from_arrays

    if isinstance(trace, (str, Path)):
        return open_trace(trace)
    return from_arrays(trace) if isinstance(trace, Mapping) else trace


def synthetic_trace(kind: str = "uniform", *, num_experts: int, top_k: int, moe_layers: int,
                    out: str | Path | None = None, **options: Any):
    """A synthetic routing trace (``kind`` uniform, zipf or fitted), labelled ``synthetic`` in its meta.
    ``options``: ``sequences``, ``prompt_len``, ``decode_len``, ``seed``, ``model_id``, ``zipf_s``, ``fit_batch``,
    ``fit_activated`` (:mod:`capsim.traces.synthetic`). Written to ``out`` (atomically) if given, else in memory."""
    from capsim.traces.arrays import from_arrays
    from capsim.traces.synthetic import synthetic_trace as _synth

    arrays, meta = _synth(kind, num_experts=num_experts, top_k=top_k, moe_layers=moe_layers, **options)
    if out is not None:
        from capsim.traces.format import write_trace

        return open_trace(write_trace(out, arrays, meta))
    t = from_arrays(arrays, num_experts, top_k)
    t.meta.update(meta)
    return t


def trace_summary(trace, *, batch_sizes: Sequence[int] = TRACE_BATCH_SIZES, samples: int = 200, seed: int = 0,
                  ep_sizes: Sequence[int] | None = None) -> dict[str, Any]:
    """Everything ``capsim trace stats --json`` reports (popularity, load imbalance, activated experts vs
    batch size, cross-layer affinity) as one JSON-ready dict. ``trace``, here and below: a trace folder, an
    open trace, or a dict of arrays (at least ``expert_ids`` (tokens, moe_layers, top_k))."""
    from capsim.traces import stats

    return stats.summary(_trace(trace), batch_sizes, samples, seed, ep_sizes)


def expert_popularity(trace, *, phase: str = "all", share: bool = False) -> np.ndarray:
    """Tokens routed to each expert, (moe_layers, num_experts) int64 (a token counts once per top-k slot);
    ``phase`` all, prefill or decode; ``share=True`` divides by the layer's total (rows sum to 1)."""
    from capsim.traces import popularity

    pop = popularity.expert_popularity(_trace(trace))
    return pop["share" if share else "counts"][phase]


def activated_experts_curve(trace, *, batch_sizes: Sequence[int] = TRACE_BATCH_SIZES, phase: str = "decode",
                            samples: int = 200, seed: int = 0) -> pd.DataFrame:
    """Distinct experts activated per layer vs batch size, measured on ``samples`` random batch compositions.
    One row per batch size B (sizes above the sequences available are dropped): ``tokens`` (mean tokens per
    batch: B for decode), ``mean``, ``p10``, ``p50``, ``p90``, ``std`` (each averaged over layers), ``uniform``
    (E (1 - (1 - k/E)^T), uniform independent routing) and ``layer_<l>`` (mean per layer)."""
    from capsim.traces import activated

    c = activated.activated_experts_curve(_trace(trace), batch_sizes, phase, samples, seed)
    cols = {"batch": c["batch_sizes"], **{k: c[k] for k in ("tokens", "mean", "p10", "p50", "p90", "std", "uniform")}}
    cols |= {f"layer_{i}": c["per_layer_mean"][:, i] for i in range(c["per_layer_mean"].shape[1])}
    return pd.DataFrame(cols)


def expected_activated_experts(num_experts, top_k, tokens) -> np.ndarray:
    """E (1 - (1 - k/E)^T): expected distinct experts per layer for T tokens under uniform routing
    (what capsim assumes without a trace). Broadcasts over arrays.

    >>> float(expected_activated_experts(16, 2, 16))  # doctest: +ELLIPSIS
    14.1...
    """
    from capsim.sim.experts import expected_activated

    return np.asarray(expected_activated(num_experts, top_k, tokens))


def load_imbalance(trace_or_counts, *, ep_sizes: Sequence[int] = (), phase: str = "all") -> pd.DataFrame:
    """Load imbalance per MoE layer: ``experts`` = max / mean tokens per expert, and per ``ep`` in
    ``ep_sizes`` the column ``ep<n>`` = max / mean tokens per rank (expert e on rank e // (E / ep));
    1 is balanced. Input: a trace (path, Trace, arrays) or tokens per expert (moe_layers, num_experts)."""
    from capsim.traces import popularity

    x = trace_or_counts
    counts = x if isinstance(x, np.ndarray) else expert_popularity(x, phase=phase)
    res = popularity.load_imbalance(counts, ep_sizes)
    cols = {"experts": res["experts"]["per_layer"], **{f"ep{ep}": v["per_layer"] for ep, v in res["ep"].items()}}
    return pd.DataFrame(cols, index=pd.RangeIndex(len(counts), name="layer"))


def cross_layer_affinity(trace) -> dict[str, Any]:
    """How much layer l's routing predicts layer l+1's: ``mi_bits`` (mutual information), ``nmi``,
    ``top_lift``, ``mi_noise_bits`` (the estimator's floor), arrays over layer pairs, plus their means;
    ``joint`` (L-1, E, E) joint counts of (expert at l, expert at l+1)."""
    from capsim.traces import affinity

    t = _trace(trace)
    joint = affinity.affinity_counts(t)
    return affinity.cross_layer_affinity(t, joint) | {"joint": joint}


# ----------------------------------------------------------------------------- validation

def _config(config: str | Path | None) -> tuple[dict, Path, Path]:
    """The validation config (validation/config.yaml by default), its path, and the folder its paths start from."""
    import yaml

    path = Path(config) if config is not None else VALIDATION_CONFIG
    return yaml.safe_load(path.read_text()), path, path.resolve().parent.parent


def validate_cpu(config: str | Path | None = None) -> pd.DataFrame:
    """Predicted vs measured step time of every committed CPU run case, as ``capsim validate`` (no refit).
    One row per case: ``case``, ``shape`` (the measured model shape), ``phase``, ``batch``, ``length``
    (prompt tokens or context), ``subset`` ("fit" when the engine profile was fitted to it, else
    "held-out"), ``predicted_s``, ``measured_s``, ``measured_p10_s``, ``measured_p90_s``, ``error_pct``
    (100 (predicted - measured) / measured). ``attrs``: ``engine``, ``hardware``, ``fitted_to``.
    """
    from capsim import engines
    from capsim.hardware.target import resolve_target
    from capsim.validation import report
    from capsim.validation.cases import load_cases, predict_case
    from capsim.validation.fit import split

    cfg, _, root = _config(config)
    cpu = cfg["cpu"]
    target = resolve_target(hardware_db(root / cfg["hardware_db"]), cpu["hardware"])
    cases = load_cases(root / cpu["runs"])
    _, held = split(cases, cpu["fit"])
    prof = engines.load(cpu["engine"])  # as committed: tests/test_validation.py checks it was fitted on `fit` only
    predicted = [predict_case(c, target, prof, cpu["dtype"]) for c in cases]
    df = pd.DataFrame(report.rows(cases, predicted, {c.id for c in held}))
    df.insert(1, "shape", [c.run for c in cases])
    df.attrs.update(engine=prof.id, hardware=cpu["hardware"], fitted_to=prof.fitted_to)
    return df


def validate_published(config: str | Path | None = None) -> pd.DataFrame:
    """Predicted vs published figure of every supported row of the published results table, as
    ``capsim validate --published`` (no refit). One row per published row: ``row``, ``engine``, ``model``, ``hardware``, ``metric``, ``unit``,
    ``subset`` (fit / held-out), ``kind`` (offload / multi-device / single-device), ``predicted`` and
    ``published`` (in ``unit``), ``error_pct``, and
    ``dimension`` (rate or time) with ``predicted_si`` / ``published_si`` (tokens/s or s).
    ``attrs["unsupported"]``: the rows capsim cannot express yet, each with its reason.
    """
    from capsim.validation.published import UNITS
    from capsim.validation.published_run import validate_published as _validate

    cfg, path, root = _config(config)
    res = _validate(hardware_db(), cfg, root, path, False)
    df = pd.DataFrame(res["rows"])
    df["dimension"] = [UNITS[u][0] for u in df["unit"]]
    factor = np.array([UNITS[u][1] for u in df["unit"]])
    df["predicted_si"], df["published_si"] = df["predicted"] * factor, df["published"] * factor
    df.attrs.update(unsupported=res["unsupported"], assumptions=res["assumptions"])
    return df


def error_summary(frame: pd.DataFrame, by: Sequence[str] = ("subset",), total: bool = True) -> pd.DataFrame:
    """Median and max absolute error (%) of a validation frame per group of ``by`` columns: columns
    ``cases``, ``median_abs_pct``, ``max_abs_pct``; with ``total`` a last row "all" over every case.
    ``error_summary(validate_cpu(), by=("subset", "phase"))`` gives ``capsim validate``'s table."""
    err = frame.assign(abs_err=frame["error_pct"].abs())
    agg = {"cases": ("abs_err", "size"), "median_abs_pct": ("abs_err", "median"), "max_abs_pct": ("abs_err", "max")}
    out = err.groupby(list(by), observed=True, sort=True).agg(**agg)
    if total:
        a = err["abs_err"]
        out.loc[("all",) * len(by) if len(by) > 1 else "all", :] = [len(a), a.median(), a.max()]
    return out.astype({"cases": int})


# ----------------------------------------------------------------------------- provisioning

def provision(model: str, *, users: int | None = None, tokens_per_s: float | None = None, ttft_s: float | None = None,
              tpot_s: float | None = None, min_accuracy: float | None = None, benchmark: str | None = None,
              hardware: Sequence[str] | None = None, precisions: Sequence[str | None] = (None,),
              offloads: Sequence[str] = ("none", "cpu"), input_len: int = 1024, output_len: int = 256,
              engine: str = engines.DEFAULT_ENGINE, routing: str = "real", max_nodes: int = 4, max_batch: int = 4096,
              ttft_mode: str = "arrival",
              cost_basis: str = "auto", usd_per_h: Mapping[str, float] | None = None,
              prices: Mapping[str, float] | None = None, hardware_db=None) -> pd.DataFrame:
    """``capsim provision``: every candidate (system or device, device count, nodes, TP/EP, weight format, expert
    placement; the best split per system, count, nodes and format) with its operating point, capacity, USD/h
    and binding constraint; ``status`` is "qualifies", "qualifies, unpriced" or "does not qualify" and ``rank``
    orders them (cheapest qualifying first, then the closest). ``hardware`` defaults to every system;
    ``usd_per_h`` overrides a hardware's price per hour (one whole system, or one device).

    >>> f = provision("mixtral", users=64, tpot_s=0.05, hardware=["dgx-h100"], max_nodes=1)
    >>> f.iloc[0]["status"], int(f.iloc[0]["batch"]) >= 64
    ('qualifies', True)
    """
    from capsim.cap import assumptions
    from capsim.cap.hourly import Pricer
    from capsim.provision.candidates import enumerate_layouts, system_ids
    from capsim.provision.evaluate import Workload
    from capsim.provision.requirements import Requirements
    from capsim.provision.search import rows, search

    db = _db(hardware_db)
    req = Requirements(tokens_per_s, users, ttft_s, tpot_s, min_accuracy, benchmark, ttft_mode)
    pricer = Pricer(db, assumptions.load(db), cost_basis, dict(prices or {}), dict(usd_per_h or {}))
    layouts = enumerate_layouts(db, list(hardware or system_ids(db)), list(precisions), max_nodes, list(offloads))
    res = search(layouts, Workload(model, input_len, output_len, engine, routing), req, db, pricer, max_batch)
    return pd.DataFrame(rows(res))
