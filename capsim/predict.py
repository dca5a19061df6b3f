"""One prediction: resolve the inputs into a scenario, run the simulator, assemble the report.

This is the only layer that reads data (catalogue, hardware database, engine
profile); the functions in :mod:`capsim.sim` it calls are pure.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from capsim import capacity, engines, pipeline, placement, precision
from capsim.collectives import collectives_report, pipelined, with_link_latency
from capsim.errors import CapsimError
from capsim.hardware.db import HardwareDB
from capsim.hardware.target import Target, for_layout, resolve_target, stage
from capsim.model.catalogue import load_model
from capsim.sim.metrics import utilisation
from capsim.sim.offload import offload_step
from capsim.sim.request import simulate_request
from capsim.sim.roofline import CATEGORIES
from capsim.sim.shape import shape_of
from capsim.sim.ssd import SsdRead

DEFAULT_INPUT_LEN = 512  # the peers' comparison point (shared/reference/peers.md: 512 in, 128 out)
DEFAULT_OUTPUT_LEN = 128
SIXTEEN_BIT_PREFERENCE = ("bf16", "fp16", "fp32")  # attention runs in a 16-bit dtype (FlashAttention)
MAX_BATCH = "max"  # Query.batch: the largest batch that fits (largest_batch)


@dataclass(frozen=True)
class Query:
    model: str
    hardware: str
    devices: int | None = None
    engine: str = "roofline"
    precision: str | None = None  # default: the checkpoint's own
    kv_precision: str | None = None  # default: bf16
    compute_dtype: str | None = None  # default: the best the device offers for the precision
    batch: int | str = 1  # or MAX_BATCH
    input_len: int = DEFAULT_INPUT_LEN
    output_len: int = DEFAULT_OUTPUT_LEN
    tp: int | None = None
    ep: int | None = None
    trace: str | None = None
    trace_samples: int = 200  # batch compositions drawn from the trace
    trace_any_model: bool = False  # replay a trace recorded on a model with another config
    usd_per_h: float | None = None
    check_memory: bool = True
    allow_dense: bool = False  # a local config.json without routed experts
    offload: str | None = None  # routed experts not all on the device: "gpu-fetch" or "cpu" (capsim.placement)
    expert_cache: int | None = None  # experts per MoE layer resident on each device (default: as many as fit)
    cache_policy: str = "lru"
    expert_tier: str = "dram"  # where the other experts live: "dram" or "ssd"
    host_sockets: int | None = None  # --offload cpu: CPU sockets computing experts (default: all of the system's)
    pp: int = 1  # pipeline stages (capsim.pipeline); tp / ep / dp apply inside a stage
    dp: int | None = None  # attention data-parallel groups in a stage (default: stage devices / tp)
    nodes: int = 1  # copies of a system joined by its scale-out link; ``devices`` is then per node


def _check_ints(q: Query) -> None:
    for flag, value, low in (("--batch", q.batch, 1), ("--input-len", q.input_len, 1),
                             ("--output-len", q.output_len, 1), ("--trace-samples", q.trace_samples, 1),
                             ("--nodes", q.nodes, 1)):
        if not isinstance(value, int) or value < low:
            raise CapsimError(f"{flag} {value}: expected an integer >= {low}")
    for flag, value in (("--tp", q.tp), ("--ep", q.ep), ("--devices", q.devices)):
        if value is not None and value < 1:
            raise CapsimError(f"{flag} {value}: expected a positive integer")
    if q.usd_per_h is not None and not q.usd_per_h > 0:
        raise CapsimError(f"--usd-per-hour {q.usd_per_h}: expected a positive price")


def _parallelism(q: Query, target: Target, spec) -> tuple[int, int]:
    n = target.n_devices
    ep = q.ep or 1
    tp = q.tp or math.gcd(n, target.devices_per_node or n)  # default: TP inside a node, DP across nodes
    if n % tp:
        raise CapsimError(f"--tp {tp}: must divide the {n} devices used (--devices)")
    heads = spec.attention.num_heads
    if heads % tp:
        raise CapsimError(f"--tp {tp}: {heads} attention heads do not split evenly over {tp} devices")
    if q.dp is not None and q.dp * tp != n:
        raise CapsimError(f"--dp {q.dp}: tp x dp x pp must equal the devices used ({tp} x {q.dp} x {q.pp} != "
                          f"{n * q.pp})")
    if ep not in (1, n):
        raise CapsimError(f"--ep {ep}: expert parallelism spans all devices here, so --ep must be 1 or {n}")
    if ep > 1 and spec.num_experts % ep:
        raise CapsimError(f"--ep {ep}: {spec.num_experts} routed experts do not split evenly over {ep} ranks")
    if ep > 1 and not spec.num_experts:
        raise CapsimError(f"--ep {ep}: the model has no routed experts")
    return tp, ep


def _peaks(target: Target, compute: str) -> dict[str, float]:
    p = target.peak_flop_per_s
    attn = compute if compute == "fp32" else next((d for d in SIXTEEN_BIT_PREFERENCE if d in p), compute)
    return {"matmul": p[compute], "attention": p[attn], "vector": p.get("fp32", p[compute])}


def resolve(q: Query, db: HardwareDB, profile: engines.EngineProfile | None = None) -> dict[str, Any]:
    """Every input made explicit (the report's ``scenario``) plus the objects the simulator needs.
    ``profile`` replaces the engine profile named by ``q.engine`` (fitting tries parameter values)."""
    _check_ints(q)
    spec, info = load_model(q.model, allow_dense=q.allow_dense)
    try:
        target = whole = resolve_target(db, q.hardware, q.devices, q.nodes)
    except CapsimError as err:
        raise CapsimError(f"--hardware: {err}") from None
    if not isinstance(q.pp, int) or q.pp < 1 or whole.n_devices % q.pp:
        raise CapsimError(f"--pp {q.pp}: expected a positive divisor of the {whole.n_devices} devices used")
    if q.pp > spec.layers:
        raise CapsimError(f"--pp {q.pp}: the model has only {spec.layers} layers")
    target, hop, hop_where = stage(whole, q.pp)  # one stage's devices, and the link between adjacent stages
    prec = precision.get(q.precision or info["native_precision"])
    kv_name = (q.kv_precision or ("fp32" if prec.name == "fp32" else "bf16")).lower()
    kv_b = precision.kv_bytes(kv_name)
    compute = precision.choose_compute(prec, target.peak_flop_per_s, target.device_id, q.compute_dtype)
    tp, ep = _parallelism(q, target, spec)
    target = for_layout(target, tp, ep)
    profile = profile or engines.load(q.engine)
    scenario = {
        "model": info["id"], "model_source": info["source"], "hardware": target.hardware_id,
        "device": target.device_id, "device_role": target.device_role, "devices": whole.n_devices,
        "engine": profile.id, "engine_version": profile.version, "precision": prec.name,
        "bits_per_weight": prec.bits_per_weight, "precision_scope": prec.scope, "kv_precision": kv_name,
        "compute_dtype": compute, "weight_only": compute not in prec.compute[:1],
        "batch": q.batch, "input_len": q.input_len, "output_len": q.output_len, "tp": tp, "ep": ep,
        "dp": target.n_devices // tp, "routing": "uniform (expected distinct experts)", "trace": q.trace,
        "collective_link": target.collective_link, "pp": q.pp, "nodes": whole.nodes,
        "devices_per_node": whole.devices_per_node or whole.n_devices,
    }
    return {"scenario": scenario, "spec": spec, "model_info": info, "shape": shape_of(spec, prec), "target": target,
            "profile": profile, "peaks": _peaks(target, compute), "kv_bytes": kv_b, "tp": tp, "ep": ep,
            "precision": prec, "whole_target": whole, "hop_bytes_per_s": hop, "hop_bottleneck": hop_where}


def _f(x) -> float:
    """A headline number: the value, or the mean over replayed batch compositions."""
    return float(np.mean(x))


def _spread(x) -> dict[str, float]:
    p10, p50, p90 = np.percentile(np.asarray(x, float).ravel(), [10, 50, 90])
    return {"p10": float(p10), "p50": float(p50), "p90": float(p90)}


def _replay(q: Query, r: dict[str, Any]) -> tuple[dict | None, dict | None, list[str]]:
    """Routing measured on the trace for this batch (None, None when no trace)."""
    if q.trace is None:
        return None, None, []
    from capsim.traces import replay
    from capsim.traces.format import open_trace

    trace = open_trace(q.trace, verify=True)
    spec = r["spec"]
    replay.check_compatible(trace, spec.num_experts, spec.top_k, r["ep"])
    recorded, ours = trace.meta.get("config_hash"), r["model_info"].get("config_hash")
    if recorded and ours and recorded != ours and not q.trace_any_model:
        raise CapsimError(
            f"--trace {q.trace}: recorded on {trace.meta['model_id']} (config hash {recorded[:12]}), not on "
            f"{r['model_info']['id']} ({ours[:12]}); pass --trace-any-model to replay it anyway")
    # ep == 1: each data-parallel group routes its own share of the batch
    group = q.batch if r["ep"] > 1 else max(1, q.batch // r["scenario"]["dp"])
    n = max(1, q.trace_samples)
    dec, notes = replay.decode_routing(trace, group, r["ep"], samples=n)
    pre, notes_pre = replay.prefill_routing(trace, group, r["ep"], samples=n, input_len=q.input_len)
    r["scenario"].update(routing=f"trace replay ({n} batch compositions)",
                         trace_model=trace.meta["model_id"], trace_synthetic=bool(trace.meta["synthetic"]),
                         trace_sha256=trace.meta["content_sha256"])
    if trace.meta.get("moe_layers") != spec.num_moe_layers:
        notes.append(f"trace has {trace.meta.get('moe_layers')} MoE layers, the model {spec.num_moe_layers}: "
                     "per-layer routing averaged over the trace's layers")
    return pre, dec, notes + notes_pre


def _phase(step, timing, util, target: Target, tokens: float) -> dict[str, Any]:
    b = CATEGORIES[int(np.argmax([np.mean(timing.by_category_s[c]) for c in CATEGORIES]))]
    ops = {}
    for name in step.ops:
        tc, tm = _f(timing.op_compute_s[name]), _f(timing.op_memory_s[name])
        ops[name] = {"time_s": _f(timing.op_s[name]), "flops": _f(step.ops[name].flops),
                     "bytes": _f(step.ops[name].bytes), "bound": "compute" if tc > tm else "memory"}
    for name, t in timing.transfer_s.items():
        ops[name] = {"time_s": _f(t), "bytes": _f(step.transfer_bytes[name]), "bound": "transfer"}
    return {
        "step_s": _f(timing.step_s), "tokens_per_s": tokens / _f(timing.step_s),
        "s_mbu": _f(util["s_mbu"]), "s_mfu": _f(util["s_mfu"]), "mbu": _f(util["mbu"]), "mfu": _f(util["mfu"]),
        "activated_experts_per_layer": _f(step.activated_experts), "bottleneck": b,
        "time_by_bound_s": {c: _f(timing.by_category_s[c]) for c in CATEGORIES},
        "flops_per_device": _f(util["flops_per_device"]), "bytes_per_device": _f(util["bytes_per_device"]),
        "operators": ops,
    }


def _cost(q: Query, db: HardwareDB, whole: Target, seconds: float, tokens: float) -> dict[str, Any]:
    """USD per hour of the devices used and per 1e6 output tokens (batch x output_len over the request's
    latency): --usd-per-hour, else the CAP cost model with its default assumptions (capsim.cap.hourly: the
    listed cloud price, else capex over the lifetime plus energy; ``capsim cap cost`` shows every part)."""
    if q.usd_per_h is not None:
        per_h, basis, detail = q.usd_per_h, "given", "--usd-per-hour"
    else:
        from capsim.cap.hourly import default_pricer

        price = default_pricer(db).price(q.hardware, whole.devices_per_node or whole.n_devices, whole.nodes)
        per_h, basis, detail = price.usd_per_h, price.basis, price.detail
    if per_h is None:
        return {"usd_per_million_output_tokens": None, "usd_per_h": None, "basis": "unpriced",
                "detail": f"{detail}; or pass --usd-per-hour"}
    from capsim.cap.cost import usd_per_million_tokens

    return {"usd_per_million_output_tokens": float(usd_per_million_tokens(per_h, tokens / seconds)), "usd_per_h": per_h,
            "basis": basis, "detail": detail}


def largest_batch(q: Query, db: HardwareDB, profile: engines.EngineProfile | None = None) -> int:
    """``--batch max``: the most sequences of input + output tokens the devices hold (capsim.capacity), the
    batch an engine at maximum load (an unbounded request queue) keeps in flight."""
    if q.offload:
        raise CapsimError("--batch max: not with --offload (the expert cache and the batch share device memory); "
                          "give --batch and --expert-cache")
    q1 = replace(q, batch=1)
    most = capacity.limits(resolve(q1, db, profile), q1)["max_batch"]
    if most is None:
        raise CapsimError(f"--batch max: {q.hardware} states no memory size, so no batch limit can be found")
    if most == 0:
        raise CapsimError(f"--batch max: not even one sequence of {q.input_len} + {q.output_len} tokens fits on "
                          f"{q.hardware}; try more --devices, a lower --precision or shorter lengths")
    return most


def predict(q: Query, db: HardwareDB, profile: engines.EngineProfile | None = None) -> dict[str, Any]:
    batch_note = []
    if q.batch == MAX_BATCH:
        q = replace(q, batch=largest_batch(q, db, profile))
        batch_note = [f"--batch max: {q.batch} sequences, the most that fit at {q.input_len} + {q.output_len} tokens"]
    r = resolve(q, db, profile)
    s, target, profile = r["shape"], r["target"], r["profile"]
    tp, ep, n = r["tp"], r["ep"], target.n_devices
    place = placement.plan(q, r) if q.offload else None
    pp, mb = q.pp, pipeline.microbatch(q.batch, q.pp)
    mem = capacity.per_device(r, q, q.batch, q.input_len, place.expert_fraction if place else 1.0)
    fits = bool(mem.fits)
    if not fits and q.check_memory:
        raise CapsimError(_no_fit_message(q, r, mem, db))
    pre_routing, dec_routing, trace_notes = _replay(q, r)
    res = simulate_request(
        s, prefill_routing=pre_routing, decode_routing=dec_routing, batch=mb, input_len=q.input_len,
        output_len=q.output_len, kv_bytes_per_element=r["kv_bytes"],
        peak_flop_per_s=r["peaks"], bandwidth_bytes_per_s=target.memory_bandwidth_bytes_per_s,
        ring_bandwidth_bytes_per_s=target.ring_bandwidth_bytes_per_s,
        alltoall_bandwidth_bytes_per_s=target.alltoall_bandwidth_bytes_per_s, profile=profile, tp=tp, ep=ep, n=n)
    res = with_link_latency(res, r, q)
    offload_info = None
    if place is not None:
        res, offload_info = _offloaded(res, place, r, q)
    if pp > 1:
        res = pipelined(res, r, q, mb)
    util_kw = dict(bandwidth_bytes_per_s=target.memory_bandwidth_bytes_per_s, peak_flop_per_s=r["peaks"])
    pre = _phase(res.prefill, res.prefill_timing, utilisation(res.prefill, res.prefill_timing, **util_kw), target,
                 q.batch * q.input_len)
    dec = _phase(res.decode, res.decode_timing, utilisation(res.decode, res.decode_timing, **util_kw), target,
                 q.batch)
    dec["mean_context"] = _f(res.decode_context)
    request_s = _f(res.request_s)
    ttft, tpot = _f(res.ttft_s), _f(res.tpot_s)
    cost_info = _cost(q, db, r["whole_target"], request_s, q.batch * q.output_len)
    scenario = dict(r["scenario"], notes=list(target.notes) + trace_notes + batch_note)
    if not fits:
        scenario["notes"].append("does not fit in device memory (memory check skipped on request)")
    return {
        "ttft_s": ttft,
        "tpot_s": tpot,
        "request_latency_s": request_s,
        "prefill_tokens_per_s": q.batch * q.input_len / ttft,
        "decode_tokens_per_s": q.batch / tpot,
        "decode_tokens_per_s_per_user": 1.0 / tpot,
        "prefill_tokens_per_s_per_node": q.batch * q.input_len / ttft / r["whole_target"].nodes,
        "decode_tokens_per_s_per_node": q.batch / tpot / r["whole_target"].nodes,
        # the batch served start to finish: its output tokens over the request latency (prefill, then decode)
        "output_tokens_per_s_total": q.batch * q.output_len / request_s,
        "s_mbu": dec["s_mbu"], "s_mfu": dec["s_mfu"], "mbu": dec["mbu"], "mfu": dec["mfu"],
        "activated_experts_per_layer": dec["activated_experts_per_layer"],
        "activated_experts_per_layer_prefill": pre["activated_experts_per_layer"],
        "num_experts": r["spec"].num_experts, "top_k": r["spec"].top_k,
        "memory_bytes": _memory_report(mem, target, place),
        "fits": fits,
        "capacity": capacity.limits(r, q, place.expert_fraction if place else 1.0),
        "bottleneck": {"prefill": pre["bottleneck"], "decode": dec["bottleneck"]},
        "cost_usd_per_million_tokens": cost_info["usd_per_million_output_tokens"],
        "cost": cost_info,
        "phases": {"prefill": pre, "decode": dec},
        "spread": None if q.trace is None else {
            "ttft_s": _spread(res.ttft_s), "tpot_s": _spread(res.tpot_s),
            "decode_tokens_per_s": _spread(q.batch / res.tpot_s),
            "activated_experts_per_layer": _spread(res.decode.activated_experts),
            "activated_experts_per_layer_prefill": _spread(res.prefill.activated_experts),
        },
        "engine": asdict(profile),
        "collectives": collectives_report(r, q),
        "scenario": scenario,
        "offload": offload_info,
    }


def _offloaded(res, place, r: dict[str, Any], q: Query):
    """The request with the routed-expert misses served from the host (capsim.sim.offload)."""
    t, s, host = r["target"], r["shape"], r["target"].host
    host_peak, share = np.inf, 1.0
    if place.mode == "cpu":
        dt = precision.choose_compute(r["precision"], host.cpu_peak_flop_per_s, host.cpu_id)
        sockets = q.host_sockets or host.sockets
        if not 1 <= sockets <= host.sockets:
            raise CapsimError(f"--host-sockets {sockets}: {t.hardware_id} has {host.sockets} CPU socket(s)")
        share = sockets / host.sockets  # each socket computes from its own DRAM
        host_peak = host.cpu_peak_flop_per_s[dt] * share
    kw = dict(mode=place.mode, link_bytes_per_s=place.link_bytes_per_s,
              host_bandwidth_bytes_per_s=host.dram_bandwidth_bytes_per_s * share, host_peak_flop_per_s=host_peak,
              tp=r["tp"], profile=r["profile"], ssd=_ssd_read(place, host, s, r["profile"]))
    pre = offload_step(res.prefill, res.prefill_timing, s, hit_rate=place.hit_rate_prefill, **kw)
    dec = offload_step(res.decode, res.decode_timing, s, hit_rate=place.hit_rate_decode, **kw)
    o = np.asarray(q.output_len, float)
    res = replace(res, prefill_timing=replace(res.prefill_timing, step_s=pre.step_s),
                  decode_timing=replace(res.decode_timing, step_s=dec.step_s), ttft_s=pre.step_s, tpot_s=dec.step_s,
                  request_s=pre.step_s + np.maximum(o - 1, 0) * dec.step_s)
    info = dict(placement.report(place), decode={
        "device_s": _f(dec.device_s), "offload_s": _f(dec.offload_s), "miss_experts_per_layer": _f(dec.miss_experts_per_layer),
        "miss_bytes": _f(dec.miss_bytes), "host_bound": "memory" if bool(np.all(dec.host_bound)) else "compute"},
        prefill={"device_s": _f(pre.device_s), "offload_s": _f(pre.offload_s), "miss_bytes": _f(pre.miss_bytes)})
    if place.mode == "gpu-fetch":
        for ph in ("decode", "prefill"):
            info[ph].pop("host_bound", None)
    return res, info


def _ssd_read(place, host, s, profile) -> SsdRead | None:
    """How misses come off the drive (``--expert-tier ssd``): its sequential rate to DRAM, its 4 KiB random
    rate (the datasheet's; the sequential rate where none is published: no per-request cost) and the
    engine's request size (one expert weight matrix unless the profile says otherwise)."""
    if place.tier != "ssd":
        return None
    seq = host.ssd_to_dram_bytes_per_s
    request = profile.ssd_read_request_bytes or s.hidden * s.expert_intermediate * s.expert_weight_bytes
    return SsdRead(sequential_bytes_per_s=seq, random_4k_bytes_per_s=host.ssd_random_4k_bytes_per_s or seq,
                   request_bytes=request)


def _memory_report(mem, target: Target, place=None) -> dict[str, Any]:
    """Bytes per device, and the offloaded routed experts (the placement's host_expert_bytes) in DRAM or on the drive."""
    device = {k: _f(getattr(mem, k)) for k in ("weights", "kv_cache", "activations", "reserve", "total", "capacity")}
    if math.isinf(device["capacity"]):
        device["capacity"] = None
    off = {"dram": 0.0, "ssd": 0.0}
    if place is not None:
        off[place.tier] = float(place.host_expert_bytes)
    host = {"used": off["dram"], "capacity": target.host_dram_bytes}
    ssd_cap = target.host.ssd_capacity_bytes if target.host else None
    return {"per_device": True, "device": device, "host_dram": host, "ssd": {"used": off["ssd"], "capacity": ssd_cap}}


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f} GB"


def _no_fit_message(q: Query, r: dict[str, Any], mem, db: HardwareDB) -> str:
    from capsim.fit_advice import suggestions

    t: Target = r["target"]
    head = (f"{r['scenario']['model']} ({r['scenario']['precision']}) needs {_gb(_f(mem.total))} per device "
            f"(weights {_gb(_f(mem.weights))}, KV cache {_gb(_f(mem.kv_cache))}, activations "
            f"{_gb(_f(mem.activations))}) but {t.device_id} has {_gb(t.memory_capacity_bytes)}")
    tips = suggestions(q, r, db)
    return head + ("; it would fit with " + ", or ".join(tips) if tips else "; nothing tried fits")
