"""``capsim serve``: one serving run of a scenario under a workload, and its statistics.

The scenario is resolved as ``capsim predict`` resolves it (model, hardware, layout, engine profile, routing);
the engine's scheduler comes from its profile (``max_running_seqs``, ``max_batched_tokens``,
``kv_block_tokens``; flags override them) and the KV cache from the memory model: what the devices hold beside
the weights and the activations of the largest step, over the K/V bytes a token takes.

Statistics follow vLLM's benchmark (benchmarks/benchmark_serving.py ``calculate_metrics``): TTFT from a
request's sending to its first token; TPOT per request over its tokens after the first, (e2e - TTFT) /
(output - 1), for requests of more than one output token; ITL every gap between two tokens of a request;
e2e from sending to the last token; throughputs over the run's duration (first sent to last done); goodput the
requests per second that meet every SLO given.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from capsim.capacity import per_device
from capsim.engines import frontend
from capsim.engines import scheduler as esched
from capsim.errors import CapsimError
from capsim.serve import scheduler
from capsim.serve.steps import StepCost
from capsim.serve.workload import Workload

PERCENTILES = (50, 90, 99)


def _stats(x: np.ndarray) -> dict[str, float | None]:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    return {"mean": float(x.mean()), **{f"p{p}": float(np.percentile(x, p)) for p in PERCENTILES}}


def kv_capacity_tokens(sc, step_tokens: float, startup_rows: float | None = None) -> float:
    """Tokens of K/V one replica's devices hold beside the weights, the reserve and the activations of a step
    of ``step_tokens`` tokens, or of the engine's start-up profiling where that peaked higher (per device: its
    share of every token's K/V; its dummy sampler over ``startup_rows`` requests)."""
    base = per_device(sc, 1, max(1.0, step_tokens), 1, startup_rows=startup_rows)
    more = per_device(sc, 1, max(1.0, step_tokens) + 1000.0, 1, startup_rows=startup_rows)
    per_token = (float(more.kv_cache) - float(base.kv_cache)) / 1000.0
    room = float(sc.target.memory_capacity_bytes) - (float(base.total) - float(base.kv_cache))
    if not math.isfinite(room) or per_token <= 0:
        return math.inf
    if room <= 0:
        raise CapsimError(f"{sc.target.device_id}: no memory left for a KV cache beside the weights and "
                          "activations; use more devices or a lower --precision")
    return room / per_token


def config_of(sc, max_num_seqs: int | None, max_batched_tokens: int | None) -> scheduler.SchedulerConfig:
    """The scheduler of the whole engine. With attention data parallelism (dp groups) every group has its own
    scheduler limits and KV cache, requests are spread evenly over the groups and the groups step together (their
    MoE layers are one collective): one scheduler with dp times each limit, whose steps the request pipeline splits
    evenly over the groups (capsim.sim.ops.local_work), stands for them."""
    prof, dp = sc.profile, sc.dp
    tier_seqs, tier_tokens = esched.limits(prof, sc.target.memory_capacity_bytes, sc.target.device_id)
    seqs = max_num_seqs or (int(tier_seqs) if math.isfinite(tier_seqs) else (1 << 30))
    tokens = max_batched_tokens or tier_tokens
    block = int(prof.kv_block_tokens) or 1
    step = min(tokens, 65536.0)
    cap = kv_capacity_tokens(sc, step, min(seqs, tokens))  # vLLM's dummy sampler: min(max_num_seqs, tokens)
    return scheduler.SchedulerConfig(seqs * dp if seqs < (1 << 30) else seqs, float(tokens) * dp, block,
                                     scheduler.kv_blocks(cap, block) * dp, sc.shape.windows, sc.shape.layers,
                                     bool(prof.scheduler and prof.scheduler.prefix_caching), sc.shape.cache_windows,
                                     frontend.intake_s(prof))


def check(sc) -> None:
    if sc.offload is not None:
        raise CapsimError("capsim serve: --offload is not modelled under load yet (use capsim predict)")
    if sc.pp != 1:
        raise CapsimError(f"capsim serve: --pp {sc.pp}: pipeline stages are not modelled under load yet (use --pp 1)")


