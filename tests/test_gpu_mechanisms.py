"""The GPU serving mechanisms of an engine profile, each checked against a hand derivation
(capsim.sim.roofline: memory_half_bytes, host_launch_s with cuda_graph_max_batch, per_sequence_overhead_s,
gemm_half_rows on the grouped expert GEMM)."""

import dataclasses

import pytest

from capsim import engines, precision
from capsim.model.catalogue import load_spec
from capsim.scenario import from_parts
from capsim.sim.cost import LINK
from capsim.sim.ops import Work
from capsim.sim.request import simulate_step
from capsim.sim.shape import shape_of

BF16 = precision.PRECISIONS["bf16"]
PEAK = 1e15  # FLOP/s, every operator class
BANDWIDTH = 3e12  # bytes/s


def _qwen3():
    return shape_of(load_spec("qwen3-30b")[0], BF16)


def _decode(batch: int, context: int = 1000) -> Work:
    return Work(batch, batch, batch * context, batch * context, True)


def _timed(work: Work, **params):
    prof = dataclasses.replace(engines.load("roofline"), **params)
    sc = from_parts(_qwen3(), peak_flop_per_s={"matmul": PEAK, "attention": PEAK, "vector": PEAK},
                    bandwidth_bytes_per_s=BANDWIDTH, profile=prof, kv_bytes=2.0)
    return simulate_step(sc, work)


def test_memory_half_bytes_adds_its_bytes_per_kernel():
    # Hockney: a kernel of n bytes takes (n + n_1/2) / bandwidth, so an operator of k kernels gains
    # k x n_1/2 / (bandwidth x memory_efficiency) on its memory time:
    # routed experts of Qwen3-30B, 2 kernels per layer x 48 layers = 96 kernels; n_1/2 = 2 MB, efficiency 0.5:
    # 96 x 2e6 / (3e12 x 0.5) = 1.28e-4 s.
    step, base = _timed(_decode(1), memory_efficiency=0.5)
    _, half = _timed(_decode(1), memory_efficiency=0.5, memory_half_bytes=2e6)
    assert float(step.ops["routed_experts"].kernels) == 96
    gained = float(half.op_memory_s["routed_experts"] - base.op_memory_s["routed_experts"])
    assert gained == pytest.approx(96 * 2e6 / (3e12 * 0.5), rel=1e-12)


def test_memory_half_bytes_makes_bandwidth_use_grow_with_kernel_size():
    # the fraction of the bandwidth a kernel reaches, n / (n + n_1/2): at batch 1 Qwen3-30B's routed-expert
    # kernels read 8 experts x 3 matrices x 2048 x 768 x 2 bytes / 2 kernels = 37.7 MB each; at batch 64 about
    # 128 x (1 - (1 - 8/128)^64) = 126.8 experts' worth (uniform routing): bigger kernels, closer to the peak
    # (plus the token activations the kernels read and write)
    def reached(batch):
        step, base = _timed(_decode(batch))
        _, half = _timed(_decode(batch), memory_half_bytes=8e6)
        return float(base.op_memory_s["routed_experts"] / half.op_memory_s["routed_experts"]), step
    at_1, step = reached(1)
    op = step.ops["routed_experts"]
    assert float(op.weight_bytes) / 96 == 8 * 3 * 2048 * 768 * 2 / 2
    n1 = float(op.bytes) / 96
    assert at_1 == pytest.approx(n1 / (n1 + 8e6), rel=1e-12)
    assert at_1 < reached(64)[0] < 1.0


