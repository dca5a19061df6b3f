"""Engine-profile mechanisms, counted by hand: expanded MLA decode, GEMM efficiency curves, attention efficiency."""

import dataclasses
import math

import numpy as np
import pytest

from capsim import engines, precision
from capsim.engines import EagerCpu
from capsim.errors import CapsimError
from capsim.hardware.target import PageFaults
from capsim.measure.gemm_curve import half_rows
from capsim.model.catalogue import load_spec
from capsim.scenario import from_parts
from capsim.sim import eager_cpu
from capsim.sim.ops import Work, step_costs
from capsim.sim.request import simulate_step
from capsim.sim.roofline import gemm_fraction
from capsim.sim.shape import shape_of

BF16 = precision.PRECISIONS["bf16"]


def _timed(s, work: Work, profile, peak: float, bandwidth: float, kv: float = 2.0, routing=None, faults=None):
    """(step, timing) of one step on a device with one peak for every operator class and one bandwidth."""
    sc = from_parts(s, peak_flop_per_s={"matmul": peak, "attention": peak, "vector": peak},
                    bandwidth_bytes_per_s=bandwidth, profile=profile, kv_bytes=kv, page_faults=faults)
    return simulate_step(sc, work, routing)


def _eager(profile=None, **eager):
    """A profile with an eager_cpu section (the allocator model) holding ``eager``."""
    base = profile or engines.load("roofline")
    return dataclasses.replace(base, eager_cpu=dataclasses.replace(base.eager_cpu or EagerCpu(), **eager))


def _tensors(step, s, name: str):
    return eager_cpu.inventory(step, s)[name]


def _v2_lite_decode(absorbed: bool, batch: int = 1, context: int = 1000):
    s = shape_of(load_spec("deepseek-v2-lite")[0], BF16)
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
    s = shape_of(load_spec("mixtral")[0], BF16)
    work = Work(tokens=4, seqs=4, pairs=4 * 100, kv_read_tokens=400, decode=True)
    ideal = engines.load("roofline")
    curve = dataclasses.replace(ideal, gemm_curves=((4096.0, 4096.0, ((1.0, 0.25), (1024.0, 1.0))),))
    (_, t0), (_, t1) = _timed(s, work, ideal, 1e15, 1e12), _timed(s, work, curve, 1e15, 1e12)
    # lm_head: 4 rows -> log position log(4)/log(1024) = 0.2 -> fraction 0.25 + 0.2 x 0.75 = 0.4
    assert float(t1.op_compute_s["lm_head"]) == pytest.approx(float(t0.op_compute_s["lm_head"]) / 0.4)
    assert float(t1.op_compute_s["attn_scores"]) == float(t0.op_compute_s["attn_scores"])  # not a GEMM


def test_attention_efficiency_scales_attention_memory_time_only():
    s = shape_of(load_spec("deepseek-v2-lite")[0], BF16)
    work = Work(tokens=8, seqs=8, pairs=8 * 1000, kv_read_tokens=8 * 1000, decode=True)
    ideal = engines.load("roofline")
    slow = dataclasses.replace(ideal, attention_efficiency=0.25)
    (_, a), (_, b) = _timed(s, work, ideal, 1e15, 1e12), _timed(s, work, slow, 1e15, 1e12)
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
    (size, count), = _tensors(dec, s, "attn_scores").allocs
    assert (float(size), float(count)) == (67_174_400, 4)
    prof, faults = _eager(), PageFaults(first_touch_s_per_byte=2e-10)
    assert float(eager_cpu.fresh_page_s(_tensors(dec, s, "attn_scores"), prof.eager_cpu, faults)) == pytest.approx(
        268_697_600 * 2e-10)
    # Batch 16: 16,793,600 B per tensor stays under the threshold (heap memory reused): no first-touch cost.
    _, dec16 = _mixtral_like_decode(16, 1024)
    assert float(eager_cpu.fresh_page_s(_tensors(dec16, s, "attn_scores"), prof.eager_cpu, faults)) == 0.0
    # An engine with a caching allocator (no eager_cpu section) pays nothing, and the step time grows by exactly
    # the first-touch time when the machine has one
    work = Work(tokens=64, seqs=64, pairs=64 * 1025, kv_read_tokens=64 * 1024, decode=True)
    (_, off), (_, on) = (_timed(s, work, p, 1e11, 1e10, kv=4.0, faults=faults) for p in (engines.load("roofline"), prof))
    assert float(on.step_s - off.step_s) == pytest.approx(268_697_600 * 2e-10)
    (_, none) = _timed(s, work, prof, 1e11, 1e10, kv=4.0)  # a machine with no measured fault cost
    assert float(none.step_s) == float(off.step_s)


