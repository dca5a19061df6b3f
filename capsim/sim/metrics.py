"""Utilisation per MoE-CAP (arXiv 2412.07067), done right, for one step on one of n identical devices.

S-MBU = bytes the step must read (weights of the ACTIVATED experts, every other
        weight, the KV cache; activations excluded) / (step time x peak bandwidth)
S-MFU = FLOPs executed (tokens x top-k experts, attention included)
        / (step time x DENSE peak FLOP/s of the compute dtype)
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


def utilisation(step: Step, timing: Timing, *, bandwidth_bytes_per_s, peak_flop_per_s) -> dict[str, np.ndarray]:
    t = timing.step_s
    bw = np.asarray(bandwidth_bytes_per_s, float)
    peak = np.asarray(peak_flop_per_s, float)
    needed = _needed_bytes(step)
    flops = _flops(step)
    routed = step.ops["routed_experts"]
    dense_bytes = needed - routed.weight_bytes + step.all_expert_weight_bytes
    dense_flops = flops - routed.flops + step.all_expert_flops
    return {
        "s_mbu": needed / (t * bw),
        "s_mfu": flops / (t * peak),
        "mbu": dense_bytes / (t * bw),
        "mfu": dense_flops / (t * peak),
        "bytes_per_device": needed,
        "flops_per_device": flops,
    }