def test_launch_floor_outside_a_captured_graph():
    # a step launched kernel by kernel takes at least kernels x host_launch_s; with 1 ms per launch the host
    # dominates: step = (compute kernels + collective calls) x 1e-3 exactly
    work = _decode(8)
    step, off = _timed(work)
    launches = sum(float(op.kernels) if op.compute != LINK else float(op.calls) for op in step.ops.values())
    _, slow = _timed(work, host_launch_s=1e-3)
    assert launches * 1e-3 > float(off.step_s)
    assert float(slow.step_s) == pytest.approx(launches * 1e-3, rel=1e-12)
    assert float(slow.by_category_s["overhead"]) == pytest.approx(launches * 1e-3 - float(off.step_s), rel=1e-9)
    # a decode step of 8 sequences under a graph captured up to 8 pays no launches; at 9 it does
    _, graphed = _timed(work, host_launch_s=1e-3, cuda_graph_max_batch=8)
    assert float(graphed.step_s) == pytest.approx(float(off.step_s), rel=1e-12)
    _, nine = _timed(_decode(9), host_launch_s=1e-3, cuda_graph_max_batch=8)
    assert float(nine.step_s) > 10 * float(graphed.step_s)
    # a prefill is never replayed from a decode graph
    prefill = Work(8 * 100, 8, 8 * 100 * 101 / 2, 0.0, False)
    _, pre_off = _timed(prefill)
    _, pre = _timed(prefill, host_launch_s=1e-3, cuda_graph_max_batch=512)
    assert float(pre.step_s) > float(pre_off.step_s)


def test_launch_floor_hidden_under_a_long_step():
    # launches run ahead of the device: 1 ns per launch is far below the device time and costs nothing
    _, off = _timed(_decode(8))
    _, fast = _timed(_decode(8), host_launch_s=1e-9)
    assert float(fast.step_s) == float(off.step_s)


def test_per_sequence_overhead_is_linear_in_the_batch():
    # host time per step = step_overhead_s + sequences x per_sequence_overhead_s:
    # 1e-3 + 32 x 2e-5 = 1.64e-3 s over the device time
    _, off = _timed(_decode(32))
    _, on = _timed(_decode(32), step_overhead_s=1e-3, per_sequence_overhead_s=2e-5)
    assert float(on.step_s - off.step_s) == pytest.approx(1e-3 + 32 * 2e-5, rel=1e-12)


def test_grouped_gemm_efficiency_follows_tokens_per_expert():
    # the fused MoE GEMM of an expert that got r tokens runs at r / (r + n_1/2) of the peak: its compute time
    # grows by 1 + n_1/2 / r. Prefill of 4096 tokens, uniform routing: 4096 x 8 assignments over 128 experts
    # = 256 rows per expert; n_1/2 = 64 -> x 1.25
    work = Work(4096, 1, 4096 * 4097 / 2, 0.0, False)
    step, base = _timed(work)
    _, half = _timed(work, gemm_half_rows=64.0)
    assert float(step.ops["routed_experts"].rows) == pytest.approx(256.0)
    ratio = float(half.op_compute_s["routed_experts"] / base.op_compute_s["routed_experts"])
    assert ratio == pytest.approx(1.25, rel=1e-12)



def test_chunked_prefill_holds_one_chunk_of_activations():
    # 64 prompts of 1000 tokens: prefilled at once the activations scale with 64,000 tokens; with a budget of
    # 8,192 tokens a step (vLLM's default on a >= 70 GiB GPU) with one chunk's: the difference is
    # (64,000 - 8,192) tokens x 2 bytes x (widest activation + hidden); the weights and KV cache do not change
    from capsim.sim.memory import memory_use

    s = _qwen3()
    kw = dict(batch=64, input_len=1000, output_len=100, kv_bytes_per_element=2.0, capacity_bytes=80e9)
    whole, chunked = memory_use(s, **kw), memory_use(s, **kw, max_batched_tokens=8192)
    widest = max(s.attn_io_width, s.top_k * s.expert_io_width + s.shared_io_width, s.dense_io_width)
    assert float(whole.activations - chunked.activations) == pytest.approx(
        (64_000 - 8_192) * 2 * (widest + s.hidden), rel=1e-12)
    assert (float(whole.weights), float(whole.kv_cache)) == (float(chunked.weights), float(chunked.kv_cache))
    # a batch whose prompts fit one chunk is not changed
    small = dict(kw, batch=4)
    assert float(memory_use(s, **small).activations) == float(memory_use(s, **small, max_batched_tokens=8192).activations)


