"""MoE-Gen's mechanisms (issue 22): the KV cache in host memory (kv_on_host), its decode K/V over the host link,
the CPU's share of the attention balanced against the link, and the host-memory limit on the batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from capsim import engines
from capsim.capacity import host_kv_bytes, per_device
from capsim.errors import CapsimError
from capsim.hardware.db import load
from capsim.predict import Query, predict
from capsim.scenario import resolve
from capsim.sim.offload import KV_OPS, offload_step
from capsim.sim.ops import Work
from capsim.sim.request import simulate_step

DB = load()
Q = dict(model="mixtral-8x7b", hardware="moe-gen-testbed", engine="moe-gen", offload="gpu-fetch", expert_cache=0,
         input_len=512, output_len=256, routing="uniform")
# Mixtral-8x7B's K/V per token: 32 layers x 2 (K, V) x 8 KV heads x 128 x 2 bytes (bf16) = 131,072 bytes
KV_PER_TOKEN = 32 * 2 * 8 * 128 * 2


def test_the_kv_cache_is_in_host_memory_not_on_the_gpu():
    sc = resolve(Query(batch=10, check_memory=False, **Q), DB)
    # 10 sequences at their final 512 + 256 = 768 tokens
    assert float(host_kv_bytes(sc, 10, 512, 256)) == pytest.approx(10 * 768 * KV_PER_TOKEN)
    assert float(per_device(sc, 10, 512, 256, 0.0).kv_cache) == 0.0
    vllm = resolve(Query(**{**Q, "engine": "roofline"}, batch=10, check_memory=False), DB)
    assert float(host_kv_bytes(vllm, 10, 512, 256)) == 0.0  # every other engine keeps it on the device


def test_a_batch_whose_kv_cache_overflows_host_memory_is_refused():
    # 512 GB of host DRAM, 90.2 GB of routed experts in bf16: 5,000 sequences x 100.66 MB = 503 GB do not fit
    with pytest.raises(CapsimError, match="KV cache in host memory"):
        predict(Query(batch=5000, **Q), DB)
    assert predict(Query(batch=1000, **Q), DB)["decode_tokens_per_s"] > 0


def _decode(share: float, host_eff: float = 0.05):
    prof = dataclasses.replace(engines.load("moe-gen"), cpu_attention_share=share, host_compute_efficiency=host_eff)
    sc = resolve(Query(batch=2000, **Q), DB, prof)
    b, ctx = 2000, 640
    step, t = simulate_step(sc, Work(tokens=b, seqs=b, pairs=b * ctx, kv_read_tokens=b * ctx, decode=True))
    o = sc.offload
    kw = dict(hit_rate=0.0, mode="gpu-fetch", link_bytes_per_s=o.link_bytes_per_s, profile=prof,
              host_bandwidth_bytes_per_s=o.host_bandwidth_bytes_per_s, host_peak_flop_per_s=o.host_peak_flop_per_s)
    link = o.link_bytes_per_s * prof.link_efficiency
    kv = sum(step.ops[n].kv_bytes for n in KV_OPS if n in step.ops)
    flops = sum(step.ops[n].flops for n in KV_OPS if n in step.ops)
    a = float(step.activated_experts.mean() if np.ndim(step.activated_experts) else step.activated_experts)
    cpu = max(kv / (o.host_bandwidth_bytes_per_s * prof.host_memory_efficiency),
              flops / (o.host_peak_flop_per_s * prof.host_compute_efficiency))
    return offload_step(step, t, sc.shape, **kw), float(kv / link), float(cpu), a


def test_all_attention_on_the_gpu_moves_every_cached_byte_over_the_link():
    # w = 0: the link carries the missed experts (A) and then all K/V of the step (K): off = A + K
    on, k, _, _ = _decode(0.0)
    no_kv = dataclasses.replace(engines.load("moe-gen"), kv_on_host=False, cpu_attention_share=0.0)
    sc = resolve(Query(batch=2000, **Q), DB, no_kv)
    step, t = simulate_step(sc, Work(2000, 2000, 2000 * 640, 2000 * 640, True))
    o = sc.offload
    plain = offload_step(step, t, sc.shape, hit_rate=0.0, mode="gpu-fetch", link_bytes_per_s=o.link_bytes_per_s,
                         profile=no_kv)
    assert float(on.offload_s) == pytest.approx(float(plain.offload_s) + k, rel=1e-9)


def test_the_cpu_share_balances_the_cpu_against_the_link():
    # Link A + (1 - w) K, CPU w C; the engine picks w* = (A + K) / (K + C), where the two are equal, unless that
    # exceeds the profile's share. At w* the offload side takes w* C; with a slow CPU (C >> A + K) w* is small.
    full, k, c, _ = _decode(1.0)
    none, _, _, _ = _decode(0.0)
    a = float(none.offload_s) - k  # the experts' time on the link (A)
    w = (a + k) / (k + c)
    assert 0 < w < 1
    assert float(full.offload_s) == pytest.approx(w * c, rel=1e-9)
    assert float(full.offload_s) == pytest.approx(a + (1 - w) * k, rel=1e-9)
    capped, _, _, _ = _decode(0.5 * w)  # a share below the balance point: the link stays the slower side
    assert float(capped.offload_s) == pytest.approx(a + (1 - 0.5 * w) * k, rel=1e-9)


def test_capacity_is_bounded_by_host_memory():
    # Host: 512 GB (moe-gen-testbed) minus Mixtral-8x7B's routed experts, 32 layers x 8 experts x 3 matrices x
    # 4096 x 14336 x 2 bytes = 90,194,313,216 B; each sequence of 512 + 128 tokens holds 640 x 131,072 B of K/V:
    # floor((512e9 - 90,194,313,216) / 83,886,080) = 5,028 sequences (the GPU, with no KV, would take ~100,000)
    rep = predict(Query(batch=100, **{**Q, "output_len": 128}), DB)
    assert rep["capacity"]["max_batch"] == (512 * 10**9 - 90_194_313_216) // (640 * KV_PER_TOKEN)
    assert rep["offload"]["kv_on_host"] is True
