"""Engine-profile mechanisms, counted by hand: expanded MLA decode, GEMM efficiency curves, attention efficiency."""

import dataclasses
import math

import numpy as np
import pytest

from capsim import engines, precision
from capsim.errors import CapsimError
from capsim.measure.gemm_curve import half_rows
from capsim.model.catalogue import load_model
from capsim.sim.ops import step_costs
from capsim.sim.roofline import gemm_fraction, step_time
from capsim.sim.shape import shape_of

BF16 = precision.PRECISIONS["bf16"]


def _v2_lite_decode(absorbed: bool, batch: int = 1, context: int = 1000):
    s = shape_of(load_model("deepseek-v2-lite")[0], BF16)
    return s, step_costs(s, tokens=batch, seqs=batch, pairs=batch * context, kv_read_tokens=batch * context,
                         decode=True, kv_bytes_per_element=2.0, mla_absorbed=absorbed)


def test_expanded_mla_decode_counts():
    # DeepSeek-V2-Lite config: 27 layers, 16 heads, kv_lora_rank 512, qk_nope 128, qk_rope 64, v 128.
    # kv_b_proj maps the 512-wide latent to 16 x (128 + 128) = 4096 per cached token:
    #   FLOPs = 2 x 1000 cached tokens x 512 x 4096 x 27 layers = 113,246,208,000;
    #   bytes (bf16) = 1000 x (512 read + 4096 written) x 2 x 27 = 248,832,000.
    s, dec = _v2_lite_decode(absorbed=False)
    assert (s.mla_latent, s.mla_up_width) == (512, 4096)
    assert float(dec.ops["mla_expand"].flops) == 113_246_208_000
    assert float(dec.ops["mla_expand"].act_bytes) == 248_832_000
    assert float(dec.ops["mla_expand"].rows) == 1000  # one sequence's cached tokens per GEMM
    # Attention scores then use the per-head dims: 2 x 16 heads x (192 + 128) x 1000 pairs x 27.
    assert float(dec.ops["attn_scores"].flops) == 2 * 16 * 320 * 1000 * 27
    # The cache read is still the latent: 1001 tokens (cache + new) x 576 x 2 bytes x 27 layers.
    assert float(dec.ops["attn_scores"].kv_bytes) == 1001 * 576 * 2 * 27


def test_absorbed_mla_decode_has_no_expansion():
    _, dec = _v2_lite_decode(absorbed=True)
    assert float(dec.ops["mla_expand"].flops) == 0.0
    # absorbed: scores over the latent, 2 x 16 x ((512 + 64) + 512) x 1000 x 27
    assert float(dec.ops["attn_scores"].flops) == 2 * 16 * 1088 * 1000 * 27


def test_gemm_fraction_interpolates_in_log_rows_and_log_size():
    small = (1.0, ((1.0, 0.1), (100.0, 1.0)))
    large = (100.0, ((1.0, 0.1), (100.0, 0.5)))
    # rows 10 is half-way between 1 and 100 in log: 0.1 + 0.5 x 0.9 = 0.55 on the small curve
    assert gemm_fraction(10.0, 1.0, (small,)) == pytest.approx(0.55)
    assert gemm_fraction(1e6, 1.0, (small,)) == pytest.approx(1.0)  # flat beyond the last point
    assert gemm_fraction(np.inf, 1.0, (small,)) == pytest.approx(1.0)
    # weight of 10 bytes: half-way in log size between the curves; at rows 100: (1.0 + 0.5) / 2
    assert gemm_fraction(100.0, 10.0, (small, large)) == pytest.approx(0.75)
    assert gemm_fraction(100.0, 1e9, (small, large)) == pytest.approx(0.5)


def test_gemm_curve_slows_small_row_gemms_only():
    s = shape_of(load_model("mixtral")[0], BF16)
    step = step_costs(s, tokens=4, seqs=4, pairs=4 * 100, kv_read_tokens=400, decode=True, kv_bytes_per_element=2.0)
    peaks = {"matmul": 1e15, "attention": 1e15, "vector": 1e15}
    kw = dict(peak_flop_per_s=peaks, bandwidth_bytes_per_s=1e12, ring_bandwidth_bytes_per_s=np.inf,
              alltoall_bandwidth_bytes_per_s=np.inf, layers=s.layers, moe_layers=s.moe_layers)
    ideal = engines.load("roofline")
    curve = dataclasses.replace(ideal, gemm_curves=((1.0, ((1.0, 0.25), (1024.0, 1.0))),))
    t0, t1 = step_time(step, profile=ideal, **kw), step_time(step, profile=curve, **kw)
    # lm_head: 4 rows -> log position log(4)/log(1024) = 0.2 -> fraction 0.25 + 0.2 x 0.75 = 0.4
    assert float(t1.op_compute_s["lm_head"]) == pytest.approx(float(t0.op_compute_s["lm_head"]) / 0.4)
    assert float(t1.op_compute_s["attn_scores"]) == float(t0.op_compute_s["attn_scores"])  # not a GEMM


def test_attention_efficiency_scales_attention_memory_time_only():
    s, dec = _v2_lite_decode(absorbed=True, batch=8)
    kw = dict(peak_flop_per_s={"matmul": 1e15, "attention": 1e15, "vector": 1e15}, bandwidth_bytes_per_s=1e12,
              ring_bandwidth_bytes_per_s=np.inf, alltoall_bandwidth_bytes_per_s=np.inf, layers=s.layers,
              moe_layers=s.moe_layers)
    ideal = engines.load("roofline")
    slow = dataclasses.replace(ideal, attention_efficiency=0.25)
    a, b = step_time(dec, profile=ideal, **kw), step_time(dec, profile=slow, **kw)
    assert float(b.op_memory_s["attn_scores"]) == pytest.approx(4 * float(a.op_memory_s["attn_scores"]))
    assert float(b.op_memory_s["routed_experts"]) == float(a.op_memory_s["routed_experts"])