def test_fresh_pages_of_expanded_mla_decode():
    # DeepSeek-V2-Lite, expanded decode, batch 64, context 1000, bf16: kv_b_proj writes 64 x 1000 x 4096 x 2 B
    # = 524,288,000 B per layer and the new key tensor 64 x 1000 x 16 heads x 192 x 2 B = 393,216,000 B; both
    # above 32 MiB: 27 layers x (524,288,000 + 393,216,000) B fresh. The cached latent (64 x 1001 x 512 x 2 B
    # = 65,601,536 B) is above it too, its rope part (64 x 1001 x 64 x 2 B = 8,200,192 B) is not.
    s, dec = _v2_lite_decode(absorbed=False, batch=64)
    prof, faults = _eager(), PageFaults(first_touch_s_per_byte=1.0)
    e = prof.eager_cpu
    assert float(eager_cpu.fresh_page_s(_tensors(dec, s, "mla_expand"), e, faults)) == 27 * (524_288_000 + 393_216_000)
    assert float(eager_cpu.fresh_page_s(_tensors(dec, s, "attn_scores"), e, faults)) == 27 * 65_601_536
    _, absorbed = _v2_lite_decode(absorbed=True, batch=64)
    assert float(eager_cpu.fresh_page_s(_tensors(absorbed, s, "mla_expand"), e, faults)) == 0.0


def _shape_file(name: str):
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "validation" / "measured" / "shapes" / f"{name}.json"


def _run_shape(name: str):
    from pathlib import Path

    from capsim.validation.cases import cases_from_run

    return cases_from_run(Path(__file__).resolve().parents[1] / "validation" / "measured" / "cpu" / f"{name}.json")[0].shape


def test_unfused_expert_tensors_fault_in_and_run_after_the_gemms():
    s = _run_shape("mixtral-like")  # hidden 1024, expert intermediate 3584, top-2 of 8, 2 MoE layers, fp32
    work = Work(tokens=4096, seqs=4, pairs=4 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False)
    pre = step_costs(s, tokens=4096, seqs=4, pairs=4 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False,
                     kv_bytes_per_element=4.0, activated=8)
    t = _tensors(pre, s, "routed_experts")
    # 4096 tokens x top-2 = 8192 assignments per layer: a hidden-wide tensor is 8192 x 1024 x 4 = 33,554,432 B
    # (= glibc's 32 MiB threshold: mapped afresh), an intermediate-wide one 8192 x 3584 x 4 = 117,440,512 B
    assert [float(x) for x in t.assignment_tensor_bytes] == [33_554_432, 117_440_512] and t.moe_layers == 2
    fused = engines.load("roofline")
    eager = _eager(dataclasses.replace(fused, activation_overlap=0.0), expert_hidden_tensors=4,
                   expert_intermediate_tensors=4)
    faults = PageFaults(first_touch_s_per_byte=1e-10)
    # each of 4 + 4 tensors per layer written once and read once, 2 layers: 2 x 2 x 4 x (33,554,432 + 117,440,512)
    per_step = 2 * 2 * 4 * (33_554_432 + 117_440_512)
    assert float(eager_cpu.activation_bytes(t, eager.eager_cpu)) == per_step
    assert float(eager_cpu.activation_bytes(t, EagerCpu())) == float(pre.ops["routed_experts"].act_bytes)  # fused io
    # all 16 tensors are at or above the threshold: half the traffic is fresh pages
    assert float(eager_cpu.fresh_page_s(t, eager.eager_cpu, faults)) == pytest.approx(per_step / 2 * 1e-10)
    # activation_overlap 0 adds the traffic after the GEMM instead of hiding it under the compute
    hidden = dataclasses.replace(eager, activation_overlap=1.0)
    routing = {"activated": 8}
    (_, t0), (_, t1) = (_timed(s, work, p, 1e11, 1e10, kv=4.0, routing=routing, faults=faults) for p in (hidden, eager))
    compute = float(t0.op_compute_s["routed_experts"])
    assert compute > float(t0.op_memory_s["routed_experts"])  # compute bound: the traffic was hidden
    assert float(t1.op_s["routed_experts"]) == pytest.approx(compute + per_step / 1e10 + per_step / 2 * 1e-10)


