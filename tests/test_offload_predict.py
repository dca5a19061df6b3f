"""Expert offload in `capsim predict`: exact miss bytes, the orderings users see, and bad placements."""

import pytest
from click.testing import CliRunner

from capsim import engines, precision
from capsim.cli.main import cli
from capsim.hardware.db import load
from capsim.hardware.target import resolve_target
from capsim.model.catalogue import load_spec
from capsim.predict import Query, predict
from capsim.scenario import from_parts
from capsim.sim.offload import offload_step
from capsim.sim.ops import Work, step_costs
from capsim.sim.request import simulate_step
from capsim.sim.shape import shape_of

DB = load()


def test_gpu_fetch_miss_bytes_exact():
    # Mixtral-8x7B bf16, batch 1: 2 experts per MoE layer (top-2). Hit rate 0.5 -> 1 missed expert per layer:
    # 1 x 176,160,768 params x 2 bytes x 32 layers = 11,274,289,152 bytes over the host link.
    s = shape_of(load_spec("mixtral")[0], precision.PRECISIONS["bf16"])
    prof = engines.load("roofline")
    sc = from_parts(s, peak_flop_per_s={"matmul": 1e15, "attention": 1e15, "vector": 1e15},
                    bandwidth_bytes_per_s=3.35e12, profile=prof)
    step, t = simulate_step(sc, Work(tokens=1, seqs=1, pairs=100, kv_read_tokens=100, decode=True), {"activated": 2.0})
    off = offload_step(step, t, s, hit_rate=0.5, mode="gpu-fetch", link_bytes_per_s=32e9, profile=prof)
    assert float(off.miss_bytes) == 11_274_289_152
    assert float(off.offload_s) == pytest.approx(11_274_289_152 / 32e9)
    assert float(off.step_s) == pytest.approx(float(t.step_s) + 11_274_289_152 / 32e9)  # no overlap in roofline


def test_deepseek_v3_cpu_experts_are_dram_bound():
    # 1 GPU (RTX 4090D) + 2 Xeon sockets with DDR5 (KTransformers' machine), every routed expert on the CPU.
    rep = predict(Query(model="deepseek-v3", hardware="ktransformers-testbed", precision="gguf-q4_k_m",
                        offload="cpu", expert_cache=0, input_len=500, output_len=128, engine="roofline"), DB)
    off = rep["offload"]["decode"]
    assert off["host_bound"] == "memory"
    assert off["offload_s"] > off["device_s"]


def test_bigger_cache_raises_hit_rate_and_lowers_tpot():
    tpot, hits = [], []
    for cache in (0, 1, 2, 3, 4):
        rep = predict(Query(model="mixtral", hardware="workstation-rtx-4090", precision="int4", offload="gpu-fetch",
                            expert_cache=cache), DB)
        tpot.append(rep["tpot_s"])
        hits.append(rep["offload"]["hit_rate_decode"])
    assert all(a < b for a, b in zip(hits, hits[1:], strict=False))
    assert all(a > b for a, b in zip(tpot, tpot[1:], strict=False))


def test_bigger_lru_cache_with_a_trace_is_monotone():
    # LRU is a stack algorithm (the cache of size C is always a subset of the cache of size C + 1), so the
    # replayed hit rate cannot fall as the cache grows.
    model = "traces/models/tiny-olmoe-stdlib/config.json"
    rates = []
    for cache in (2, 4, 8, 12):
        rep = predict(Query(model=model, hardware="workstation-rtx-4090", offload="gpu-fetch", expert_cache=cache,
                            batch=4, trace="traces/tiny-olmoe-stdlib"), DB)
        rates.append(rep["offload"]["hit_rate_decode"])
    assert all(a <= b for a, b in zip(rates, rates[1:], strict=False)) and rates[-1] > rates[0]


def test_mixtral_ep8_on_8_h100_beats_tp1_offload():
    ep8 = predict(Query(model="mixtral", hardware="dgx-h100", devices=8, tp=1, ep=8), DB)
    off = predict(Query(model="mixtral", hardware="dgx-h100", devices=1, offload="gpu-fetch"), DB)
    assert ep8["tpot_s"] < off["tpot_s"]


