"""Routed experts that do not live in device memory: fetched over the host link, or computed by the CPU.

A step's routed experts split into hits (resident in device memory, priced by the roofline
as usual) and misses (``activated x (1 - hit_rate)`` experts per MoE layer). Two ways engines
serve a miss:

- ``gpu-fetch`` (MoE-Infinity, DeepSpeed/HF offload, llama.cpp without -ot): the expert's
  weights cross the host link (DRAM -> PCIe/C2C -> HBM; from an SSD the path through DRAM),
  then the device computes it as usual: extra time = miss bytes / (link bandwidth x
  link_efficiency) + misses x expert_fetch_s (the engine's own work per fetch).
- ``cpu`` (KTransformers, llama.cpp ``-ot exps=CPU``): the CPU sockets compute the missed
  experts from DRAM, the device does the rest; extra time = max(miss bytes / (DRAM bandwidth x
  host_memory_efficiency), miss FLOPs / (CPU peak x host_compute_efficiency)) plus the hidden
  states crossing the link twice per MoE layer, plus the routed experts' kernels x sync_s_per_thread x the
  host threads (a barrier per kernel), and the device's share of routed-expert time
  shrinks to the hit fraction.

An engine that keeps the KV cache in host memory (``kv_on_host``: MoE-Gen) also moves each decode step's cached
K/V over the link for the GPU's share of the attention, or computes a share on the CPU (:func:`_host_kv`).

The two sides overlap by the engine's ``offload_overlap`` (fraction of the shorter side hidden
under the longer; 0 = strictly one after the other, 1 = fully concurrent):
``t = t_device + t_offload - offload_overlap x min(t_device, t_offload)``.

Experts on a drive (``ssd``, a :class:`capsim.sim.ssd.SsdRead`): the miss bytes are read at the drive's
rate for the engine's request size (:mod:`capsim.sim.ssd`). ``gpu-fetch`` streams them on through DRAM to
the link, so the slower of the two sets the time: ``max(link time, drive time)``; ``cpu`` computes from
the pages once they are read, so the drive time comes first: ``drive time + max(t_mem, t_cmp)``. Without
``ssd`` (experts in DRAM) nothing changes.
Pure numpy; every argument may be an array of scenarios.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim.engines import EngineProfile
from capsim.sim.cost import Step
from capsim.sim.roofline import Timing
from capsim.sim.shape import Shape
from capsim.sim.ssd import SsdRead

MODES = ("gpu-fetch", "cpu")


@dataclass(frozen=True)
class OffloadTiming:
    step_s: np.ndarray  # the step with offload
    device_s: np.ndarray  # device side (hits only, in cpu mode)
    offload_s: np.ndarray  # link transfer (gpu-fetch) or CPU expert compute + hidden-state transfers (cpu)
    miss_experts_per_layer: np.ndarray
    miss_bytes: np.ndarray  # expert weight bytes served from the host per step
    host_bound: np.ndarray  # cpu mode: True when the CPU side is bound by DRAM bandwidth (not compute)


def offload_step(step: Step, timing: Timing, s: Shape, *, hit_rate, mode: str, link_bytes_per_s,
                 host_bandwidth_bytes_per_s=np.inf, host_peak_flop_per_s=np.inf, tp=1,
                 profile: EngineProfile, ssd: SsdRead | None = None, step_s=None, host_threads: int = 0
                 ) -> OffloadTiming:
    """``step_s``: the device's time of the step (default ``timing.step_s``; the request pipeline passes it
    without the hop between pipeline stages, which comes after)."""
    if mode not in MODES:
        raise ValueError(f"offload mode {mode!r}: expected one of {MODES}")
    h = np.clip(np.asarray(hit_rate, dtype=float), 0.0, 1.0)
    miss_frac = 1.0 - h
    routed = step.ops["routed_experts"]
    per_expert_bytes = s.expert_params * s.expert_weight_bytes * s.moe_layers / np.asarray(tp, float)
    miss = step.activated_experts * miss_frac
    miss_bytes = miss * per_expert_bytes
    link = np.asarray(link_bytes_per_s, dtype=float) * profile.link_efficiency
    t_routed = timing.op_s["routed_experts"]
    step_s = timing.step_s if step_s is None else step_s
    if mode == "gpu-fetch":
        device = step_s
        off = miss_bytes / link if ssd is None else np.maximum(miss_bytes / link, ssd.seconds(miss_bytes))
        if profile.kv_on_host and step.local is not None and step.local.decode:
            device, off = _host_kv(step, timing, profile, device, off, link, host_bandwidth_bytes_per_s,
                                   host_peak_flop_per_s)
        off = off + miss * s.moe_layers * profile.expert_fetch_s  # each fetch's own work, per missed expert
        host_bound = np.zeros_like(off, dtype=bool)
    else:
        device = step_s - miss_frac * t_routed
        t_mem = miss_bytes / (np.asarray(host_bandwidth_bytes_per_s, float) * profile.host_memory_efficiency)
        t_cmp = miss_frac * routed.flops / (np.asarray(host_peak_flop_per_s, float) * profile.host_compute_efficiency)
        # hidden states to the CPU and results back, per MoE layer, for the step's tokens
        hidden = 2 * routed.act_bytes / np.maximum(s.top_k * s.expert_io_width, 1) * s.hidden
        t_x = np.where(miss_frac > 0, hidden / link, 0.0)
        # the CPU's threads meet at a barrier after each of its kernels (profile sync_s_per_thread)
        t_sync = miss_frac * routed.kernels * profile.sync_s_per_thread * host_threads  # the missed share's kernels
        off = np.maximum(t_mem, t_cmp) + t_x + t_sync + (0.0 if ssd is None else ssd.seconds(miss_bytes))
        host_bound = t_mem >= t_cmp
    total = device + off - profile.offload_overlap * np.minimum(device, off)
    return OffloadTiming(total, device, off, miss, miss_bytes, host_bound)


# the operators whose work reads the cached tokens: the attention itself, and MLA's re-expansion of the cached
# latents (capsim.sim.ops.attention), which the CPU must do too for its share (MoE-Gen sets w = 0 for MLA models)
KV_OPS = ("attn_scores", "mla_expand")


def _host_kv(step: Step, timing: Timing, profile: EngineProfile, device, off, link, host_bw, host_peak):
    """A decode step of an engine whose KV cache lives in host memory (``kv_on_host``, MoE-Gen): the GPU's
    share (1 - w) of the attention reads its cached K/V after they cross the host link, behind the expert
    weights on the same copy engine (link time A + (1 - w) K, A for the weights, K for all the K/V); the CPU
    computes the share w from DRAM beside the GPU and the link, at the slower of its bandwidth and its compute
    (w C, C for all of it). The engine profiles w to balance the two: w* = (A + K) / (K + C) where
    A + (1 - w) K = w C, no more than the profile's ``cpu_attention_share`` (0: the GPU does all).
    Returns (device, off) seconds."""
    att = [n for n in KV_OPS if n in step.ops]
    kv = sum(step.ops[n].kv_bytes for n in att)
    flops = sum(step.ops[n].flops for n in att)
    k = kv / link
    if profile.cpu_attention_share > 0:
        c = np.maximum(kv / (np.asarray(host_bw, float) * profile.host_memory_efficiency),
                       flops / (np.asarray(host_peak, float) * profile.host_compute_efficiency))
        w = np.clip((off + k) / np.maximum(k + c, 1e-30), 0.0, profile.cpu_attention_share)
    else:
        c, w = 0.0, 0.0
    device = device - w * sum(timing.op_s[n] for n in att)
    return device, np.maximum(off + (1.0 - w) * k, w * c)