def test_hockney_half_rows_recovered_from_an_exact_curve():
    # A curve that IS rows / (rows + 32) (compute bound at every point) gives n_1/2 = 32 back.
    k = n = 1024
    peak = 1e11
    pts = [{"m": m, "flop_per_s": peak * m / (m + 32), "median_s": 2 * m * k * n / (peak * m / (m + 32))}
           for m in (1, 2, 4, 8, 16, 64, 256, 1024, 1e9)]
    got = half_rows({"dtype": "fp32", "points": pts, "weight_bytes": k * n * 4}, read_bytes_per_s=math.inf)
    assert got["half_rows"] == pytest.approx(32, rel=1e-3)


def test_bad_gemm_curves_in_a_profile(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "FOLDER", tmp_path)
    (tmp_path / "x.yaml").write_text(
        "id: x\nversion: 1\ndescription: d\nfitted_to: nothing\nparameters: {}\n"
        "gemm_curves: [{weight_bytes: 1, points: [[4, 0.5], [2, 0.9]]}]\n")
    with pytest.raises(CapsimError, match=r"x\.yaml: gemm_curves: expected"):
        engines.load("x")


def _mixtral_like_decode(batch: int, context: int):
    from pathlib import Path

    from capsim.validation.cases import cases_from_run

    run = Path(__file__).resolve().parents[1] / "validation" / "measured" / "cpu" / "mixtral-like.json"
    s = cases_from_run(run)[0].shape
    return s, step_costs(s, tokens=batch, seqs=batch, pairs=batch * (context + 1), kv_read_tokens=batch * context,
                         decode=True, kv_bytes_per_element=4.0)


def test_fresh_pages_of_a_concatenated_kv_cache():
    # The committed mixtral-like run (2 layers, 2 KV heads x 128, fp32). transformers' DynamicCache grows by
    # torch.cat, so each decode step allocates each layer's K and V anew: batch x 2 x (context + 1) x 128 x 4 B.
    # Batch 64, context 1024: 64 x 2 x 1025 x 128 x 4 = 67,174,400 B per tensor, above glibc's 32 MiB
    # (33,554,432 B) mmap threshold, so 2 tensors x 2 layers = 268,697,600 B are fresh pages every step.
    # (Measured on this CPU, ru_minflt over one such step: 65,605 faults x 4096 B = 268,718,080 B.)
    s, dec = _mixtral_like_decode(64, 1024)
    (size, count), = dec.ops["attn_scores"].allocs
    assert (float(size), float(count)) == (67_174_400, 4)
    prof = dataclasses.replace(engines.load("roofline"), first_touch_s_per_byte=2e-10)
    from capsim.sim.roofline import fresh_page_s
    assert float(fresh_page_s(dec.ops["attn_scores"], prof)) == pytest.approx(268_697_600 * 2e-10)
    # Batch 16: 16,793,600 B per tensor stays under the threshold (heap memory reused): no first-touch cost.
    _, dec16 = _mixtral_like_decode(16, 1024)
    assert float(fresh_page_s(dec16.ops["attn_scores"], prof)) == 0.0
    # An engine with a caching allocator (first_touch_s_per_byte 0) pays nothing, and the step time grows by
    # exactly the first-touch time when it is on.
    base = engines.load("roofline")
    kw = dict(peak_flop_per_s={"matmul": 1e11, "attention": 1e11, "vector": 1e11}, bandwidth_bytes_per_s=1e10,
              ring_bandwidth_bytes_per_s=np.inf, alltoall_bandwidth_bytes_per_s=np.inf, layers=s.layers,
              moe_layers=s.moe_layers)
    off, on = step_time(dec, profile=base, **kw), step_time(dec, profile=prof, **kw)
    assert float(on.step_s - off.step_s) == pytest.approx(268_697_600 * 2e-10)


def test_fresh_pages_of_expanded_mla_decode():
    # DeepSeek-V2-Lite, expanded decode, batch 64, context 1000, bf16: kv_b_proj writes 64 x 1000 x 4096 x 2 B
    # = 524,288,000 B per layer and the new key tensor 64 x 1000 x 16 heads x 192 x 2 B = 393,216,000 B; both
    # above 32 MiB: 27 layers x (524,288,000 + 393,216,000) B fresh. The cached latent (64 x 1001 x 512 x 2 B
    # = 65,601,536 B) is above it too, its rope part (64 x 1001 x 64 x 2 B = 8,200,192 B) is not.
    s, dec = _v2_lite_decode(absorbed=False, batch=64)
    prof = dataclasses.replace(engines.load("roofline"), first_touch_s_per_byte=1.0)
    from capsim.sim.roofline import fresh_page_s
    assert float(fresh_page_s(dec.ops["mla_expand"], prof)) == 27 * (524_288_000 + 393_216_000)
    assert float(fresh_page_s(dec.ops["attn_scores"], prof)) == 27 * 65_601_536
    _, absorbed = _v2_lite_decode(absorbed=True, batch=64)
    assert float(fresh_page_s(absorbed.ops["mla_expand"], prof)) == 0.0
