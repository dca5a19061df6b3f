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


def test_gemm_fraction_interpolates_in_log_rows_on_the_nearest_shape():
    square = (1024.0, 1024.0, ((1.0, 0.1), (100.0, 1.0)))
    wide = (1024.0, 8192.0, ((1.0, 0.1), (100.0, 0.5)))
    # rows 10 is half-way between 1 and 100 in log: 0.1 + 0.5 x 0.9 = 0.55 on the square curve
    assert gemm_fraction(10.0, 1024, 1024, (square,)) == pytest.approx(0.55)
    assert gemm_fraction(1e6, 1024, 1024, (square,)) == pytest.approx(1.0)  # flat beyond the last point
    assert gemm_fraction(np.inf, 1024, 1024, (square,)) == pytest.approx(1.0)
    # 1024 x 7168 is nearer 1024 x 8192 (log distance log(8/7)) than 1024 x 1024 (log 7): the wide curve, unblended
    assert gemm_fraction(100.0, 1024, 7168, (square, wide)) == pytest.approx(0.5)
    # 1024 x 2048: log distance log 2 to the square curve, log 4 to the wide one
    assert gemm_fraction(100.0, 1024, 2048, (square, wide)) == pytest.approx(1.0)
    # arrays of shapes pick per element
    got = gemm_fraction(100.0, np.array([1024, 1024]), np.array([2048, 7168]), (square, wide))
    assert got.tolist() == pytest.approx([1.0, 0.5])


def test_gemm_curve_slows_small_row_gemms_only():
    s = shape_of(load_model("mixtral")[0], BF16)
    step = step_costs(s, tokens=4, seqs=4, pairs=4 * 100, kv_read_tokens=400, decode=True, kv_bytes_per_element=2.0)
    peaks = {"matmul": 1e15, "attention": 1e15, "vector": 1e15}
    kw = dict(peak_flop_per_s=peaks, bandwidth_bytes_per_s=1e12, ring_bandwidth_bytes_per_s=np.inf,
              alltoall_bandwidth_bytes_per_s=np.inf, layers=s.layers, moe_layers=s.moe_layers)
    ideal = engines.load("roofline")
    curve = dataclasses.replace(ideal, gemm_curves=((4096.0, 4096.0, ((1.0, 0.25), (1024.0, 1.0))),))
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
        "gemm_curves: [{k: 8, n: 8, points: [[4, 0.5], [2, 0.9]]}]\n")
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


def _shape_file(name: str):
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "validation" / "measured" / "shapes" / f"{name}.json"


def _run_shape(name: str):
    from pathlib import Path

    from capsim.validation.cases import cases_from_run

    return cases_from_run(Path(__file__).resolve().parents[1] / "validation" / "measured" / "cpu" / f"{name}.json")[0].shape


def test_unfused_expert_tensors_fault_in_and_run_after_the_gemms():
    from capsim.sim.roofline import activation_bytes, fresh_page_s

    s = _run_shape("mixtral-like")  # hidden 1024, expert intermediate 3584, top-2 of 8, 2 MoE layers, fp32
    pre = step_costs(s, tokens=4096, seqs=4, pairs=4 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False,
                     kv_bytes_per_element=4.0, activated=8)
    op = pre.ops["routed_experts"]
    # 4096 tokens x top-2 = 8192 assignments per layer: a hidden-wide tensor is 8192 x 1024 x 4 = 33,554,432 B
    # (= glibc's 32 MiB threshold: mapped afresh), an intermediate-wide one 8192 x 3584 x 4 = 117,440,512 B
    assert [float(x) for x in op.assignment_tensor_bytes] == [33_554_432, 117_440_512] and op.moe_layers == 2
    fused = engines.load("roofline")
    eager = dataclasses.replace(fused, expert_hidden_tensors=4, expert_intermediate_tensors=4, activation_overlap=0.0,
                                first_touch_s_per_byte=1e-10)
    # each of 4 + 4 tensors per layer written once and read once, 2 layers: 2 x 2 x 4 x (33,554,432 + 117,440,512)
    per_step = 2 * 2 * 4 * (33_554_432 + 117_440_512)
    assert float(activation_bytes(op, eager)) == per_step
    assert float(activation_bytes(op, fused)) == float(op.act_bytes)  # fused: the counted io widths
    # all 16 tensors are at or above the threshold: half the traffic is fresh pages
    assert float(fresh_page_s(op, eager)) == pytest.approx(per_step / 2 * 1e-10)
    # activation_overlap 0 adds the traffic after the GEMM instead of hiding it under the compute
    kw = dict(peak_flop_per_s={"matmul": 1e11, "attention": 1e11, "vector": 1e11}, bandwidth_bytes_per_s=1e10,
              ring_bandwidth_bytes_per_s=np.inf, alltoall_bandwidth_bytes_per_s=np.inf, layers=s.layers,
              moe_layers=s.moe_layers)
    hidden = dataclasses.replace(eager, activation_overlap=1.0)
    t0, t1 = step_time(pre, profile=hidden, **kw), step_time(pre, profile=eager, **kw)
    compute = float(t0.op_compute_s["routed_experts"])
    assert compute > float(t0.op_memory_s["routed_experts"])  # compute bound: the traffic was hidden
    assert float(t1.op_s["routed_experts"]) == pytest.approx(compute + per_step / 1e10 + per_step / 2 * 1e-10)


