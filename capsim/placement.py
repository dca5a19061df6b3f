"""Where the routed experts live when they do not all fit in device memory, and how often a step finds them.

``--offload gpu-fetch|cpu`` keeps ``--expert-cache N`` experts of every MoE layer resident on each
device (default: as many as fit beside the rest of the model, the KV cache and activations) and
the rest in host DRAM (``--expert-tier dram``) or on an NVMe drive (``ssd``: a miss is read from the drive,
then sent on to the device (``gpu-fetch``) or computed by the CPU from the pages read (``cpu``); the read is
priced by request size, :mod:`capsim.sim.ssd`). The hit rate of a step is the fraction of its activated
experts that are resident:

- without a trace, routing is uniform and every expert equally likely, so any policy (LRU, LFU
  or a static set) hits N / E of the time in the long run;
- with ``--trace``, the policy (``--cache-policy lru|lfu|static``) is replayed over the trace's
  decode steps at the query's batch (:mod:`capsim.offload.cache`).

The prefill pass touches nearly every expert, so its hit rate is the resident fraction N / E.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from capsim.capacity import per_device
from capsim.errors import CapsimError
from capsim.sim.offload import MODES
from capsim.sim.shape import weight_bytes

TIERS = ("dram", "ssd")
POLICIES = ("lru", "lfu", "static")
TRACE_CACHE_STEPS = 2000  # decode steps replayed through the cache (enough for a stable hit rate)
TRACE_CACHE_WARMUP = 100  # steps that fill the cache before hits are counted


@dataclass(frozen=True)
class Placement:
    mode: str
    tier: str
    policy: str
    experts_resident: int  # per MoE layer, on each device
    num_experts: int
    hit_rate_decode: float
    hit_rate_prefill: float
    hit_rate_source: str
    host_expert_bytes: float  # routed-expert bytes kept off the device
    link_bytes_per_s: float  # host tier -> device
    link_path: str

    @property
    def expert_fraction(self) -> float:
        return self.experts_resident / self.num_experts


def _check(q) -> None:
    if q.offload not in MODES:
        raise CapsimError(f"--offload {q.offload}: expected one of {', '.join(MODES)}")
    if q.expert_tier not in TIERS:
        raise CapsimError(f"--expert-tier {q.expert_tier}: expected one of {', '.join(TIERS)}")
    if q.cache_policy not in POLICIES:
        raise CapsimError(f"--cache-policy {q.cache_policy}: expected one of {', '.join(POLICIES)}")


def _fits(r: dict[str, Any], q, resident: int) -> bool:
    return bool(per_device(r, q, q.batch, q.input_len, resident / r["shape"].num_experts).fits)


def most_resident(r: dict[str, Any], q) -> int:
    """The largest expert cache (experts per MoE layer) that fits beside everything else; -1 if none."""
    lo, hi = -1, r["shape"].num_experts
    while lo < hi:  # memory grows with the cache: binary search the last size that fits
        mid = (lo + hi + 1) // 2
        if _fits(r, q, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def plan(q, r: dict[str, Any]) -> Placement:
    _check(q)
    s, t = r["shape"], r["target"]
    if not s.num_experts:
        raise CapsimError(f"--offload: {r['scenario']['model']} has no routed experts to offload")
    if t.nodes > 1:
        raise CapsimError(f"--offload: expert offload is modelled on one node; drop --nodes {t.nodes} or --offload")
    if t.host is None:
        raise CapsimError(f"--offload: {t.hardware_id} has no host CPU and DRAM in the database; name a system "
                          "(e.g. workstation-rtx-4090, ktransformers-testbed, dgx-h100)")
    if q.offload == "cpu" and t.host.sockets == 0:
        raise CapsimError(f"--offload cpu: {t.hardware_id} is a bare device with no host CPU in the database; name a "
                          "system (e.g. workstation-rtx-4090, ktransformers-testbed)")
    e = s.num_experts
    if q.expert_cache is None:
        resident = most_resident(r, q)
        if resident < 0:
            raise CapsimError(_no_room(r, q))
    else:
        resident = q.expert_cache
        if not 0 <= resident <= e:
            raise CapsimError(f"--expert-cache {resident}: expected 0..{e} experts per MoE layer")
        if not _fits(r, q, resident):
            best = most_resident(r, q)
            hint = f"at most --expert-cache {best} fits" if best >= 0 else _no_room(r, q)
            raise CapsimError(f"--expert-cache {resident}: the placement does not fit in {t.device_id} memory; {hint}")
    host_bytes = weight_bytes(s)["routed_experts"] * (1 - resident / e)
    tier_cap = t.host.dram_capacity_bytes if q.expert_tier == "dram" else t.host.ssd_capacity_bytes
    if tier_cap is not None and host_bytes > tier_cap:
        raise CapsimError(f"--expert-tier {q.expert_tier}: {host_bytes / 1e9:.1f} GB of experts off the device, "
                          f"but {t.hardware_id} has {tier_cap / 1e9:.1f} GB of {q.expert_tier}")
    if q.expert_tier == "ssd" and t.host.ssd_to_device_bytes_per_s is None:
        raise CapsimError(f"--expert-tier ssd: {t.hardware_id} has no drive in the database; name a system with "
                          "one (e.g. workstation-rtx-4090, dgx-h100) or use --expert-tier dram")
    if q.expert_tier == "ssd" and q.offload == "gpu-fetch":
        link, link_path = t.host.ssd_to_device_bytes_per_s, f"{t.host.ssd_id} -> DRAM -> device"
    else:  # experts fetched from DRAM, or computed by the CPU (hidden states cross this link)
        link, link_path = t.host.to_device_bytes_per_s, t.host.to_device_path
        if q.expert_tier == "ssd":
            link_path = f"{t.host.ssd_id} -> DRAM (the CPU computes the experts it reads); hidden states: {link_path}"
    h_dec, source = resident / e, "uniform routing: resident / experts"
    if q.trace is not None and 0 < resident < e:
        h_dec, source = _trace_hit_rate(q, r, resident)
    return Placement(q.offload, q.expert_tier, q.cache_policy, resident, e, h_dec, resident / e, source,
                     host_bytes, link, link_path)


def _trace_hit_rate(q, r: dict[str, Any], resident: int) -> tuple[float, str]:
    from capsim.offload.cache import simulate
    from capsim.offload.steps import decode_steps
    from capsim.traces.format import open_trace

    trace = open_trace(q.trace)
    touched = decode_steps(trace, q.batch, steps=TRACE_CACHE_STEPS + TRACE_CACHE_WARMUP)
    warm = min(TRACE_CACHE_WARMUP, max(0, len(touched) - 1))
    stats = simulate(touched, resident, q.cache_policy, warmup_steps=warm)
    return float(stats.hit_rate), (f"{q.cache_policy} cache of {resident} experts per layer replayed over "
                                   f"{len(touched) - warm} decode steps of the trace at batch {q.batch}")


def _no_room(r: dict[str, Any], q) -> str:
    t = r["target"]
    need = float(np.asarray(per_device(r, q, q.batch, q.input_len, 0.0).total))
    return (f"even with every routed expert off the device, {need / 1e9:.1f} GB is needed per device and "
            f"{t.device_id} has {t.memory_capacity_bytes / 1e9:.1f} GB; try a smaller --batch or context, or "
            f"a lower --precision")


def report(p: Placement) -> dict[str, Any]:
    return {"mode": p.mode, "expert_tier": p.tier, "cache_policy": p.policy,
            "experts_resident_per_layer": p.experts_resident, "num_experts": p.num_experts,
            "hit_rate_decode": p.hit_rate_decode, "hit_rate_prefill": p.hit_rate_prefill,
            "hit_rate_source": p.hit_rate_source, "host_expert_bytes": p.host_expert_bytes,
            "link_bytes_per_s": p.link_bytes_per_s if math.isfinite(p.link_bytes_per_s) else None,
            "link_path": p.link_path}