@pytest.mark.parametrize("engine, request_bytes", [
    # roofline: one expert weight matrix per read (Mixtral: hidden 4096 x intermediate 14336 weights)
    ("roofline", None),
    # llama.cpp maps its file: one 128 KiB read-around window per read (validation/config.yaml)
    ("llama.cpp", 131072),
])
def test_ssd_tier_reads_misses_at_the_drive_rate_for_the_request_size(engine, request_bytes):
    # workstation-rtx-4090: Samsung 990 PRO, 7.45 GB/s sequential, 1.4 M 4 KiB IOPS (5.7344 GB/s at 4 KiB), on a
    # PCIe 4.0 x4 link (7.88 GB/s, above the drive's rate). Every expert off the GPU (--expert-cache 0), CPU
    # compute: the drive time comes before the CPU's, so the ssd tier adds exactly miss bytes / rate(request).
    from capsim.sim.ssd import read_rate

    q = dict(model="mixtral", hardware="workstation-rtx-4090", precision="int4", engine=engine, offload="cpu",
             expert_cache=0)
    dram = predict(Query(**q), DB)["offload"]["decode"]
    ssd = predict(Query(**q, expert_tier="ssd"), DB)
    if request_bytes is None:
        s = shape_of(load_spec("mixtral")[0], precision.PRECISIONS["int4"])
        request_bytes = 4096 * 14336 * s.expert_weight_bytes
    rate = read_rate(request_bytes, 7.45e9, 1.4e6 * 4096)
    miss = ssd["offload"]["decode"]["miss_bytes"]
    assert miss == dram["miss_bytes"]
    assert ssd["offload"]["decode"]["offload_s"] - dram["offload_s"] == pytest.approx(miss / rate)
    assert ssd["memory_bytes"]["ssd"]["used"] == ssd["offload"]["host_expert_bytes"] > 0
    assert ssd["memory_bytes"]["host_dram"]["used"] == 0.0


