"""Time of a step on one device: per operator the slower of compute and memory, plus overheads; collectives on
their links.

t_op = max(FLOPs / (peak x compute_efficiency x gemm_fraction), (bytes - serial) / (bandwidth x memory_efficiency))
       (peak: the datasheet's, or for a profile with achievable_matmul the device's measured achievable matmul rate,
       capsim.sim.peaks.achievable)
       + serial / (bandwidth x memory_efficiency)
       (attention: bandwidth x attention_efficiency)
       + kernels x (kernel_overhead_s + sync_s_per_thread x threads)
serial = (1 - activation_overlap) x activation bytes: traffic of element-wise kernels an eager engine runs
after each GEMM instead of fusing them into it
gemm_fraction = rows / (rows + gemm_half_rows) for matmuls (1 for other work): a GEMM whose weight
multiplies few rows (decode, or an expert that got few tokens) runs far below the peak; Hockney's
n_1/2 (R. Hockney, Parallel Computing 1991) is the rows at which it reaches half of it. An engine
profile with measured curves (``gemm_curves``, from ``capsim probe --gemm-shapes-of``, one per weight
shape) takes each matrix's fraction from the curve of the nearest shape instead (the op's time is
the sum over its matrices of their FLOPs over their rate).
t_collective = bytes / (link bandwidth x link_efficiency) + calls x (collective_latency_s + link latency per call)
(TP ring, EP all-to-all: exposed by (1 - transfer_overlap); the pipeline hop is on the critical path)
t_step = max(sum(t_op) + sum(t_collective), launches) + step_overhead_s + seqs x per_sequence_overhead_s

GPU serving mechanisms (engine profile parameters, 0 = off):
- memory_half_bytes: each kernel moves memory_half_bytes more than its bytes at the sustained bandwidth
  (Hockney's t = (n + n_1/2) / r_inf, n in bytes: a kernel reaches half the bandwidth at n_1/2, the bytes in
  flight that cover the memory latency); small kernels (decode GEMVs split over TP) fall short of it.
- host_launch_s, cuda_graph_max_batch: launches are asynchronous, so a step the engine launches kernel by kernel
  takes at least kernels x host_launch_s; a decode step of at most cuda_graph_max_batch sequences (per
  data-parallel group) replays a captured CUDA graph and pays no launches.
- per_sequence_overhead_s: the host's per-step work per running sequence (scheduling, input preparation,
  sampling), after step_overhead_s.

An eager engine on the CPU allocator (a profile with ``eager_cpu``) first turns the step into what it runs
(:mod:`capsim.sim.eager_cpu`: executed FLOPs, tensor traffic, element-wise and page-fault time); nothing else
here knows about it. Operators run one after another within a layer; collectives sit on the critical path
unless the engine overlaps them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from capsim.sim import eager_cpu
from capsim.sim.cost import LINK, Step
from capsim.sim.num import div, f, maximum, where

if TYPE_CHECKING:
    from capsim.scenario import Scenario

CATEGORIES = ("compute", "memory", "transfer", "overhead")


@dataclass(slots=True)
class Timing:
    op_s: dict[str, np.ndarray]  # per compute operator, overhead included
    op_compute_s: dict[str, np.ndarray]
    op_memory_s: dict[str, np.ndarray]
    transfer_s: dict[str, np.ndarray]  # per collective, its exposed time on the critical path
    by_category_s: dict[str, np.ndarray]  # compute-bound time, memory-bound time, transfer, overhead
    step_s: np.ndarray

    def bottleneck(self) -> np.ndarray:
        """Index into CATEGORIES of the largest share of the step (broadcast over scenarios)."""
        return np.argmax(np.stack([self.by_category_s[c] for c in CATEGORIES]), axis=0)


def gemm_fraction(rows, k, n, curves) -> np.ndarray:
    """Fraction of the peak a GEMM of ``rows`` over a K x N weight reaches on measured curves
    ((K, N, ((rows, fraction), ...)), ...): the curve of the nearest shape (distance in log K and log N: a
    CPU BLAS picks its kernel by shape, so curves are not blended), linear in log rows within it, flat
    beyond its ends (inf rows: its last point)."""
    rows = np.asarray(rows, dtype=float)
    per_curve, dist = [], []
    for ck, cn, pts in curves:
        r = np.log(np.clip(rows, pts[0][0], pts[-1][0]))
        per_curve.append(np.interp(r, np.log([p[0] for p in pts]), [p[1] for p in pts]))
        dist.append(np.log(np.asarray(k, float) / ck) ** 2 + np.log(np.asarray(n, float) / cn) ** 2)
    if len(curves) == 1:
        return per_curve[0]
    pick = np.argmin(np.broadcast_arrays(*dist), axis=0)
    return np.choose(pick, np.broadcast_arrays(*per_curve)) if np.ndim(pick) else np.broadcast_arrays(*per_curve)[int(pick)]


def _compute_s(op, peak, prof, sixteen=0.0) -> np.ndarray:
    if op.sixteen_bit_share > 0 and sixteen > 0:  # FLOPs on 16-bit fallback weights run at the 16-bit peak
        f16 = op.sixteen_bit_share
        return _compute_s(replace(op, flops=op.flops * (1 - f16), sixteen_bit_share=0.0), peak, prof) + _compute_s(
            replace(op, flops=op.flops * f16, sixteen_bit_share=0.0), sixteen, prof)
    if op.executed_flops is not None:  # the kernel does more than the useful work (a whole score matrix)
        return div(op.executed_flops, peak)
    if op.compute == "matmul" and prof.gemm_curves and op.gemms:
        slow = sum(share / gemm_fraction(op.rows, k, n, prof.gemm_curves) for k, n, share in op.gemms)
        return where(op.flops > 0, div(op.flops * slow, peak), 0.0)
    if op.compute == "matmul" and prof.gemm_half_rows > 0:
        slow = 1.0 + div(prof.gemm_half_rows, f(op.rows))  # 1 / gemm_fraction
        return where(op.flops > 0, div(op.flops * slow, peak), 0.0)
    return div(op.flops, peak)


def _launch_wait(step: Step, prof, device_s) -> np.ndarray | float:
    """Time the device waits on the host launching the step kernel by kernel (0 under a captured graph)."""
    if prof.host_launch_s <= 0.0:
        return 0.0
    launches = sum(op.kernels if op.compute != LINK else op.calls for op in step.ops.values()) * prof.host_launch_s
    local = step.local
    graphed = local is not None and local.decode and prof.cuda_graph_max_batch > 0
    wait = maximum(launches - device_s, 0.0)
    return where(local.b_g <= prof.cuda_graph_max_batch, 0.0, wait) if graphed else wait


def step_time(step: Step, sc: Scenario) -> Timing:
    """The step's time on one device of ``sc`` (its peaks, bandwidths, links and engine profile)."""
    prof, t = sc.profile, sc.target
    if prof.eager_cpu is not None:
        step = eager_cpu.apply(step, sc.shape, prof.eager_cpu, t.page_faults)
    bw = f(t.memory_bandwidth_bytes_per_s) * prof.memory_efficiency
    sync_s = prof.sync_s_per_thread * (t.threads or t.cores)  # per kernel: a barrier of the instance's threads
    links = {"ring": (t.ring_bandwidth_bytes_per_s, sc.ring_call_latency_s, 1.0 - prof.transfer_overlap),
             "alltoall": (t.alltoall_bandwidth_bytes_per_s, sc.alltoall_call_latency_s, 1.0 - prof.transfer_overlap),
             "hop": (sc.hop_bytes_per_s, 0.0, 1.0)}
    op_s, comp_s, mem_s, transfer = {}, {}, {}, {}
    compute_bound = memory_bound = overhead = 0.0
    peaks = sc.peaks.run_at(prof.achievable_matmul)  # datasheet peaks, or the device's achievable matmul rates
    for name, op in step.ops.items():
        if op.compute == LINK:
            link_bw, latency, exposed = links[op.link]
            seconds = where(op.link_bytes > 0, div(op.link_bytes, f(link_bw) * prof.link_efficiency)
                            + op.calls * (prof.collective_latency_s + latency), 0.0)
            transfer[name] = seconds * exposed
            continue
        tc = _compute_s(op, f(peaks[op.compute]) * prof.compute_efficiency, prof,
                        peaks.sixteen * prof.compute_efficiency)
        op_bw = bw if op.compute != "attention" else bw / prof.memory_efficiency * prof.attention_efficiency
        tm = div(op.weight_bytes + op.kv_bytes * prof.kv_traffic_factor + op.act_bytes
                 + op.kernels * prof.memory_half_bytes, op_bw)
        serial = (1.0 - prof.activation_overlap) * div(op.act_bytes, op_bw)  # element-wise kernels after the GEMM
        kernels = op.kernels + prof.kernels_per_activated_expert * op.activated_per_layer
        ov = kernels * (prof.kernel_overhead_s + sync_s) + op.overhead_s
        comp_s[name], mem_s[name] = tc, tm
        op_s[name] = maximum(tc, tm - serial) + serial + op.serial_s + ov
        compute_bound = compute_bound + where(tc > tm, tc, 0.0)
        memory_bound = memory_bound + where(tc > tm, 0.0, tm)
        overhead = overhead + ov
    t_transfer = sum(transfer.values())
    device_s = sum(op_s.values()) + t_transfer
    launch_wait = _launch_wait(step, prof, device_s)
    host_s = prof.step_overhead_s + prof.per_sequence_overhead_s * (0.0 if step.local is None else step.local.b_g)
    overhead = overhead + host_s + launch_wait
    step_s = device_s + launch_wait + host_s
    cats = {"compute": compute_bound + 0 * step_s, "memory": memory_bound + 0 * step_s,
            "transfer": t_transfer + 0 * step_s, "overhead": overhead + 0 * step_s}
    return Timing(op_s, comp_s, mem_s, transfer, cats, step_s)