def test_speculative_decoding_keeps_the_expected_accepted_tokens():
    # k = 2 draft tokens, acceptance 0.8: a step keeps E = (1 - 0.8^3) / (1 - 0.8) = 2.44 tokens per sequence
    # (Leviathan et al. 2023, eq. 1). TPOT = (verify step, 3 query tokens per sequence + 2 x one layer's share
    # of a plain decode step) / 2.44, and the request = TTFT + (O - 1) x TPOT
    from capsim.sim.request import simulate

    def scenario(k, a):
        prof = engines.load("roofline")
        sc = from_parts(_qwen3(), peak_flop_per_s={"matmul": PEAK, "attention": PEAK, "vector": PEAK},
                        bandwidth_bytes_per_s=BANDWIDTH, profile=prof, kv_bytes=2.0)
        return dataclasses.replace(sc, query=dataclasses.replace(sc.query, spec_tokens=k, spec_acceptance=a))

    b, i, o = 4, 512, 128
    res = simulate(scenario(2, 0.8), b, i, o)
    plain = simulate(scenario(0, 0.0), b, i, o)
    keys = 512 + 128 / 2  # mean context of a decode step
    _, verify = simulate_step(scenario(0, 0.0), Work(b * 3, b, b * 3 * keys, b * keys, True))
    expected_tpot = (float(verify.step_s) + 2 * float(plain.tpot_s) / 48) / 2.44
    assert float(res.tokens_per_step) == pytest.approx(2.44)
    assert float(res.tpot_s) == pytest.approx(expected_tpot, rel=1e-12)
    assert float(res.request_s) == pytest.approx(float(res.ttft_s) + 127 * expected_tpot, rel=1e-12)
    # every draft accepted: k + 1 tokens a step; none drafted: the plain decode step
    assert float(simulate(scenario(3, 1.0), b, i, o).tokens_per_step) == 4.0
    assert float(plain.tokens_per_step) == 1.0


def test_fp8_dispatch_sends_a_byte_and_a_scale_per_128_elements():
    # DeepEP's FP8 dispatch: 1 byte per hidden element + a 4-byte scale per 128 = 1.03125 bytes, against bf16's
    # 2: the dispatch sends 1.03125 / 2 of the bytes; the combine is unchanged
    from capsim.sim.ops import work_costs

    s, work = _qwen3(), _decode(64)
    bf16 = work_costs(s, work, kv_bytes_per_element=2.0, ep=8, n=8, tp=1)
    fp8 = work_costs(s, work, kv_bytes_per_element=2.0, ep=8, n=8, tp=1, dispatch_bytes_per_element=1 + 4 / 128)
    assert float(bf16.ops["ep_dispatch"].link_bytes) > 0
    assert float(fp8.ops["ep_dispatch"].link_bytes / bf16.ops["ep_dispatch"].link_bytes) == pytest.approx(1.03125 / 2)
    assert float(fp8.ops["ep_combine"].link_bytes) == float(bf16.ops["ep_combine"].link_bytes)


def test_speculative_decode_phase_rate_is_the_requests():
    # the decode phase's step is the verify pass alone; its tokens/s must still be b / TPOT (draft included,
    # divided by the tokens kept), the rate the report's headline gives
    from capsim.hardware import db as hwdb
    from capsim.predict import Query, predict

    rep = predict(Query(model="deepseek-v3", hardware="dgx-h200", batch=16, spec_tokens=1, spec_acceptance=0.85,
                        routing="uniform"), hwdb.load())
    assert rep["phases"]["decode"]["tokens_per_s"] == pytest.approx(rep["decode_tokens_per_s"], rel=1e-12)
    assert rep["decode_tokens_per_s"] == pytest.approx(16 / rep["tpot_s"], rel=1e-12)
