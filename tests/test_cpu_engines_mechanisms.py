"""CPU and hybrid engine mechanisms of issue 22: MoE-Infinity's time per expert fetched, the socket link between
CPU sockets, --sockets / --socket-layout, and the corpus hold-out rule."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from capsim import engines, precision
from capsim.cli.main import cli
from capsim.hardware.db import load
from capsim.hardware.target import resolve_target
from capsim.model.catalogue import load_spec
from capsim.scenario import from_parts
from capsim.sim.offload import offload_step
from capsim.sim.ops import Work
from capsim.sim.request import simulate_step
from capsim.sim.shape import shape_of
from capsim.validation import corpus
from capsim.validation.published import PublishedRow

DB = load()
FETCH_S = 1e-3  # a round per-fetch time for the derivations


def _fetch_time(model: str, activated: float) -> float:
    """Offload time of one batch-1 decode step with every routed expert fetched (hit rate 0), with and without
    the per-fetch time: their difference is what the engine adds per fetch."""
    s = shape_of(load_spec(model)[0], precision.PRECISIONS["bf16"])
    prof = dataclasses.replace(engines.load("roofline"), expert_fetch_s=FETCH_S)
    sc = from_parts(s, peak_flop_per_s={"matmul": 1e15, "attention": 1e15, "vector": 1e15},
                    bandwidth_bytes_per_s=3.35e12, profile=prof)
    step, t = simulate_step(sc, Work(tokens=1, seqs=1, pairs=100, kv_read_tokens=100, decode=True),
                            {"activated": activated})
    kw = dict(hit_rate=0.0, mode="gpu-fetch", link_bytes_per_s=32e9)
    with_fetch = offload_step(step, t, s, profile=prof, **kw)
    without = offload_step(step, t, s, profile=dataclasses.replace(prof, expert_fetch_s=0.0), **kw)
    return float(with_fetch.offload_s - without.offload_s)


def test_moe_infinity_overhead_scales_with_experts_fetched():
    # Per step: misses per MoE layer x MoE layers x expert_fetch_s. Mixtral-8x7B: top-2 of 8, 32 MoE layers ->
    # 2 x 32 = 64 fetches = 64 ms at 1 ms each. Qwen3-30B-A3B: top-8 of 128, 48 MoE layers -> 8 x 48 = 384
    # fetches = 384 ms: 6x Mixtral's, the scaling an overhead fitted per kernel on Mixtral missed.
    assert _fetch_time("mixtral-8x7b", 2.0) == pytest.approx(64 * FETCH_S)
    assert _fetch_time("qwen3-30b-a3b", 8.0) == pytest.approx(384 * FETCH_S)


def test_sockets_are_joined_by_their_socket_link():
    # Dual Xeon 6980P: the xeon-6980p item's socket_link is upi-2-24gt, 6 UPI 2.0 links x 24 GT/s x 2 bytes =
    # 288 GB/s per direction; a TP ring over the two sockets runs over it (DRAM is 614.4 GB/s per socket).
    link = DB.items["upi-2-24gt"].bandwidth_per_direction_bytes_per_s.value
    assert link == pytest.approx(6 * 24e9 * 2)
    t = resolve_target(DB, "cpu-server-xeon-6980p", 2)
    assert t.ring_bandwidth_bytes_per_s == pytest.approx(link)
    assert "upi-2-24gt" in t.collective_link


def test_the_ktransformers_testbed_sockets_use_their_cpus_link():
    # The system states no socket connection; capsim joins its two Xeon Gold 6454S sockets with the CPU item's
    # socket_link (the graph edge between cpu0 and cpu1 carries that link's id).
    from capsim.hardware.topology import build_graph

    g = build_graph(DB.items["ktransformers-testbed"], DB)
    cpus = sorted(n for n, d in g.nodes(data=True) if d["role"] == "cpu")
    assert g[cpus[0]][cpus[1]]["link"] == DB.items["xeon-gold-6454s"].socket_link


def _predict_json(*args):
    import json

    res = CliRunner().invoke(cli, ["predict", "-m", "qwen3-30b-a3b", "-H", "cpu-server-xeon-6980p", "--engine",
                                   "llama.cpp", "--precision", "q8_0", "--json", *args])
    return res, (json.loads(res.output) if res.exit_code == 0 else None)


def test_socket_layouts():
    res, tp = _predict_json("--sockets", "2", "--socket-layout", "tp")
    assert res.exit_code == 0 and (tp["scenario"]["tp"], tp["scenario"]["dp"]) == (2, 1)
    res, rep = _predict_json("--sockets", "2", "--socket-layout", "replica")
    assert res.exit_code == 0 and (rep["scenario"]["tp"], rep["scenario"]["dp"]) == (1, 2)
    # one instance per socket: each socket runs a whole request on its own DRAM, so a single request's decode
    # step is one socket's (TP over the two halves the bytes each socket reads)
    assert rep["phases"]["decode"]["step_s"] > tp["phases"]["decode"]["step_s"]


@pytest.mark.parametrize("args, needle", [(["--socket-layout", "replica"], "--socket-layout"),
                                          (["--sockets", "2", "--devices", "1"], "--sockets")])
def test_bad_socket_flags_exit_2(args, needle):
    res, _ = _predict_json(*args)
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output


def _row(rid: str, source: str, model: str) -> PublishedRow:
    return PublishedRow(rid, source, "decode_tokens_per_s_per_user", 1.0, 1.0, "tokens/s", "x",
                        {"model": model}, None, {})


def test_corpus_holds_out_by_source_else_by_model():
    two = [_row("a", "https://x.org/1", "m1"), _row("b", "https://x.org/2", "m1")]
    assert corpus.holdout_key(two)[0] == "source"
    one = [_row("a", "https://x.org/1", "m1"), _row("b", "https://x.org/1#t2", "m2")]
    by, key = corpus.holdout_key(one)
    assert by == "model" and {key(r) for r in one} == {"m1", "m2"}


def test_span_layout_bandwidth_is_derived_from_dram_and_link():
    # capsim.hardware.numa: one instance over two sockets, pages interleaved: min(2 x D, 4 x L). Dual 6980P,
    # DDR5-6400: D = 12 x 6400e6 x 8 = 614.4 GB/s, L = 288 GB/s -> min(1228.8, 1152) = 1152 GB/s (link-bound).
    from capsim.hardware.numa import span

    t = span(resolve_target(DB, "cpu-server-xeon-6980p", 2))
    assert t.n_devices == 1
    assert t.memory_bandwidth_bytes_per_s == pytest.approx(min(2 * 614.4e9, 4 * 288e9))
    one = resolve_target(DB, "cpu-server-xeon-6980p", 1)
    assert t.peak_flop_per_s["int8"] == pytest.approx(2 * one.peak_flop_per_s["int8"])


def test_threads_scale_the_compute_peak():
    # 32 threads on a 128-core 6980P socket: 32 / 128 = 1/4 of every path's peak; bandwidth unchanged
    from capsim.hardware.numa import with_threads

    one = resolve_target(DB, "cpu-server-xeon-6980p", 1)
    t = with_threads(one, 32)
    assert t.cpu_paths["amx-int8"] == pytest.approx(one.cpu_paths["amx-int8"] / 4)
    assert t.memory_bandwidth_bytes_per_s == one.memory_bandwidth_bytes_per_s
    assert with_threads(one, 500).cpu_paths == pytest.approx(one.cpu_paths)  # no more than one thread per core


def test_span_needs_two_sockets():
    res, _ = _predict_json("--sockets", "1", "--socket-layout", "span")
    assert res.exit_code == 2 and "--socket-layout span" in res.output


def test_chunked_prefill_reads_the_weights_once_per_chunk():
    # An engine that prefills at most M tokens per step takes c = ceil(T / M) equal steps of T / c tokens. Here
    # one sequence of 4,096 tokens, M = 1,024: 4 steps of 1,024 tokens (and a quarter of the causal pairs each),
    # so TTFT = 4 x the time of one such step (roofline profile: no overheads; uniform routing).
    from capsim.predict import Query
    from capsim.scenario import resolve
    from capsim.sim.request import prefill_chunks, simulate

    assert prefill_chunks(4096, 1024) == 4 and prefill_chunks(4097, 1024) == 5 and prefill_chunks(4096, 0) == 1
    prof = dataclasses.replace(engines.load("roofline"), max_batched_tokens=1024.0)
    sc = resolve(Query(model="qwen3-30b-a3b", hardware="h100", engine="roofline", routing="uniform",
                       check_memory=False), DB, prof)
    whole = simulate(sc, 1, 4096, 2)
    pairs = 4096 * 4097 / 2  # causal (query, key) pairs per layer
    _, t = simulate_step(sc, Work(1024, 1, pairs / 4, 0.0, False))
    assert float(whole.ttft_s) == pytest.approx(4 * float(t.step_s), rel=1e-9)


def test_llama_cpp_moves_a_large_steps_cpu_experts_to_the_gpu():
    # llama.cpp -ot exps=CPU beside an RTX 4080 (ik-llama-testbed), every expert in host DRAM: a prefill step of
    # 512 tokens (>= GGML_OP_OFFLOAD_MIN_BATCH = 32) copies the experts it touches to the GPU, so its offload time is
    # their bytes over the host link; a decode step (1 token) computes them on the CPU (bound by DRAM).
    from capsim.predict import Query, predict

    q = dict(model="qwen3-30b-a3b", hardware="ik-llama-testbed", engine="llama.cpp", precision="q4_k_m",
             offload="cpu", expert_cache=0, input_len=512, output_len=16, routing="uniform")
    rep = predict(Query(**q), DB)
    off = rep["offload"]
    prof = engines.load("llama.cpp")
    assert prof.host_op_offload_min_tokens == 32
    link = off["link_bytes_per_s"] * prof.link_efficiency
    assert off["prefill"]["offload_s"] == pytest.approx(off["prefill"]["miss_bytes"] / link, rel=1e-9)
    assert off["decode"]["host_bound"] == "memory"
    # without the op offload, the same prefill is computed by the CPU: slower than streaming over PCIe here
    no = dataclasses.replace(prof, host_op_offload_min_tokens=0.0)
    slow = predict(Query(**q), DB, no)["offload"]["prefill"]["offload_s"]
    assert slow > off["prefill"]["offload_s"]


@pytest.mark.parametrize("threads, layout, sockets", [(128, None, 1), (32, None, 1), (16, "span", 2)])
def test_a_barrier_per_kernel_costs_its_threads(threads, layout, sockets):
    # ggml meets all its threads at a barrier after every graph node: sync_s_per_thread x threads per kernel.
    # A decode step of one sequence on a 6980P socket at 128 threads (or 32; or span: 16 per socket x 2 sockets =
    # 32), 1 us per thread: each kernel pays T x 1 us, so the step is sum(kernels) x T x 1 us longer than with
    # no barrier cost (roofline profile: no other overhead).
    from capsim.predict import Query
    from capsim.scenario import resolve

    q = Query(model="qwen3-30b-a3b", hardware="cpu-server-xeon-6980p", devices=sockets, engine="roofline",
              routing="uniform", check_memory=False, threads=threads,
              **({"socket_layout": layout} if layout else {}))
    base = engines.load("roofline")
    work = Work(1, 1, 100.0, 100.0, True)
    _, off = simulate_step(resolve(q, DB, base), work)
    step, on = simulate_step(resolve(q, DB, dataclasses.replace(base, sync_s_per_thread=1e-6)), work)
    kernels = sum(op.kernels for op in step.ops.values() if op.compute != "link")
    instance_threads = threads * sockets
    assert kernels > 0
    assert float(on.step_s - off.step_s) == pytest.approx(kernels * instance_threads * 1e-6, rel=1e-9)


def test_the_cpu_side_of_an_offload_pays_its_barriers_for_its_share():
    # -ot exps=CPU: the CPU computes the missed share (1 - hit rate) of the routed experts, so it runs that share
    # of their kernels, each ending at a barrier of its T threads: (1 - h) x kernels x T x sync_s_per_thread.
    # Hit rate 0.25, 16 threads, 1 us: 0.75 x kernels x 16 us more than without the barrier cost.
    s = shape_of(load_spec("qwen3-30b-a3b")[0], precision.PRECISIONS["bf16"])
    prof = engines.load("roofline")
    sc = from_parts(s, peak_flop_per_s={"matmul": 1e15, "attention": 1e15, "vector": 1e15},
                    bandwidth_bytes_per_s=1e12, profile=prof)
    step, t = simulate_step(sc, Work(tokens=1, seqs=1, pairs=100, kv_read_tokens=100, decode=True))
    kw = dict(hit_rate=0.25, mode="cpu", link_bytes_per_s=32e9, host_bandwidth_bytes_per_s=80e9,
              host_peak_flop_per_s=1e12, host_threads=16)
    on = offload_step(step, t, s, profile=dataclasses.replace(prof, sync_s_per_thread=1e-6), **kw)
    off = offload_step(step, t, s, profile=prof, **kw)
    kernels = step.ops["routed_experts"].kernels
    assert kernels > 0
    assert float(on.offload_s - off.offload_s) == pytest.approx(0.75 * kernels * 16 * 1e-6, rel=1e-9)
