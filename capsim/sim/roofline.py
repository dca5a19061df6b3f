"""Time of a step on one device: per operator the slower of compute and memory, plus overheads.

t_op = max(FLOPs / (peak x compute_efficiency x gemm_fraction), (bytes - serial) / (bandwidth x memory_efficiency))
       + serial / (bandwidth x memory_efficiency)
       (attention: bandwidth x attention_efficiency)
       + kernels x kernel_overhead_s + fresh bytes x first_touch_s_per_byte
       + sum over fresh tensors of max(0, size - retained_free_bytes) x refault_s_per_byte
(a math-path attention that materialises its scores: FLOPs over the whole score matrix, and serial adds
score elements x math_attention_s_per_score)
serial = (1 - activation_overlap) x activation bytes: traffic of element-wise kernels an eager engine runs
after each GEMM instead of fusing them into it
gemm_fraction = rows / (rows + gemm_half_rows) for matmuls (1 for other work): a GEMM whose weight
multiplies few rows (decode, or an expert that got few tokens) runs far below the peak; Hockney's
n_1/2 (R. Hockney, Parallel Computing 1991) is the rows at which it reaches half of it. An engine
profile with measured curves (``gemm_curves``, from ``capsim probe --gemm-shapes-of``, one per weight
shape) takes each matrix's fraction from the curve of the nearest shape instead (the op's time is
the sum over its matrices of their FLOPs over their rate).
t_collective = bytes / (link bandwidth x link_efficiency) + calls x collective_latency_s
t_step = sum(t_op) + (1 - transfer_overlap) x sum(t_collective) + step_overhead_s

Operators run one after another within a layer; collectives (TP all-reduce, EP
all-to-all) sit on the critical path unless the engine overlaps them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim.engines import EngineProfile
from capsim.sim.ops import ALLREDUCES_PER_LAYER, Step

CATEGORIES = ("compute", "memory", "transfer", "overhead")


@dataclass(frozen=True)
class Timing:
    op_s: dict[str, np.ndarray]  # per operator, overhead included
    op_compute_s: dict[str, np.ndarray]
    op_memory_s: dict[str, np.ndarray]
    transfer_s: dict[str, np.ndarray]  # exposed (not overlapped) collective time
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


# A gated expert's gate and up outputs are one allocation: transformers' experts hold gate_up_proj as one
# (experts, 2 x intermediate, hidden) matrix and the grouped GEMM writes one output (torch profiler:
# aten::empty_strided of 2 x intermediate x top-k elements per token; scripts/alloc_inventory.py)
GATE_UP_OUTPUTS = 2


def expert_tensors(op, profile: EngineProfile) -> tuple[tuple[np.ndarray | float, float], ...]:
    """(bytes of one tensor, tensors per step) an unfused engine's expert block allocates (none when fused);
    the first two intermediate-wide tensors are the one gate_up output."""
    hidden, inter = op.assignment_tensor_bytes
    n_inter = profile.expert_intermediate_tensors
    if not (profile.expert_hidden_tensors or n_inter) or not op.moe_layers:
        return ()
    gate_up = ((GATE_UP_OUTPUTS * inter, op.moe_layers),) if n_inter >= GATE_UP_OUTPUTS else ()
    rest = n_inter - GATE_UP_OUTPUTS if gate_up else n_inter
    return ((hidden, profile.expert_hidden_tensors * op.moe_layers), *gate_up, (inter, rest * op.moe_layers))


# torch's math SDPA (aten _scaled_dot_product_attention_math, measured with the torch profiler:
# scripts/alloc_inventory.py, validation/FAULTS.md), per layer: Q K^T (the causal mask is added in place) and its
# softmax; _safe_softmax's isneginf (one bool byte per score); Q and K each scaled by sqrt(scale); P V and one
# more copy of the value width (its output made contiguous)
MATH_ATTENTION_SCORE_TENSORS = 2
BOOL_BYTES = 1  # torch.bool
MATH_ATTENTION_OUTPUT_TENSORS = 2


def materialises_scores(op, profile: EngineProfile) -> bool:
    """Whether this attention op runs as a math path that materialises its scores (engine profile:
    math_attention_unequal_head_dims, for ops whose query/key and value head dims differ)."""
    return bool(profile.math_attention_unequal_head_dims >= 0.5 and op.head_dims_differ and op.layers)


def attention_tensors(op, profile: EngineProfile) -> tuple[tuple[np.ndarray | float, float], ...]:
    """(bytes of one tensor, tensors per step) a materialising attention allocates (none when fused)."""
    if not materialises_scores(op, profile):
        return ()
    return ((op.score_tensor_bytes, MATH_ATTENTION_SCORE_TENSORS * op.layers),
            (op.score_elements * BOOL_BYTES, op.layers),
            (op.key_tensor_bytes, op.layers), (op.query_tensor_bytes, op.layers),
            (op.output_tensor_bytes, MATH_ATTENTION_OUTPUT_TENSORS * op.layers))


def score_elementwise_s(op, profile: EngineProfile) -> np.ndarray | float:
    """A materialising attention's element-wise work on its scores (scale, causal mask, softmax and torch's
    safe-softmax checks), timed per score element by ``capsim probe`` (math_attention_s_per_score)."""
    if not (materialises_scores(op, profile) and profile.math_attention_s_per_score):
        return 0.0
    return op.score_elements * op.layers * profile.math_attention_s_per_score


def activation_bytes(op, profile: EngineProfile) -> np.ndarray | float:
    """The op's activation traffic: its counted inputs, outputs and intermediates (an unfused expert block:
    instead, each tensor it allocates written once and read once), plus a materialising attention's tensors
    (each written once and read once; when their element-wise work is timed per score element instead,
    score_elementwise_s, that time stands for their traffic)."""
    experts = expert_tensors(op, profile)
    base = op.act_bytes if not experts else sum(2.0 * size * count for size, count in experts)
    if profile.math_attention_s_per_score:
        return base
    return base + sum(2.0 * size * count for size, count in attention_tensors(op, profile))


def _single_allocs(op, profile: EngineProfile) -> tuple[tuple[np.ndarray | float, float], ...]:
    """The cache's tensors and (an eager engine) the layer code's: each freed before the next is allocated."""
    return tuple(op.allocs) + (tuple(op.eager_allocs) if profile.eager_layer_tensors >= 0.5 else ())


def fresh_allocs(op, profile: EngineProfile) -> tuple[tuple[np.ndarray | float, float], ...]:
    """(bytes of one tensor, tensors per step) of every tensor the op allocates under this engine."""
    return _single_allocs(op, profile) + expert_tensors(op, profile) + attention_tensors(op, profile)


def fresh_bytes(op, profile: EngineProfile) -> np.ndarray | float:
    """Bytes per step of the op's tensors at or above the allocator's mmap threshold: glibc malloc maps such a
    request afresh (malloc.c: nb >= mp_.mmap_threshold) and unmaps it on free, so its pages fault in every step."""
    return sum((np.where(size >= profile.fresh_alloc_threshold_bytes, size * count, 0.0)
                for size, count in fresh_allocs(op, profile)), 0.0)


def fresh_page_s(op, profile: EngineProfile) -> np.ndarray | float:
    """First-touch time of the op's fresh pages: each fresh byte at first_touch_s_per_byte, and on a machine
    that takes freed memory back, the bytes beyond the retained free memory (refault_bytes) at
    refault_s_per_byte more."""
    if not profile.first_touch_s_per_byte:
        return 0.0
    return (fresh_bytes(op, profile) * profile.first_touch_s_per_byte
            + refault_bytes(op, profile) * profile.refault_s_per_byte)


def refault_bytes(op, profile: EngineProfile) -> np.ndarray | float:
    """Fresh bytes that fault in beyond the freed memory the machine keeps backed (retained_free_bytes; the
    probe: after seconds of compute, refilling freed memory costs a hypervisor fault beyond that much). A block
    whose tensors are alive together needs them backed at once: the expert block and a math attention, once
    per layer (below); every other tensor counts alone."""
    if not profile.refault_s_per_byte:
        return 0.0
    threshold, retained = profile.fresh_alloc_threshold_bytes, profile.retained_free_bytes

    def beyond(size):
        return np.maximum(np.where(size >= threshold, size, 0.0) - retained, 0.0)

    total = sum((count * beyond(size) for size, count in _single_allocs(op, profile)), 0.0)
    if expert_tensors(op, profile):
        # grouped_mm_experts_forward keeps the gathered inputs (hidden wide) to the end: alive with the
        # intermediate-wide tensors at the gating product, and with the other hidden-wide ones at the un-permute
        hidden, inter = op.assignment_tensor_bytes
        held = np.maximum(hidden + profile.expert_intermediate_tensors * inter, profile.expert_hidden_tensors * hidden)
        total = total + op.moe_layers * beyond(held)
    if materialises_scores(op, profile):  # the scores, their softmax and isneginf, alive together
        held = MATH_ATTENTION_SCORE_TENSORS * op.score_tensor_bytes + op.score_elements * BOOL_BYTES
        total = total + op.layers * beyond(held)
    return total


def step_time(
    step: Step,
    *,
    peak_flop_per_s: dict[str, np.ndarray],  # "matmul", "attention", "vector"
    bandwidth_bytes_per_s,
    ring_bandwidth_bytes_per_s,
    alltoall_bandwidth_bytes_per_s,
    layers: int,
    moe_layers: int,
    profile: EngineProfile,
) -> Timing:
    bw = np.asarray(bandwidth_bytes_per_s, dtype=float) * profile.memory_efficiency
    op_s, comp_s, mem_s = {}, {}, {}
    compute_bound = memory_bound = overhead = 0.0
    for name, op in step.ops.items():
        peak = np.asarray(peak_flop_per_s[op.compute], dtype=float) * profile.compute_efficiency
        if op.compute == "matmul" and profile.gemm_curves and op.gemms:
            slow = sum(share / gemm_fraction(op.rows, k, n, profile.gemm_curves) for k, n, share in op.gemms)
            tc = np.where(op.flops > 0, op.flops * slow / peak, 0.0)
        elif op.compute == "matmul" and profile.gemm_half_rows > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                slow = 1.0 + profile.gemm_half_rows / np.asarray(op.rows, dtype=float)  # 1 / gemm_fraction
            tc = np.where(op.flops > 0, op.flops * slow / peak, 0.0)
        elif materialises_scores(op, profile):
            tc = op.materialised_flops / peak  # the whole score matrix, masked half included
        else:
            tc = op.flops / peak
        op_bw = bw if op.compute != "attention" else bw / profile.memory_efficiency * profile.attention_efficiency
        act = activation_bytes(op, profile)
        tm = (op.weight_bytes + op.kv_bytes * profile.kv_traffic_factor + act) / op_bw
        t_act = act / op_bw
        serial = (1.0 - profile.activation_overlap) * t_act  # element-wise kernels after the GEMM (eager)
        kernels = op.kernels + profile.kernels_per_activated_expert * op.activated_per_layer
        ov = kernels * profile.kernel_overhead_s + fresh_page_s(op, profile)
        comp_s[name], mem_s[name] = tc, tm
        # plus a math attention's element-wise work on its scores, after its matmuls
        op_s[name] = np.maximum(tc, tm - serial) + serial + score_elementwise_s(op, profile) + ov
        compute_bound = compute_bound + np.where(tc > tm, tc, 0.0)
        memory_bound = memory_bound + np.where(tc > tm, 0.0, tm)
        overhead = overhead + ov
    link = profile.link_efficiency
    with np.errstate(divide="ignore"):
        ar = step.transfer_bytes["tp_allreduce"]
        a2a = step.transfer_bytes["ep_alltoall"]
        t_ar = np.where(ar > 0, ar / (np.asarray(ring_bandwidth_bytes_per_s, float) * link)
                        + ALLREDUCES_PER_LAYER * layers * profile.collective_latency_s, 0.0)
        t_a2a = np.where(a2a > 0, a2a / (np.asarray(alltoall_bandwidth_bytes_per_s, float) * link)
                         + 2 * moe_layers * profile.collective_latency_s, 0.0)
    exposed = 1.0 - profile.transfer_overlap
    transfer = {"tp_allreduce": t_ar * exposed, "ep_alltoall": t_a2a * exposed}
    t_transfer = transfer["tp_allreduce"] + transfer["ep_alltoall"]
    overhead = overhead + profile.step_overhead_s
    step_s = sum(op_s.values()) + t_transfer + profile.step_overhead_s
    cats = {"compute": compute_bound + 0 * step_s, "memory": memory_bound + 0 * step_s,
            "transfer": t_transfer + 0 * step_s, "overhead": overhead + 0 * step_s}
    return Timing(op_s, comp_s, mem_s, transfer, cats, step_s)