@pytest.mark.parametrize("args, message", [
    (["-m", "mixtral", "-H", "dgx-h100", "--devices", "3", "--tp", "1", "--ep", "3"],
     "--ep 3: 8 routed experts do not split evenly over 3 ranks"),
    (["-m", "mixtral", "-H", "dgx-h100", "--devices", "9"], "--devices 9: system dgx-h100 has 8"),
    (["-m", "mixtral", "-H", "workstation-rtx-4090", "--offload", "gpu-fetch", "--expert-cache", "8"],
     "--expert-cache 8: the placement does not fit"),
    (["-m", "mixtral", "-H", "ktransformers-testbed", "--offload", "gpu-fetch", "--expert-tier", "ssd"],
     "--expert-tier ssd: ktransformers-testbed has no drive"),
    (["-m", "mixtral", "-H", "h100-sxm5-80gb", "--offload", "cpu"], "is a bare device with no host CPU"),
])
def test_bad_layouts_are_one_line_errors(args, message):
    r = CliRunner().invoke(cli, ["predict", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def _mixtral_shape():
    return shape_of(load_spec("mixtral")[0], precision.PRECISIONS["bf16"])


def test_ring_allreduce_time_from_link_bandwidth_and_latency():
    # Mixtral decode, batch 1, TP2: 2 all-reduces per layer x 32 layers, each of the hidden state
    # (4096 x 2 bytes); a ring moves 2 (n - 1) / n of the message per device: 2 x 32 x 2 x 1/2 x 8192
    # = 524,288 bytes. At 450 GB/s per direction and 5 us per call: 524,288 / 450e9 + 64 x 5e-6 s.
    import dataclasses

    s = _mixtral_shape()
    prof = dataclasses.replace(engines.load("roofline"), collective_latency_s=5e-6)
    sc = from_parts(s, peak_flop_per_s={"matmul": 1e15, "attention": 1e15, "vector": 1e15},
                    bandwidth_bytes_per_s=3.35e12, ring_bandwidth_bytes_per_s=450e9, profile=prof, tp=2, n=2)
    step, t = simulate_step(sc, Work(tokens=1, seqs=1, pairs=10, kv_read_tokens=10, decode=True))
    assert float(step.ops["tp_allreduce"].link_bytes) == 524_288 and float(step.ops["tp_allreduce"].calls) == 64
    assert float(t.transfer_s["tp_allreduce"]) == pytest.approx(524_288 / 450e9 + 64 * 5e-6)


def test_alltoall_bytes_per_rank_for_a_given_routing():
    # Mixtral, EP8 over 8 devices (TP1, so 8 data-parallel attention groups), 64 decode tokens, routing with
    # the busiest rank at 1.5x the mean load. Dispatch + combine per MoE layer send each of the rank's
    # 64 / 8 = 8 tokens' top-2 copies of the hidden state (4096 x 2 bytes) to the other 7 of 8 ranks:
    # 2 x 1.5 x 8 x 2 x 8192 x 7/8 x 32 layers = 11,010,048 bytes.
    s = _mixtral_shape()
    step = step_costs(s, tokens=64, seqs=64, pairs=640, kv_read_tokens=640, decode=True, kv_bytes_per_element=2.0,
                      tp=1, ep=8, n=8, activated=8.0, rank_activated=1.0, rank_load=1.5)
    # dispatch and combine each send half of it, one call per MoE layer
    assert float(step.ops["ep_dispatch"].link_bytes) == float(step.ops["ep_combine"].link_bytes) == 11_010_048 / 2
    assert float(step.ops["ep_dispatch"].calls) == 32


def test_capacity_limits_are_the_largest_that_fit():
    q = Query(model="mixtral", hardware="dgx-h100", devices=2, batch=32)
    rep = predict(q, DB)
    b, i = rep["capacity"]["max_batch"], rep["capacity"]["max_input_len"]
    assert b > 32 and i > 512
    assert predict(Query(model="mixtral", hardware="dgx-h100", devices=2, batch=b), DB)["fits"]
    r = CliRunner().invoke(cli, ["predict", "-m", "mixtral", "-H", "dgx-h100", "--devices", "2", "--batch", str(b + 1)])
    assert r.exit_code == 2 and "--batch" in r.output  # one more does not fit; the error suggests a smaller batch
    assert predict(Query(model="mixtral", hardware="dgx-h100", devices=2, batch=32, input_len=i), DB)["fits"]
    r = CliRunner().invoke(cli, ["predict", "-m", "mixtral", "-H", "dgx-h100", "--devices", "2", "--batch", "32",
                                 "--input-len", str(i + 1)])
    assert r.exit_code == 2


def test_pipeline_stages_split_weights_and_add_hops():
    # Mixtral (32 layers) on 8 H100s: PP2 x TP2 x DP2 against TP2 x DP4. Each stage holds 16 of 32 layers:
    # exactly half the weights per device. Each DP group decodes 16 sequences either way, so TPOT differs only
    # by one hop of a 32-sequence micro-batch's hidden states (32 x 4096 x 2 bytes) over the NVLink path.
    base = predict(Query(model="mixtral", hardware="dgx-h100", devices=8, tp=2, batch=64), DB)
    pp2 = predict(Query(model="mixtral", hardware="dgx-h100", devices=8, tp=2, pp=2, batch=64), DB)
    w0, w2 = base["memory_bytes"]["device"]["weights"], pp2["memory_bytes"]["device"]["weights"]
    assert w2 == pytest.approx(w0 / 2)
    hop = 32 * 4096 * 2 / resolve_target(DB, "dgx-h100", 2).ring_bandwidth_bytes_per_s
    assert pp2["tpot_s"] == pytest.approx(base["tpot_s"] + hop)
    assert pp2["scenario"]["devices"] == 8 and pp2["scenario"]["pp"] == 2


@pytest.mark.parametrize("args, message", [
    (["--devices", "8", "--pp", "3"], "--pp 3: expected a positive divisor of the 8 devices"),
    (["--devices", "8", "--tp", "2", "--dp", "2"], "--dp 2: tp x dp x pp must equal the devices used"),
])
def test_bad_pipeline_layouts(args, message):
    r = CliRunner().invoke(cli, ["predict", "-m", "mixtral", "-H", "dgx-h100", *args])
    assert r.exit_code == 2 and message in r.output


def test_batch_max_is_the_largest_batch_that_fits():
    # --batch max: the capacity search's max_batch at the query's lengths; one more sequence does not fit.
    q = dict(model="qwen3-30b-a3b", hardware="dgx-b200", devices=1, precision="nvfp4", input_len=1000, output_len=1000)
    rep = predict(Query(**q, batch="max"), DB)
    b = rep["scenario"]["batch"]
    assert b == predict(Query(**q, batch=1), DB)["capacity"]["max_batch"] > 1
    assert rep["fits"]
    assert not predict(Query(**q, batch=b + 1, check_memory=False), DB)["fits"]
    # total output throughput: the batch's output tokens over the request time
    assert rep["output_tokens_per_s_total"] == pytest.approx(b * 1000 / rep["request_latency_s"], rel=1e-12)
    assert any(n.startswith("--batch max:") for n in rep["scenario"]["notes"])


@pytest.mark.parametrize("args, message", [
    (["--batch", "max", "--offload", "gpu-fetch"], "--batch max: not with --offload"),
    (["--batch", "0"], "--batch 0: expected an integer >= 1"),
    (["--batch", "most"], "expected a positive integer or 'max'"),
])
def test_bad_batch_is_a_one_line_error(args, message):
    r = CliRunner().invoke(cli, ["predict", "-m", "mixtral", "-H", "workstation-rtx-4090", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
