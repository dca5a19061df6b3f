"""Provisioning search: every layout over the batch grid, checked against the requirements, ranked by cost.

For each layout (:mod:`capsim.provision.candidates`) and batch size (:func:`capsim.provision.evaluate.batch_grid`)
the use of every limit is computed (:func:`capsim.provision.requirements.ratios`). A layout qualifies when some
batch meets every limit. Then:

* its operating point is the smallest qualifying batch (the requested load at the best latency), and its
  capacity the largest qualifying batch (``max_tokens_per_s``: headroom at the same limits);
* its binding constraint is the limit that stops a larger batch: the most used of TTFT, TPOT and memory at the
  next batch of the grid (or ``max_batch`` at the end of the grid);
* qualifying, priced candidates are ranked by USD per hour (ties: more capacity first); per system, device
  count, nodes and weight format only the best TP/EP split and expert placement is listed (they cost the same).

When none qualifies, the closest candidates are listed: at each layout's batch with the smallest largest
ratio, that ratio (how far from the limit: 1.3 = 30% over) and the constraint it belongs to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from capsim.cap import accuracy as cap_accuracy
from capsim.cap import cost as cap_cost
from capsim.cap.hourly import Price, Pricer
from capsim.hardware.db import HardwareDB
from capsim.provision.candidates import Layout
from capsim.provision.evaluate import Curve, Workload, batch_grid, curve
from capsim.provision.requirements import CONSTRAINTS, Requirements, ratios, worst

LIMITS_OF_CAPACITY = ("ttft", "tpot", "memory")  # what a larger batch can break


@dataclass
class Candidate:
    layout: Layout
    price: Price
    qualifies: bool
    batch: int  # operating point
    ttft_s: float
    tpot_s: float
    tokens_per_s: float
    memory_use: float
    ratios: dict[str, float]  # use of each limit at the operating point (NaN: no limit)
    binding: str  # see the module docstring
    binding_ratio: float  # inf where it has no value (no published score; a batch that cannot run): None in rows
    max_batch: int | None = None  # largest qualifying batch
    max_tokens_per_s: float | None = None
    accuracy: float | None = None
    accuracy_note: str | None = None
    precision: str = ""
    model_id: str = ""

    @property
    def usd_per_h(self) -> float | None:
        return self.price.usd_per_h

    @property
    def usd_per_million_tokens(self) -> float | None:
        if self.price.usd_per_h is None:
            return None
        return float(cap_cost.usd_per_million_tokens(self.price.usd_per_h, self.tokens_per_s))

    def row(self) -> dict[str, Any]:
        lay = self.layout
        return {
            "system": lay.label(), "hardware": lay.hardware, "devices": lay.devices, "nodes": lay.nodes,
            "devices_total": lay.devices_total, "tp": lay.tp, "ep": lay.ep, "precision": self.precision,
            "offload": lay.offload, "qualifies": self.qualifies, "batch": self.batch, "ttft_s": self.ttft_s,
            "tpot_s": self.tpot_s, "output_tokens_per_s": self.tokens_per_s, "memory_use": self.memory_use,
            "max_batch": self.max_batch, "max_output_tokens_per_s": self.max_tokens_per_s,
            "usd_per_h": self.usd_per_h, "cost_basis": self.price.basis, "cost_detail": self.price.detail,
            "usd_per_million_output_tokens": self.usd_per_million_tokens, "accuracy": self.accuracy,
            "accuracy_note": self.accuracy_note, "binding_constraint": self.binding,
            "binding_ratio": self.binding_ratio if np.isfinite(self.binding_ratio) else None,
            "limits_used": {k: (None if np.isnan(v) else v) for k, v in self.ratios.items()},
        }


@dataclass
class Result:
    requirements: Requirements
    workload: Workload
    ranked: list[Candidate]  # qualifying and priced, cheapest first
    unpriced: list[Candidate]  # qualifying, no price
    closest: list[Candidate]  # not qualifying, closest first
    errors: dict[str, int] = field(default_factory=dict)  # why layouts could not run: reason -> count
    layouts: int = 0
    points: int = 0
    seconds: float = 0.0


def _accuracy(model: str, req: Requirements, precision: str, any_precision: bool) -> tuple[float | None, str | None]:
    if req.benchmark is None:
        return None, None
    res = cap_accuracy.score(model, req.benchmark, precision, allow_other_precision=any_precision)
    return res.value, res.reason


def _ttft(c: Curve, mode: str) -> np.ndarray:
    return c.ttft_arrival_s if mode == "arrival" else c.ttft_batch_s


def assess(c: Curve, req: Requirements, price: Price, acc: float | None, acc_note: str | None) -> Candidate:
    """One layout's candidate: operating point, capacity and binding constraint (module docstring)."""
    ttft = _ttft(c, req.ttft_mode)
    mem = c.memory_use(req.ttft_mode)
    r = ratios(req, c.batch, ttft, c.tpot_s, mem, acc)
    top, which = worst(r)
    ok = top <= 1.0
    if ok.any():
        i = int(np.flatnonzero(ok)[0])
        j = int(np.flatnonzero(ok)[-1])
        if j + 1 < len(c.batch):
            nxt = {k: r[k][j + 1] for k in LIMITS_OF_CAPACITY}
            # memory first on ties: a batch the placement cannot hold has every ratio infinite
            binding = max(reversed(LIMITS_OF_CAPACITY), key=lambda k: -np.inf if np.isnan(nxt[k]) else nxt[k])
            b_ratio = float(nxt[binding])
        else:
            binding, b_ratio = "max_batch", float(top[j])
    else:
        i = j = int(np.argmin(top))
        binding = CONSTRAINTS[int(which[i])]
        b_ratio = float(r[binding][i])  # not top[i]: worst() clips an infinite ratio to the float maximum
    return Candidate(
        layout=c.layout, price=price, qualifies=bool(ok.any()), batch=int(c.batch[i]), ttft_s=float(ttft[i]),
        tpot_s=float(c.tpot_s[i]), tokens_per_s=float(c.tokens_per_s[i]), memory_use=float(mem[i]),
        ratios={k: float(r[k][i]) for k in CONSTRAINTS}, binding=binding, binding_ratio=b_ratio,
        max_batch=int(c.batch[j]) if ok.any() else None,
        max_tokens_per_s=float(c.tokens_per_s[j]) if ok.any() else None, accuracy=acc, accuracy_note=acc_note,
        precision=c.precision, model_id=c.model_id)