def test_math_attention_materialises_scores_only_when_head_dims_differ():
    prof = _eager(math_attention_unequal_head_dims=True).eager_cpu
    faults = PageFaults(first_touch_s_per_byte=1e-10)
    ds = _run_shape("deepseek-like")  # MLA: 6 heads, qk 192 (128 nope + 64 rope), v 128; 3 layers; fp32
    pre = step_costs(ds, tokens=2048, seqs=2, pairs=2 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False,
                     kv_bytes_per_element=4.0, activated=64)
    t = _tensors(pre, ds, "attn_scores")
    # 2 sequences of 1024: scores 6 heads x 2 x 1024 x 1024 x 4 B = 50,331,648 B (>= 32 MiB: fresh);
    # scaled K copy 6 x 2048 x 192 x 4 = 9,437,184 B (heap)
    assert t.head_dims_differ and (float(t.score_tensor_bytes), float(t.key_tensor_bytes)) == (50_331_648, 9_437_184)
    # Q K^T and softmax; isneginf, 1 bool byte per score (12,582,912 B); the scaled K and Q copies (9,437,184 B
    # each: 2,048 query or key tokens x 6 x 192 x 4); P V and its copy (6 x 2048 x 128 x 4 = 6,291,456 B each);
    # each written and read; 3 layers
    extra = 2 * (2 * 50_331_648 + 12_582_912 + 2 * 9_437_184 + 2 * 6_291_456) * 3
    assert float(eager_cpu.activation_bytes(t, prof)) == pytest.approx(float(t.act_bytes) + extra)
    assert float(eager_cpu.fresh_page_s(t, prof, faults)) == pytest.approx(2 * 50_331_648 * 3 * 1e-10)
    # equal head dims (mixtral-like, 128/128: torch's flash kernel): nothing materialised
    mx = _run_shape("mixtral-like")
    step2 = step_costs(mx, tokens=2048, seqs=2, pairs=2 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False,
                       kv_bytes_per_element=4.0)
    t2 = _tensors(step2, mx, "attn_scores")
    assert not t2.head_dims_differ and float(eager_cpu.activation_bytes(t2, prof)) == float(t2.act_bytes)
    assert float(eager_cpu.fresh_page_s(t2, prof, faults)) == 0.0


def test_math_attention_computes_the_whole_score_matrix_and_times_its_elementwise_work():
    ds = _run_shape("deepseek-like")  # MLA prefill: 6 heads, qk 192, v 128; 3 layers
    work = Work(tokens=2048, seqs=2, pairs=2 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False)
    pre = step_costs(ds, tokens=2048, seqs=2, pairs=2 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False,
                     kv_bytes_per_element=4.0, activated=64)
    t = _tensors(pre, ds, "attn_scores")
    # score elements per layer: 6 heads x 2 sequences x 1024 x 1024 = 12,582,912
    assert float(t.score_elements) == 12_582_912
    # the whole matrix: 2 x 12,582,912 x (192 + 128) x 3 layers = 24,159,191,040 FLOPs, against the causal
    # 2 x 2 x 1024 x 1025 / 2 x 6 x 320 x 3 = 12,091,392,000 a fused kernel does
    assert float(t.materialised_flops) == 24_159_191_040
    assert float(pre.ops["attn_scores"].flops) == 2 * (2 * 1024 * 1025 / 2) * 6 * 320 * 3
    prof = _eager(dataclasses.replace(engines.load("roofline"), activation_overlap=0.0),
                  math_attention_unequal_head_dims=True, math_attention_s_per_score=5e-9)
    # element-wise work: 12,582,912 x 3 layers x 5 ns = 0.18874368 s; it stands for the score tensors' traffic
    assert float(eager_cpu.score_elementwise_s(t, prof.eager_cpu)) == pytest.approx(12_582_912 * 3 * 5e-9)
    assert float(eager_cpu.activation_bytes(t, prof.eager_cpu)) == float(t.act_bytes)
    _, timing = _timed(ds, work, prof, 1e11, 1e10, kv=4.0, routing={"activated": 64})
    assert float(timing.op_compute_s["attn_scores"]) == pytest.approx(24_159_191_040 / 1e11)
    tm = float(t.act_bytes) / 1e10  # all of it activation traffic, serial in an eager engine
    assert float(timing.op_s["attn_scores"]) == pytest.approx(max(24_159_191_040 / 1e11, 0.0) + tm + 0.18874368)