def _report(w: Workload, tr: scheduler.Trace, cfg: scheduler.SchedulerConfig, evaluations: int,
            slo_ttft_s: float | None, slo_tpot_s: float | None) -> dict[str, Any]:
    ttft = tr.first_s - tr.sent_s
    e2e = tr.done_s - tr.sent_s
    many = w.output_len > 1
    tpot = np.where(many, (tr.done_s - tr.first_s) / np.maximum(w.output_len - 1, 1), np.nan)
    duration = float(np.nanmax(tr.done_s) - np.nanmin(tr.sent_s))
    good = np.ones(w.n, bool)
    if slo_ttft_s is not None:
        good &= ttft <= slo_ttft_s
    if slo_tpot_s is not None:
        good &= ~many | (tpot <= slo_tpot_s)
    out_tokens, in_tokens = float(w.output_len.sum()), float(w.input_len.sum())
    seqs = tr.step_seqs

    def rate(x: float) -> float:
        return x / duration if duration > 0 else math.inf
    return {
        "ttft_s": _stats(ttft), "tpot_s": _stats(tpot[many]), "itl_s": _stats(tr.itl_s), "e2e_s": _stats(e2e),
        "request_throughput_per_s": rate(w.n), "output_tokens_per_s": rate(out_tokens),
        "total_tokens_per_s": rate(in_tokens + out_tokens), "duration_s": duration,
        "goodput_requests_per_s": rate(float(good.sum())),
        "batch_size": {"mean": float(np.average(seqs, weights=tr.step_s)) if len(seqs) else 0.0,
                       "max": int(seqs.max()) if len(seqs) else 0},
        "preemptions": tr.preemptions,
        "steps": len(tr.step_s),
        "scheduler": {"max_running_seqs": cfg.max_running if cfg.max_running < (1 << 30) else None,
                      "max_batched_tokens": None if math.isinf(cfg.max_batched_tokens) else cfg.max_batched_tokens,
                      "kv_block_tokens": cfg.block_tokens, "kv_cache_tokens": cfg.kv_blocks * cfg.block_tokens,
                      "step_evaluations": evaluations, "intake_s_per_request": cfg.intake_s},
        "workload": dict(w.description, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s),
    }


def _run(sc, w: Workload, max_num_seqs, max_batched_tokens, exact: bool, intake_s: float | None = None):
    check(sc)
    cfg = config_of(sc, max_num_seqs, max_batched_tokens)
    if intake_s is not None:
        cfg = replace(cfg, intake_s=float(intake_s))
    largest = int(min(cfg.max_batched_tokens, float(np.sum(w.input_len)) + w.n, 1 << 20))
    cost = StepCost(sc, largest, exact)
    return scheduler.run(w, cfg, cost), cfg, cost


def serve(sc, w: Workload, *, max_num_seqs: int | None = None, max_batched_tokens: int | None = None,
          slo_ttft_s: float | None = None, slo_tpot_s: float | None = None, exact: bool = False,
          intake_s: float | None = None) -> dict[str, Any]:
    """One serving run; ``intake_s`` overrides the engine profile's front-end intake (capsim.engines.frontend)."""
    tr, cfg, cost = _run(sc, w, max_num_seqs, max_batched_tokens, exact, intake_s)
    return _report(w, tr, cfg, cost.evaluations, slo_ttft_s, slo_tpot_s)


def serve_disaggregated(sc_prefill, sc_decode, w: Workload, link_bytes_per_s: float, *,
                        max_num_seqs: int | None = None, max_batched_tokens: int | None = None,
                        slo_ttft_s: float | None = None, slo_tpot_s: float | None = None,
                        exact: bool = False, intake_s: float | None = None) -> dict[str, Any]:
    """Prefill/decode disaggregation: a prefill instance (``sc_prefill``) runs every prompt and samples its first
    token; the prompt's K/V then crosses ``link_bytes_per_s`` (each request's transfer on its own, no queueing for
    the link) to a decode instance (``sc_decode``), which admits the request as its scheduler allows and decodes
    the rest. TTFT comes from the prefill instance; TPOT, ITL and E2E include the transfer and the wait."""
    from capsim.sim.memory import memory_use

    if w.concurrency is not None:
        raise CapsimError("--prefill-devices: a concurrency limit over two instances is not modelled yet; use "
                          "--request-rate")
    ones = np.ones_like(w.output_len)
    tr_p, cfg_p, cost_p = _run(sc_prefill, replace(w, output_len=ones), max_num_seqs, max_batched_tokens, exact,
                               intake_s)
    kv = np.asarray(memory_use(sc_decode.shape, batch=1, input_len=w.input_len.astype(float), output_len=0,
                               kv_bytes_per_element=sc_decode.kv_bytes, capacity_bytes=math.inf,
                               reserve_fraction=0.0).kv_cache, float)
    transfer = kv / link_bytes_per_s
    ready = tr_p.first_s + transfer
    order = np.argsort(ready, kind="stable")
    wd = Workload(ready[order], w.input_len[order], w.output_len[order], None, w.description,
                  handoff=(tr_p.sent_s[order], tr_p.first_s[order]))
    tr_d, cfg_d, cost_d = _run(sc_decode, wd, max_num_seqs, max_batched_tokens, exact)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    tr = scheduler.Trace(tr_p.sent_s, tr_p.first_s, tr_d.done_s[back], tr_d.itl_s, tr_d.step_s, tr_d.step_seqs,
                         tr_p.preemptions + tr_d.preemptions)
    rep = _report(w, tr, cfg_d, cost_p.evaluations + cost_d.evaluations, slo_ttft_s, slo_tpot_s)
    rep["disaggregation"] = {"prefill_devices": sc_prefill.n, "decode_devices": sc_decode.n,
                             "kv_transfer_s": _stats(transfer), "link_bytes_per_s": link_bytes_per_s,
                             "prefill_steps": len(tr_p.step_s), "prefill_kv_cache_tokens":
                             cfg_p.kv_blocks * cfg_p.block_tokens}
    return rep