def test_math_attention_materialises_scores_only_when_head_dims_differ():
    from capsim.sim.roofline import activation_bytes, fresh_page_s

    prof = dataclasses.replace(engines.load("roofline"), math_attention_unequal_head_dims=1.0,
                               first_touch_s_per_byte=1e-10)
    ds = _run_shape("deepseek-like")  # MLA: 6 heads, qk 192 (128 nope + 64 rope), v 128; 3 layers; fp32
    pre = step_costs(ds, tokens=2048, seqs=2, pairs=2 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False,
                     kv_bytes_per_element=4.0, activated=64)
    op = pre.ops["attn_scores"]
    # 2 sequences of 1024: scores 6 heads x 2 x 1024 x 1024 x 4 B = 50,331,648 B (>= 32 MiB: fresh);
    # scaled K copy 6 x 2048 x 192 x 4 = 9,437,184 B (heap)
    assert op.head_dims_differ and (float(op.score_tensor_bytes), float(op.key_tensor_bytes)) == (50_331_648, 9_437_184)
    # Q K^T and softmax; isneginf, 1 bool byte per score (12,582,912 B); the scaled K and Q copies (9,437,184 B
    # each: 2,048 query or key tokens x 6 x 192 x 4); P V and its copy (6 x 2048 x 128 x 4 = 6,291,456 B each);
    # each written and read; 3 layers
    extra = 2 * (2 * 50_331_648 + 12_582_912 + 2 * 9_437_184 + 2 * 6_291_456) * 3
    assert float(activation_bytes(op, prof)) == pytest.approx(float(op.act_bytes) + extra)
    assert float(fresh_page_s(op, prof)) == pytest.approx(2 * 50_331_648 * 3 * 1e-10)
    # equal head dims (mixtral-like, 128/128: torch's flash kernel): nothing materialised
    mx = _run_shape("mixtral-like")
    op2 = step_costs(mx, tokens=2048, seqs=2, pairs=2 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False,
                     kv_bytes_per_element=4.0).ops["attn_scores"]
    assert not op2.head_dims_differ and float(activation_bytes(op2, prof)) == float(op2.act_bytes)
    assert float(fresh_page_s(op2, prof)) == 0.0


def test_math_attention_computes_the_whole_score_matrix_and_times_its_elementwise_work():
    from capsim.sim.roofline import activation_bytes, score_elementwise_s

    ds = _run_shape("deepseek-like")  # MLA prefill: 6 heads, qk 192, v 128; 3 layers
    pre = step_costs(ds, tokens=2048, seqs=2, pairs=2 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False,
                     kv_bytes_per_element=4.0, activated=64)
    op = pre.ops["attn_scores"]
    # score elements per layer: 6 heads x 2 sequences x 1024 x 1024 = 12,582,912
    assert float(op.score_elements) == 12_582_912
    # the whole matrix: 2 x 12,582,912 x (192 + 128) x 3 layers = 24,159,191,040 FLOPs, against the causal
    # 2 x 2 x 1024 x 1025 / 2 x 6 x 320 x 3 = 12,091,392,000 a fused kernel does
    assert float(op.materialised_flops) == 24_159_191_040
    assert float(op.flops) == 2 * (2 * 1024 * 1025 / 2) * 6 * 320 * 3
    prof = dataclasses.replace(engines.load("roofline"), math_attention_unequal_head_dims=1.0,
                               math_attention_s_per_score=5e-9, activation_overlap=0.0)
    # element-wise work: 12,582,912 x 3 layers x 5 ns = 0.18874368 s; it stands for the score tensors' traffic
    assert float(score_elementwise_s(op, prof)) == pytest.approx(12_582_912 * 3 * 5e-9)
    assert float(activation_bytes(op, prof)) == float(op.act_bytes)
    kw = dict(peak_flop_per_s={"matmul": 1e11, "attention": 1e11, "vector": 1e11}, bandwidth_bytes_per_s=1e10,
              ring_bandwidth_bytes_per_s=np.inf, alltoall_bandwidth_bytes_per_s=np.inf, layers=ds.layers,
              moe_layers=ds.moe_layers)
    t = step_time(pre, profile=prof, **kw)
    assert float(t.op_compute_s["attn_scores"]) == pytest.approx(24_159_191_040 / 1e11)
    tm = float(op.act_bytes) / 1e10  # all of it activation traffic, serial in an eager engine
    assert float(t.op_s["attn_scores"]) == pytest.approx(max(24_159_191_040 / 1e11, 0.0) + tm + 0.18874368)


# ---------------------------------------------------------------------------------------------------
# The eager forward's per-token tensors and the refault of memory the machine took back