# ---------------------------------------------------------------------------------------------------
# The eager forward's per-token tensors and the refault of memory the machine took back


def test_eager_inventory_equals_the_profilers_fresh_allocations():
    """The fresh bytes capsim counts for an eager prefill of 16 x 1,024 tokens (layer code, cache, experts, math
    attention; tensors >= 32 MiB) equal the torch profiler's self allocations >= 32 MiB in the same prefill:
    7.31 / 10.87 / 12.12 GB (`python scripts/alloc_inventory.py validation/measured/cpu/<shape>.json --batch 16
    --length 1024`, validation/FAULTS.md; 2026-11-22, torch 2.13.0, transformers 5.23.0)."""
    prof = engines.load("hf-eager").eager_cpu
    for name, measured_gb in (("mixtral-like", 7.31), ("olmoe-like", 10.87), ("deepseek-like", 12.12)):
        s = _run_shape(name)
        pre = step_costs(s, tokens=16 * 1024, seqs=16, pairs=16 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False,
                         kv_bytes_per_element=4.0, activated=s.num_experts)
        inv = eager_cpu.inventory(pre, s)
        total = sum(float(eager_cpu.fresh_bytes(t, prof)) for t in inv.values())
        assert round(total / 1e9, 2) == measured_gb, name
        # without the layer code's tensors only the expert, cache and attention tensors remain
        bare = dataclasses.replace(prof, layer_tensors=False)
        assert sum(float(eager_cpu.fresh_bytes(t, bare)) for t in inv.values()) < total


def test_eager_inventory_counts_by_hand():
    from capsim.model.eager import eager_tensors

    spec = load_spec(str(_shape_file("olmoe-like")))[0]  # OLMoE-like: 2 layers, hidden 1024, 16 x 64 heads, q/k norms
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
    s = _run_shape("mixtral-like")  # hidden 1024, expert intermediate 3584, top-2, 2 MoE layers, fp32
    prof = engines.load("hf-eager").eager_cpu
    faults = PageFaults(first_touch_s_per_byte=1e-10, refault_s_per_byte=2e-9, retained_free_bytes=1e9)
    pre = step_costs(s, tokens=65536, seqs=64, pairs=64 * 1024 * 1025 / 2, kv_read_tokens=0, decode=False,
                     kv_bytes_per_element=4.0, activated=8)
    inv = eager_cpu.inventory(pre, s)
    op = inv["routed_experts"]
    # per assignment tensor: 65,536 tokens x 2 = 131,072 assignments; hidden 131,072 x 1024 x 4 = 536,870,912 B,
    # intermediate 131,072 x 3584 x 4 = 1,879,048,192 B. Held together: max(1 hidden + 4 intermediate,
    # 4 hidden) = 8,053,063,680 B; beyond 1e9 retained: 7,053,063,680 B x 2 MoE layers. The layer code's
    # top-k sum (65,536 x 1024 x 4 = 268 MB, x 2 layers) stays under the retained memory.
    assert float(eager_cpu.refault_bytes(op, prof, faults)) == 2 * 7_053_063_680
    # first touch of every fresh byte: 4 hidden + gate_up (2 intermediate) + 2 intermediate, plus the top-k sum
    fresh = 2 * (4 * 536_870_912 + 4 * 1_879_048_192 + 268_435_456)
    assert float(eager_cpu.fresh_page_s(op, prof, faults)) == pytest.approx(fresh * 1e-10 + 2 * 7_053_063_680 * 2e-9)
    # a tensor alone: each beyond the retained bytes (the layer code's q-wide tensors are 268 MB: none beyond 1e9)
    assert float(eager_cpu.refault_bytes(inv["attn_proj"], prof, faults)) == 0.0
    small = dataclasses.replace(faults, retained_free_bytes=2e8)
    # attn_proj per layer: q, o, SDPA output and the rotary embedding's 4 q-wide tensors (268,435,456 B each,
    # 68,435,456 B beyond 2e8); the rotary -x2 (half: 134 MB), k and v and their rotary (256 wide: 67 MB) stay
    # under: 2 layers x 7 x 68,435,456 B
    assert float(eager_cpu.refault_bytes(inv["attn_proj"], prof, small)) == 2 * 7 * 68_435_456
    # no reclaim measured: no refault
    assert float(eager_cpu.refault_bytes(op, prof, dataclasses.replace(faults, refault_s_per_byte=0.0))) == 0.0
