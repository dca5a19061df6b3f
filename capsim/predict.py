"""One prediction: config -> model spec -> scenario -> sim/request -> metrics -> report.

:func:`predict` resolves the question into a :class:`capsim.scenario.Scenario`, finds where the experts
live (:mod:`capsim.placement`) and the routing a trace gives (:mod:`capsim.routing`), prices the request
with :func:`capsim.sim.request.simulate`, and assembles the report (:mod:`capsim.sim.metrics`,
:mod:`capsim.report`). It is the only layer that reads data; the simulator's functions are pure.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from capsim import capacity, placement, report, routing
from capsim.checks import MAX_SEQUENCES
from capsim.collectives import collectives_report
from capsim.errors import CapsimError
from capsim.scenario import DEFAULT_INPUT_LEN, DEFAULT_OUTPUT_LEN, MAX_BATCH, Query, resolve
from capsim.sim.metrics import request_metrics
from capsim.sim.request import simulate

__all__ = ["DEFAULT_INPUT_LEN", "DEFAULT_OUTPUT_LEN", "MAX_BATCH", "Query", "largest_batch", "predict", "resolve"]


def largest_batch(q: Query, db, profile=None) -> int:
    """``--batch max``: the most sequences of input + output tokens the devices hold (capsim.capacity), the
    batch an engine at maximum load (an unbounded request queue) keeps in flight."""
    if q.offload:
        raise CapsimError("--batch max: not with --offload (the expert cache and the batch share device memory); "
                          "give --batch and --expert-cache")
    sc = resolve(replace(q, batch=1), db, profile)
    most = capacity.largest_batch(sc, q.input_len, q.output_len)
    most = most if most is None else min(most, MAX_SEQUENCES)  # beyond it: far past any engine's batch
    if most is None:
        raise CapsimError(f"--batch max: {q.hardware} states no memory size, so no batch limit can be found")
    if most == 0:
        raise CapsimError(f"--batch max: not even one sequence of {q.input_len} + {q.output_len} tokens fits on "
                          f"{q.hardware}; try more --devices, a lower --precision or shorter lengths")
    return most


def predict(q: Query, db, profile=None) -> dict[str, Any]:
    """The report of one scenario (``capsim predict --json``); ``profile`` replaces the named engine profile."""
    notes = []
    if q.batch == MAX_BATCH:
        q = replace(q, batch=largest_batch(q, db, profile))
        notes = [f"--batch max: {q.batch} sequences, the most that fit at {q.input_len} + {q.output_len} tokens"]
    sc = resolve(q, db, profile)
    b, i, o = q.batch, q.input_len, q.output_len
    place = placement.residency(sc, b, i, o) if sc.offload else None
    if place is not None:
        problem = placement.problems(sc, place, b, i, o)[0]
        if problem:
            raise CapsimError(problem)
    frac = place.expert_fraction if place is not None else 1.0
    mem = capacity.per_device(sc, b, i, o, frac)
    fits = bool(mem.fits)
    if not fits and q.check_memory:
        raise CapsimError(report.no_fit_message(sc, mem, db))
    rt = routing.replay(sc, b, i)
    res = simulate(sc, b, i, o, rt, place)
    m = request_metrics(sc, res, b, i, o)
    pre = report.phase(res.prefill, res.prefill_timing, m["prefill"], b * i)
    # the decode phase's rate is the request's, b per TPOT (with speculation its step is the verify pass alone, and
    # TPOT adds the draft and divides by the tokens kept): tokens = that rate x the mean step time
    dec = report.phase(res.decode, res.decode_timing, m["decode"],
                       float(m["decode_tokens_per_s"]) * report.mean(res.decode_timing.step_s))
    dec["mean_context"] = report.mean(res.decode_context)
    request_s = float(m["request_latency_s"])
    cost_info = report.cost(sc, request_s, b * o)
    scenario = dict(sc.describe(), **(rt.description if rt else {}),
                    notes=list(sc.target.notes) + (rt.notes if rt else []) + notes)
    if not fits:
        scenario["notes"].append("does not fit in device memory (memory check skipped on request)")
    head = ("ttft_s", "tpot_s", "request_latency_s", "prefill_tokens_per_s", "decode_tokens_per_s",
            "decode_tokens_per_s_per_user", "prefill_tokens_per_s_per_node", "decode_tokens_per_s_per_node",
            "output_tokens_per_s_total", "s_mbu", "s_mfu", "mbu", "mfu", "activated_experts_per_layer",
            "activated_experts_per_layer_prefill")
    return {
        **{k: float(m[k]) for k in head},
        "num_experts": sc.shape.num_experts, "top_k": sc.shape.top_k,
        "memory_bytes": report.memory(mem, sc, place, batch=b),
        "fits": fits,
        "capacity": capacity.limits(sc, frac),
        "bottleneck": {"prefill": pre["bottleneck"], "decode": dec["bottleneck"]},
        "cost_usd_per_million_tokens": cost_info["usd_per_million_output_tokens"],
        "cost": cost_info,
        "phases": {"prefill": pre, "decode": dec},
        "spread": None if rt is None else {
            "ttft_s": report.spread(res.ttft_s), "tpot_s": report.spread(res.tpot_s),
            "decode_tokens_per_s": report.spread(b / res.tpot_s),
            "activated_experts_per_layer": report.spread(res.decode.activated_experts),
            "activated_experts_per_layer_prefill": report.spread(res.prefill.activated_experts),
        },
        "engine": sc.profile.describe(),
        "collectives": collectives_report(sc),
        "scenario": scenario,
        "offload": report.offload(sc, place, res) if place is not None else None,
        "ideal_bound": _ideal_bound(q, db, rt, place) if profile is None and sc.profile.id != IDEAL else None,
    }


IDEAL = "roofline"  # the engine profile whose forecast is the bound: every kernel at the datasheet peaks


def _ideal_bound(q: Query, db, rt, place) -> dict[str, Any]:
    """The same scenario on the ideal roofline, priced once on the mean of the forecast's batch compositions
    (a bound needs no spread): the bound the engine's forecast is read against."""
    sc = resolve(replace(q, engine=IDEAL), db)
    b, i, o = q.batch, q.input_len, q.output_len
    mean = None if rt is None else routing.Routing(
        {k: v.mean(axis=-1, keepdims=True) for k, v in rt.prefill.items()},
        {k: v.mean(axis=-1, keepdims=True) for k, v in rt.decode.items()}, rt.description)
    m = request_metrics(sc, simulate(sc, b, i, o, mean, place), b, i, o)
    return {"engine": IDEAL, "ttft_s": float(m["ttft_s"]), "tpot_s": float(m["tpot_s"]),
            "decode_tokens_per_s": float(m["decode_tokens_per_s"]),
            "output_tokens_per_s_total": float(m["output_tokens_per_s_total"]), "s_mbu": float(m["s_mbu"]),
            "s_mfu": float(m["s_mfu"])}
