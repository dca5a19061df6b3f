"""Utilisation per MoE-CAP (arXiv 2412.07067), done right, for one step on one of n identical devices.

S-MBU = bytes the step must read (weights of the ACTIVATED experts, every other
        weight, the KV cache; activations excluded) / (step time x peak bandwidth)
S-MFU = FLOPs executed (tokens x top-k experts, attention included)
        / (step time x DENSE peak FLOP/s of the compute dtype); when operators run at
        different peaks (matmuls in fp8, attention in bf16), each operator's FLOPs are
        counted against its own peak: sum(FLOPs_op / peak_op) / step time, which is
        MoE-CAP's figure when all share one dtype and can never exceed 1
MBU, MFU: the same with every routed expert counted as read (MBU) or run by every
token (MFU), the dense-model figures MoE-CAP shows overstate the work of a
sparse step; they may exceed 1, which is the point.
Per-device numerators over per-device peaks equal the all-device formulas
because the devices are symmetric.
"""

from __future__ import annotations

import numpy as np

from capsim.sim.ops import Step
from capsim.sim.roofline import Timing


def _needed_bytes(step: Step) -> np.ndarray:
    return sum(op.weight_bytes + op.kv_bytes for op in step.ops.values())


def _flops(step: Step) -> np.ndarray:
    return sum(op.flops for op in step.ops.values())


def _peak_seconds(step: Step, peaks) -> np.ndarray:
    """Seconds the step's FLOPs take at each operator's own dense peak."""
    get = (lambda op: peaks[op.compute]) if isinstance(peaks, dict) else (lambda op: peaks)
    return sum(op.flops / np.asarray(get(op), float) for op in step.ops.values())


def utilisation(step: Step, timing: Timing, *, bandwidth_bytes_per_s, peak_flop_per_s) -> dict[str, np.ndarray]:
    """``peak_flop_per_s``: the dict of peaks the step ran at ("matmul", "attention", "vector"), or one number."""
    t = timing.step_s
    bw = np.asarray(bandwidth_bytes_per_s, float)
    matmul = peak_flop_per_s["matmul"] if isinstance(peak_flop_per_s, dict) else peak_flop_per_s
    needed = _needed_bytes(step)
    flops = _flops(step)
    busy = _peak_seconds(step, peak_flop_per_s)
    routed = step.ops["routed_experts"]
    dense_bytes = needed - routed.weight_bytes + step.all_expert_weight_bytes
    dense_busy = busy + (step.all_expert_flops - routed.flops) / np.asarray(matmul, float)
    return {
        "s_mbu": needed / (t * bw),
        "s_mfu": busy / t,
        "mbu": dense_bytes / (t * bw),
        "mfu": dense_busy / t,
        "bytes_per_device": needed,
        "flops_per_device": flops,
    }
