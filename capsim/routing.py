"""Routing a step sees: a token-level trace replayed (:mod:`capsim.traces.replay`): ``--trace``, or the trace
of the scenario's routing choice (:mod:`capsim.traces.sources`: a real trace, or one drawn from a fitted model
or the prior); uniform (the expected distinct experts of independent top-k choices) when asked for.

:func:`replay` opens the scenario's trace once (verified by its content hash, cached per process), checks it
fits the model, and composes batches of any size from it: for arrays of batches and prompt lengths at once it
returns, per phase, the activated experts per layer, the busiest EP rank's experts and its load, each
(rows, samples): the simulator prices every sampled composition and the report takes means and
percentiles. A batch size's samples do not depend on which other sizes are asked for, so a sweep over
batch sizes and a single prediction agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from capsim.errors import CapsimError

if TYPE_CHECKING:
    from capsim.scenario import Scenario


@dataclass(frozen=True)
class Routing:
    """Measured routing per phase: dicts of ``activated``, ``rank_activated``, ``rank_load`` arrays of shape
    (rows, samples) (:func:`capsim.sim.ops.work_costs`'s routing arguments)."""

    prefill: dict[str, np.ndarray]
    decode: dict[str, np.ndarray]
    description: dict[str, object]  # what the report's scenario says about it
    notes: list[str] = field(default_factory=list)


# Compositions behind a mean (sweep, provision): the mean of n compositions has a standard error of the spread's
# standard deviation / sqrt(n); at 32, about 1.3% of the activated experts for DeepSeek-V2-Lite's trace at batch 8
# (p10-p90 28.2-34.1, i.e. sd ~2.3, over a mean of 31.2).
MEAN_SAMPLES = 32
# Replays kept per process: provision prices the same model's layouts on many systems with the same batch grid, and
# a GPU profile fit prices the corpus's 114 published rows hundreds of times (each row's replay is the same): 64
# entries were evicted on every pass (160 ms a row instead of 3.5 ms); an entry is a few kB of (rows, samples) arrays
_REPLAYED: dict[tuple, tuple] = {}
_REPLAYED_SIZE = 1024
_OPEN: dict[str, tuple[str, object]] = {}  # path -> (file stamp, the trace opened): its memory maps stay mapped


def _opened(path: str):
    """The trace at ``path``, verified; the same open trace while its files are unchanged (a fresh memory map
    would fault its pages in again on every prediction)."""
    from capsim.traces.format import file_stamp, open_trace

    try:
        stamp = file_stamp(path)
    except (OSError, KeyError, ValueError):
        stamp = None
    held = _OPEN.get(path)
    if stamp is not None and held is not None and held[0] == stamp:
        return held[1]
    try:
        trace = open_trace(path, verify=True)
    except CapsimError as err:
        raise CapsimError(f"--trace {err}") from None
    if stamp is not None:
        if len(_OPEN) >= 4:
            _OPEN.clear()
        _OPEN[path] = (stamp, trace)
    return trace


def trace_path(sc: Scenario) -> str | None:
    """The trace folder the scenario replays: ``--trace``, else its routing choice's (None: uniform)."""
    from capsim.traces import sources

    if sc.query.trace is not None:
        return sc.query.trace
    return sources.trace_of(sc.route)


def _open(sc: Scenario, path: str):
    from capsim.traces import replay

    q, spec = sc.query, sc.shape
    trace = _opened(path)
    replay.check_compatible(trace, spec.num_experts, spec.top_k, sc.ep)
    recorded, ours = trace.meta.get("config_hash"), sc.model_info.get("config_hash")
    if recorded and ours and recorded != ours and not q.trace_any_model:
        raise CapsimError(
            f"--trace {path}: recorded on {trace.meta['model_id']} (config hash {recorded[:12]}), not on "
            f"{sc.model_id} ({ours[:12]}); pass --trace-any-model to replay it anyway")
    return trace


def replay(sc: Scenario, batch, input_len, mean: bool = False) -> Routing | None:
    """The trace's routing for arrays of batches and prompt lengths (None: uniform). ``mean``: one composition
    per row carrying the mean over the sampled ones (sweep and provision price the mean composition; predict
    prices each and reports the spread)."""
    path = trace_path(sc)
    if path is None:
        return None
    from capsim.traces import replay as rp

    trace = _open(sc, path)
    batch, input_len = np.broadcast_arrays(np.asarray(batch, np.int64), np.asarray(input_len, np.int64))
    from capsim.sim.pipeline import microbatch

    # a step carries one pipeline micro-batch; with ep == 1 each data-parallel group routes its own share of it
    mb = np.asarray(microbatch(batch, sc.pp), np.int64)
    group = mb if sc.ep > 1 else np.maximum(1, mb // sc.dp)
    n = max(1, sc.query.trace_samples) if not mean else max(1, min(sc.query.trace_samples, MEAN_SAMPLES))
    key = (path, trace.meta.get("content_sha256"), sc.ep, n, mean, group.shape, group.tobytes(), input_len.tobytes())
    if key not in _REPLAYED:
        dec, notes = rp.decode_routing_many(trace, group, sc.ep, samples=n)
        pre, notes_pre = rp.prefill_routing_many(trace, group, sc.ep, samples=n, input_len=input_len)
        if mean:
            dec = {k: v.mean(axis=-1, keepdims=True) for k, v in dec.items()}
            pre = {k: v.mean(axis=-1, keepdims=True) for k, v in pre.items()}
        if len(_REPLAYED) >= _REPLAYED_SIZE:
            _REPLAYED.pop(next(iter(_REPLAYED)))
        _REPLAYED[key] = (dec, pre, notes, notes_pre)
    dec, pre, notes, notes_pre = _REPLAYED[key]
    notes = list(notes)
    desc = {"routing": sc.routing, "routing_samples": n, "trace_model": trace.meta["model_id"],
            "trace_synthetic": bool(trace.meta["synthetic"]), "trace_sha256": trace.meta["content_sha256"]}
    if trace.meta.get("moe_layers") != sc.shape.moe_layers:
        notes.append(f"trace has {trace.meta.get('moe_layers')} MoE layers, the model {sc.shape.moe_layers}: "
                     "per-layer routing averaged over the trace's layers")
    return Routing(pre, dec, desc, notes + notes_pre)