def _best_split(cands: list[Candidate]) -> list[Candidate]:
    """Per (hardware, devices, nodes, format): the TP/EP split and expert placement that qualifies with the
    most capacity, or, if none qualifies, the closest (they cost the same)."""
    best: dict[tuple, Candidate] = {}
    for c in cands:
        lay = c.layout
        key = (lay.hardware, lay.devices, lay.nodes, c.precision)
        score = (c.qualifies, c.max_tokens_per_s or 0.0, -c.binding_ratio)
        if key not in best or score > (best[key].qualifies, best[key].max_tokens_per_s or 0.0,
                                       -best[key].binding_ratio):
            best[key] = c
    return list(best.values())


def search(layouts: list[Layout], w: Workload, req: Requirements, db: HardwareDB, pricer: Pricer,
           max_batch: int = 4096, any_precision: bool = False, progress=None) -> Result:
    """Evaluate every layout, assess it against ``req``, rank (module docstring)."""
    t0 = time.perf_counter()
    req.check()
    grid = batch_grid(max_batch, req.users)
    cands, errors, acc_cache, points = [], {}, {}, 0
    for lay in layouts:
        c = curve(lay, w, grid, db)
        if progress is not None:
            progress(1)
        if c.error is not None:
            errors[c.error] = errors.get(c.error, 0) + 1
            continue
        points += len(c.batch) + 1
        if c.precision not in acc_cache:
            acc_cache[c.precision] = _accuracy(w.model, req, c.precision, any_precision)
        price = pricer.price(lay.hardware, lay.devices, lay.nodes)
        cands.append(assess(c, req, price, *acc_cache[c.precision]))
    cands = _best_split(cands)
    ranked = sorted((c for c in cands if c.qualifies and c.usd_per_h is not None),
                    key=lambda c: (c.usd_per_h, -(c.max_tokens_per_s or 0.0), c.layout.devices_total))
    unpriced = sorted((c for c in cands if c.qualifies and c.usd_per_h is None),
                      key=lambda c: -(c.max_tokens_per_s or 0.0))
    closest = sorted((c for c in cands if not c.qualifies),
                     key=lambda c: (c.binding_ratio, c.usd_per_h if c.usd_per_h is not None else np.inf))
    return Result(req, w, ranked, unpriced, closest, errors, len(layouts), points, time.perf_counter() - t0)


def pareto(cands: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both cost (lower USD/h) and capacity (higher max output tokens/s)."""
    pts = sorted((c for c in cands if c.usd_per_h is not None and c.max_tokens_per_s is not None),
                 key=lambda c: (c.usd_per_h, -c.max_tokens_per_s))
    front, best = [], -np.inf
    for c in pts:
        if c.max_tokens_per_s > best:
            front.append(c)
            best = c.max_tokens_per_s
    return front


STATUS = ("qualifies", "qualifies, unpriced", "does not qualify")


def rows(res: Result) -> list[dict[str, Any]]:
    """Every candidate as a row (:meth:`Candidate.row`), with ``status`` and ``rank`` (1 = cheapest qualifying;
    the unpriced and then the closest follow in their own order)."""
    out = []
    for status, group in zip(STATUS, (res.ranked, res.unpriced, res.closest), strict=True):
        out += [dict(c.row(), status=status) for c in group]
    for i, r in enumerate(out, 1):
        r["rank"] = i
    return out
