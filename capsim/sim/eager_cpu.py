"""An eager engine on the CPU allocator: the tensors it allocates, the pages they fault in, its math attention.

Hugging Face transformers without compile, on torch's CPU allocator (glibc malloc), does what a fused GPU
engine does not, and the time it costs is measured, not fitted (validation/FAULTS.md):

- every intermediate of a layer is a tensor of its own (:mod:`capsim.model.eager`: norms, projections,
  rotary embedding, residual adds), and an unfused expert block allocates per token-expert assignment
  (``expert_hidden_tensors`` / ``expert_intermediate_tensors`` wide ones), each written once and read once;
  a KV cache grown by torch.cat allocates each layer's cache tensors anew every step (and expanded MLA decode
  kv_b_proj's output and the new key tensor);
- glibc maps a request at or above its mmap threshold afresh (malloc.c: nb >= mp_.mmap_threshold) and unmaps
  it on free, so those tensors' pages fault in every step: fresh bytes x the machine's first-touch cost;
- on a machine whose hypervisor takes freed memory back (virtio-balloon free page reporting), what a block
  holds at once beyond the memory the machine keeps backed faults in again at the refault cost: the expert
  block and a math attention once per layer, every other tensor alone (the machine's ``MemoryFaults``,
  measured by ``capsim probe``: cpu.memory.first_touch and cpu.memory.reclaim);
- when the query/key head dim differs from the value's (MLA), torch's CPU SDPA takes its math path (flash
  attention needs equal head dims: aten/src/ATen/native/transformers/sdp_utils_cpp.cpp,
  check_head_dim_size_cpp): it computes the WHOLE score matrix (masked half included) and runs its scale,
  mask, softmax and safe-softmax kernels at ``math_attention_s_per_score`` per score element (probed), or,
  without that figure, counts its tensors' traffic.

:func:`apply` turns a step's operators into what this engine runs (executed FLOPs, activation traffic, the
unfused element-wise time and the page-fault time); :func:`capsim.sim.roofline.step_time` calls it in one
line when the engine profile has an ``eager_cpu`` section. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from capsim.sim.cost import Step
from capsim.sim.shape import Shape

Tensors = tuple[tuple[Any, Any], ...]  # ((bytes of one tensor, tensors per step), ...)

# A gated expert's gate and up outputs are one allocation: transformers' experts hold gate_up_proj as one
# (experts, 2 x intermediate, hidden) matrix and the grouped GEMM writes one output (torch profiler:
# aten::empty_strided of 2 x intermediate x top-k elements per token; scripts/alloc_inventory.py)
GATE_UP_OUTPUTS = 2
# torch's math SDPA (aten _scaled_dot_product_attention_math, measured with the torch profiler:
# scripts/alloc_inventory.py, validation/FAULTS.md), per layer: Q K^T (the causal mask is added in place) and its
# softmax; _safe_softmax's isneginf (one bool byte per score); Q and K each scaled by sqrt(scale); P V and one
# more copy of the value width (its output made contiguous)
MATH_ATTENTION_SCORE_TENSORS = 2
BOOL_BYTES = 1  # torch.bool
MATH_ATTENTION_OUTPUT_TENSORS = 2


@dataclass(frozen=True)
class OpTensors:
    """What one operator allocates under an eager engine, per step on one device."""

    act_bytes: Any = 0.0  # the operator's counted activation traffic (fused io widths)
    allocs: Tensors = ()  # the cache's tensors (and expanded MLA's), each freed before the next is allocated
    eager_allocs: Tensors = ()  # the layer code's per-token tensors (:mod:`capsim.model.eager`)
    # routed experts: bytes of one hidden-wide and one intermediate-wide tensor per assignment, over one MoE
    # layer's assignments on the device, and the MoE layers
    assignment_tensor_bytes: tuple[Any, Any] = (0.0, 0.0)
    moe_layers: float = 0.0
    # attention: per layer, one (query, key) score tensor, one key tensor (heads x qk per cached and new token),
    # one query-wide and one output-wide tensor; the score elements, the FLOPs of the whole score matrix
    score_tensor_bytes: Any = 0.0
    key_tensor_bytes: Any = 0.0
    query_tensor_bytes: Any = 0.0
    output_tensor_bytes: Any = 0.0
    score_elements: Any = 0.0
    materialised_flops: Any = 0.0
    head_dims_differ: bool = False
    layers: float = 0.0


def inventory(step: Step, s: Shape) -> dict[str, OpTensors]:
    """Per operator, the tensors an eager forward of this step allocates (from the step's work on the device)."""
    w, ab, L, z = step.local, s.act_bytes, s.layers, step.local.zero
    tp, t_g, kv_g = w.tp, w.t_g, w.kv_g
    out = {name: OpTensors(act_bytes=op.act_bytes) for name, op in step.ops.items()}
    for name in out:  # the eager forward's per-token tensors, per device
        eager = tuple((t_g * t.width * ab / (tp if t.split else 1.0), t.count + z) for t in s.eager_of(name))
        out[name] = replace(out[name], eager_allocs=eager)
    # A cache grown by torch.cat allocates each layer's cache tensors anew every step (in prefill, the
    # concatenation onto an empty cache copies the new tokens): K and V (MHA/GQA: half the cached elements
    # each) or the latent and its rope part (MLA)
    cached = (kv_g + t_g) * w.kv_bytes_per_element * w.kv_frac
    per_tok = s.kv_elements_per_token_layer
    cache = (((cached * s.mla_latent, L + z), (cached * (per_tok - s.mla_latent), L + z)) if s.mla
             else ((cached * per_tok / 2, 2 * L + z),))
    heads_dev = s.heads / tp
    scores = heads_dev * t_g * (kv_g + t_g) / w.b_g  # every query of a sequence against every key of it
    out["attn_scores"] = replace(
        out["attn_scores"], allocs=cache, layers=float(L), head_dims_differ=bool(w.qk != w.v),
        score_tensor_bytes=scores * ab + z, score_elements=scores + z,
        materialised_flops=2 * scores * (w.qk + w.v) * L + z, key_tensor_bytes=heads_dev * (kv_g + t_g) * w.qk * ab + z,
        query_tensor_bytes=heads_dev * t_g * w.qk * ab + z, output_tensor_bytes=heads_dev * t_g * w.v * ab + z)
    if w.decode and w.expand:  # kv_b_proj's output (up_width per cached token) and the new key tensor
        out["mla_expand"] = replace(out["mla_expand"], allocs=(
            (kv_g / tp * s.mla_up_width * ab, L + z), (kv_g / tp * s.heads * w.qk * ab, L + z)))
    inter_split = np.where(w.is_ep, 1.0, tp)
    out["routed_experts"] = replace(
        out["routed_experts"], moe_layers=float(s.moe_layers),
        assignment_tensor_bytes=(w.assignments * s.hidden * ab + z, w.assignments * s.expert_intermediate * ab
                                 / inter_split + z))
    return out


def expert_tensors(t: OpTensors, eager) -> Tensors:
    """(bytes of one tensor, tensors per step) the unfused expert block allocates; the first two
    intermediate-wide tensors are the one gate_up output."""
    hidden, inter = t.assignment_tensor_bytes
    n_inter = eager.expert_intermediate_tensors
    if not (eager.expert_hidden_tensors or n_inter) or not t.moe_layers:
        return ()
    gate_up = ((GATE_UP_OUTPUTS * inter, t.moe_layers),) if n_inter >= GATE_UP_OUTPUTS else ()
    rest = n_inter - GATE_UP_OUTPUTS if gate_up else n_inter
    return ((hidden, eager.expert_hidden_tensors * t.moe_layers), *gate_up, (inter, rest * t.moe_layers))


def materialises_scores(t: OpTensors, eager) -> bool:
    """Whether this attention runs as a math path that materialises its scores."""
    return bool(eager.math_attention_unequal_head_dims and t.head_dims_differ and t.layers)


def attention_tensors(t: OpTensors, eager) -> Tensors:
    """(bytes of one tensor, tensors per step) a materialising attention allocates (none when fused)."""
    if not materialises_scores(t, eager):
        return ()
    return ((t.score_tensor_bytes, MATH_ATTENTION_SCORE_TENSORS * t.layers),
            (t.score_elements * BOOL_BYTES, t.layers),
            (t.key_tensor_bytes, t.layers), (t.query_tensor_bytes, t.layers),
            (t.output_tensor_bytes, MATH_ATTENTION_OUTPUT_TENSORS * t.layers))


def score_elementwise_s(t: OpTensors, eager) -> Any:
    """A materialising attention's element-wise work on its scores (scale, causal mask, softmax and torch's
    safe-softmax checks), timed per score element by ``capsim probe``."""
    if not (materialises_scores(t, eager) and eager.math_attention_s_per_score):
        return 0.0
    return t.score_elements * t.layers * eager.math_attention_s_per_score


def activation_bytes(t: OpTensors, eager) -> Any:
    """The op's activation traffic: its counted io (an unfused expert block: instead, each tensor it allocates
    written once and read once), plus a materialising attention's tensors (each written once and read once;
    when their element-wise work is timed per score element, that time stands for their traffic)."""
    experts = expert_tensors(t, eager)
    base = t.act_bytes if not experts else sum(2.0 * size * count for size, count in experts)
    if eager.math_attention_s_per_score:
        return base
    return base + sum(2.0 * size * count for size, count in attention_tensors(t, eager))


def _single_allocs(t: OpTensors, eager) -> Tensors:
    """The cache's tensors and (when the engine writes them) the layer code's: each freed before the next."""
    return tuple(t.allocs) + (tuple(t.eager_allocs) if eager.layer_tensors else ())


def fresh_bytes(t: OpTensors, eager) -> Any:
    """Bytes per step of the op's tensors at or above the allocator's mmap threshold (mapped afresh each step)."""
    allocs = _single_allocs(t, eager) + expert_tensors(t, eager) + attention_tensors(t, eager)
    return sum((np.where(size >= eager.fresh_alloc_threshold_bytes, size * count, 0.0) for size, count in allocs), 0.0)


def refault_bytes(t: OpTensors, eager, faults) -> Any:
    """Fresh bytes that fault in beyond the freed memory the machine keeps backed. A block whose tensors are
    alive together needs them backed at once: the expert block and a math attention, once per layer; every
    other tensor counts alone."""
    if not faults.refault_s_per_byte:
        return 0.0
    threshold, retained = eager.fresh_alloc_threshold_bytes, faults.retained_free_bytes

    def beyond(size):
        return np.maximum(np.where(size >= threshold, size, 0.0) - retained, 0.0)

    total = sum((count * beyond(size) for size, count in _single_allocs(t, eager)), 0.0)
    if expert_tensors(t, eager):
        # grouped_mm_experts_forward keeps the gathered inputs (hidden wide) to the end: alive with the
        # intermediate-wide tensors at the gating product, and with the other hidden-wide ones at the un-permute
        hidden, inter = t.assignment_tensor_bytes
        held = np.maximum(hidden + eager.expert_intermediate_tensors * inter, eager.expert_hidden_tensors * hidden)
        total = total + t.moe_layers * beyond(held)
    if materialises_scores(t, eager):  # the scores, their softmax and isneginf, alive together
        held = MATH_ATTENTION_SCORE_TENSORS * t.score_tensor_bytes + t.score_elements * BOOL_BYTES
        total = total + t.layers * beyond(held)
    return total


def fresh_page_s(t: OpTensors, eager, faults) -> Any:
    """First-touch time of the op's fresh pages, and the refault time beyond the retained memory."""
    if not faults.first_touch_s_per_byte:
        return 0.0
    return (fresh_bytes(t, eager) * faults.first_touch_s_per_byte
            + refault_bytes(t, eager, faults) * faults.refault_s_per_byte)


def apply(step: Step, s: Shape, eager, faults) -> Step:
    """The step as this engine runs it: a math attention's whole score matrix (executed FLOPs), the tensors'
    traffic (activation bytes), its element-wise score work (serial time) and the page faults (overhead)."""
    inv, ops = inventory(step, s), dict(step.ops)
    for name, t in inv.items():
        op = ops[name]
        ops[name] = replace(op, act_bytes=activation_bytes(t, eager),
                            executed_flops=t.materialised_flops if materialises_scores(t, eager) else None,
                            serial_s=score_elementwise_s(t, eager), overhead_s=fresh_page_s(t, eager, faults))
    return replace(step, ops=ops)
