"""Device memory one device needs: weights, KV cache, activations and the engine's reserve (bytes).

Weights split as in :mod:`capsim.sim.ops` (attention, dense FFN, shared experts,
embedding and LM head over ``tp``; routed experts over ``tp``, or whole experts over
``ep`` ranks; router and norms replicated). The KV cache holds every sequence of
the device's data-parallel group at its final length (input + output; windowed layers keep
only their window). Activations
are the live tensors of the widest layer during the prefill pass (engines free
activations layer by layer) plus the fp32 logits of the last positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim.sim.num import ceil, f, fullest_group, where
from capsim.sim.shape import Shape, weight_bytes
from capsim.sim.span import cached_tokens_per_layer

LOGIT_BYTES = 4.0  # logits are upcast to fp32 before sampling (vLLM Sampler, HF generate)


@dataclass(frozen=True)
class MemoryUse:
    weights: np.ndarray
    kv_cache: np.ndarray
    activations: np.ndarray
    reserve: np.ndarray
    capacity: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.weights + self.kv_cache + self.activations + self.reserve

    @property
    def fits(self) -> np.ndarray:
        return self.total <= self.capacity


def weights_per_device(s: Shape, tp=1, ep=1, expert_fraction=1.0) -> np.ndarray:
    """``expert_fraction``: the share of the routed experts kept in device memory (offload keeps the rest
    in host DRAM or on SSD)."""
    tp, ep = f(tp), f(ep)
    w = weight_bytes(s)
    split_tp = w["embedding"] + w["lm_head"] + w["attention"] + w["dense_ffn"] + w["shared_experts"]
    routed = where(ep > 1, w["routed_experts"] / ep, w["routed_experts"] / tp) * f(expert_fraction)
    return split_tp / tp + routed + w["router"] + w["norms"]


def kv_bytes_per_token(s: Shape, kv_bytes_per_element, tp=1) -> np.ndarray:
    """KV-cache bytes one token of one sequence takes on one device (all layers)."""
    tp = f(tp)
    frac = 1.0 if s.mla else ceil(s.num_kv_heads / tp) / s.num_kv_heads
    # + sparse attention's indexer keys (one head_dim key per token and layer, replicated like the MLA latent)
    return (s.kv_elements_per_token_layer * frac + s.indexer_dim) * s.layers * f(kv_bytes_per_element)


def linear_state_bytes(s: Shape, kv_bytes_per_element, tp=1) -> np.ndarray:
    """Bytes one sequence's linear-attention state takes on one device (hybrid models; 0 otherwise), in the KV
    cache's element type (an assumption: vLLM's mamba cache dtype defaults to the model's), heads split by TP."""
    return f(s.linear_layers * s.linear_state_elements) * f(kv_bytes_per_element) / f(tp)


def memory_use(s: Shape, *, batch, input_len, output_len, kv_bytes_per_element, capacity_bytes,
               reserve_fraction=0.0, tp=1, ep=1, n=1, expert_fraction=1.0, max_batched_tokens=0.0) -> MemoryUse:
    """``max_batched_tokens``: an engine that prefills in chunks of at most this many tokens a step holds the
    activations of one chunk, not of the whole batch's prompts (0: the whole batch in one pass)."""
    tp, n = f(tp), f(n)
    dp = n / tp
    b_g = fullest_group(batch, dp)
    ctx = f(input_len) + f(output_len)
    kv = (b_g * cached_tokens_per_layer(s.cache_windows or s.windows, s.layers, ctx)
          * kv_bytes_per_token(s, kv_bytes_per_element, tp))
    kv = kv + b_g * linear_state_bytes(s, kv_bytes_per_element, tp)  # hybrid models: each sequence's fixed state
    t_g = b_g * f(input_len)
    if max_batched_tokens > 0:
        t_g = np.minimum(t_g, max_batched_tokens)
    widest = max(s.attn_io_width, s.top_k * s.expert_io_width + s.shared_io_width, s.dense_io_width)
    act = t_g * s.act_bytes * (widest / tp + s.hidden) + b_g * s.vocab * LOGIT_BYTES / tp
    cap = f(capacity_bytes)
    w = weights_per_device(s, tp, ep, expert_fraction)
    reserve = reserve_fraction * where(cap == np.inf, 0.0, cap)
    parts = (w, kv, act, reserve, cap)
    if any(isinstance(x, np.ndarray) for x in parts):
        parts = np.broadcast_arrays(*parts)
    return MemoryUse(*parts)