def test_eager_inventory_equals_the_profilers_fresh_allocations():
    """The fresh bytes capsim counts for an eager prefill of 16 x 1,024 tokens (layer code, cache, experts, math
    attention; tensors >= 32 MiB) equal the torch profiler's self allocations >= 32 MiB in the same prefill:
    7.31 / 10.87 / 12.12 GB (`python scripts/alloc_inventory.py validation/measured/cpu/<shape>.json --batch 16
    --length 1024`, validation/FAULTS.md; 2026-11-22, torch 2.13.0, transformers 5.23.0)."""
    from capsim.sim.roofline import fresh_bytes

    prof = engines.load("hf-eager")
    for name, measured_gb in (("mixtral-like", 7.31), ("olmoe-like", 10.87), ("deepseek-like", 12.12)):
        s = _run_shape(name)
        pre = step_costs(s, tokens=16 * 1024, seqs=16, pairs=16 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False,
                         kv_bytes_per_element=4.0, activated=s.num_experts)
        total = sum(float(fresh_bytes(op, prof)) for op in pre.ops.values())
        assert round(total / 1e9, 2) == measured_gb, name
        # without the layer code's tensors only the expert, cache and attention tensors remain
        bare = dataclasses.replace(prof, eager_layer_tensors=0.0)
        assert sum(float(fresh_bytes(op, bare)) for op in pre.ops.values()) < total


def test_eager_inventory_counts_by_hand():
    from capsim.model.eager import eager_tensors

    spec = load_model(str(_shape_file("olmoe-like")))[0]  # OLMoE-like: 2 layers, hidden 1024, 16 x 64 heads, q/k norms
    inv = eager_tensors(spec)
    # norms: (2 per layer x 2 layers + the final one) x 3 tensors, plus 2 residual adds x 2 layers = 19, hidden wide
    assert inv["norms"] == ((1024, 19, False),)
    # attention per layer: o_proj (hidden); q, k, v (1024 each); rotary 4 x q and 4 x k; SDPA output; q/k
    # norms 3 x q and 3 x k: 2 layers x (1 + 3 + 8 + 1 + 6) = 38 tensors of 1,024 elements per token; and
    # rotate_half's -x2 of q and of k, half wide: 2 x 2 = 4
    full = sum(t.count for t in inv["attn_proj"] if t.width == 1024)
    half = sum(t.count for t in inv["attn_proj"] if t.width == 512)
    assert (full, half, len(inv["attn_proj"])) == (38, 4, 11)
    # MoE: the sum over the top-k, per MoE layer; router logits and softmax, 64 experts wide
    assert inv["routed_experts"] == ((1024, 2, False),) and inv["router"] == ((64, 4, False),)
    assert inv["embedding"] == ((1024, 1, False),) and "shared_experts" not in inv and "dense_ffn" not in inv


def test_refault_beyond_the_retained_memory_counts_blocks_held_together():
    from capsim.sim.roofline import fresh_page_s, refault_bytes

    s = _run_shape("mixtral-like")  # hidden 1024, expert intermediate 3584, top-2, 2 MoE layers, fp32
    prof = dataclasses.replace(engines.load("hf-eager"), first_touch_s_per_byte=1e-10, refault_s_per_byte=2e-9,
                               retained_free_bytes=1e9)
    pre = step_costs(s, tokens=65536, seqs=64, pairs=64 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False,
                     kv_bytes_per_element=4.0, activated=8)
    op = pre.ops["routed_experts"]
    # per assignment tensor: 65,536 tokens x 2 = 131,072 assignments; hidden 131,072 x 1024 x 4 = 536,870,912 B,
    # intermediate 131,072 x 3584 x 4 = 1,879,048,192 B. Held together: max(1 hidden + 4 intermediate,
    # 4 hidden) = 8,053,063,680 B; beyond 1e9 retained: 7,053,063,680 B x 2 MoE layers. The layer code's
    # top-k sum (65,536 x 1024 x 4 = 268 MB, x 2 layers) stays under the retained memory.
    assert float(refault_bytes(op, prof)) == 2 * 7_053_063_680
    # first touch of every fresh byte: 4 hidden + gate_up (2 intermediate) + 2 intermediate, plus the top-k sum
    fresh = 2 * (4 * 536_870_912 + 4 * 1_879_048_192 + 268_435_456)
    assert float(fresh_page_s(op, prof)) == pytest.approx(fresh * 1e-10 + 2 * 7_053_063_680 * 2e-9)
    # a tensor alone: each beyond the retained bytes (the layer code's q-wide tensors are 268 MB: none beyond 1e9)
    assert float(refault_bytes(pre.ops["attn_proj"], prof)) == 0.0
    small = dataclasses.replace(prof, retained_free_bytes=2e8)
    # attn_proj per layer: q, o, SDPA output and the rotary embedding's 4 q-wide tensors (268,435,456 B each,
    # 68,435,456 B beyond 2e8); the rotary -x2 (half: 134 MB), k and v and their rotary (256 wide: 67 MB) stay
    # under: 2 layers x 7 x 68,435,456 B
    assert float(refault_bytes(pre.ops["attn_proj"], small)) == 2 * 7 * 68_435_456
    # no reclaim measured: no refault
    assert float(refault_bytes(op, dataclasses.replace(prof, refault_s_per_byte=0.0))) == 0.0
