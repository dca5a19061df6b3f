"""Real routing by default: the ESFT importer, the fitted-model sampler, the prior, the choice --routing real
makes per model, the busiest EP rank, and the committed data (verified, replayed without torch)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from badinput import refused

from capsim import api
from capsim.sim.experts import busiest_rank, expected_activated, max_binomial
from capsim.traces import fitted, import_esft, prior
from capsim.traces.format import DECODE, PREFILL, open_trace

REPO = Path(__file__).resolve().parents[1]
ESFT = REPO / "traces" / "routing" / "esft-deepseek-v2-lite"


# ------------------------------------------------------------------------------------------ ESFT importer
def _line(tokens: list[list[int]]) -> str:
    ids = [str(x) for t in tokens for x in t]
    weights = ["0.1667"] * len(ids)
    return "\t".join(ids) + "\t\t" + "\t".join(weights)


def _fake_esft(seqs: list[list[list[int]]]) -> dict[str, str]:
    """Every MoE layer routes like layer 1 (enough for the importer's bookkeeping)."""
    text = "\n".join(_line(s) for s in seqs) + "\n"
    return {f"results/expert_scores/law/expert_weights_{layer}.txt": text for layer in range(1, 27)}


def test_esft_lines_become_tokens_with_template_prefill_and_a_decode_half():
    # 3 sequences; positions 0-1 identical in all (the template), then their own tokens: 6, 4 and 5 tokens.
    tmpl = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    seqs = [tmpl + [[12 + i, 20, 21, 22, 23, 24]] * (4 - i % 2) for i in range(3)]
    seqs[2] = seqs[2] + [[30, 31, 32, 33, 34, 35]]  # lengths 6, 5, 7
    files = _fake_esft(seqs)
    arrays, facts = import_esft.build(files.__getitem__, domains=("law",))
    assert facts == {"law": {"sequences": 3, "tokens": 18, "template_tokens": 2}}
    assert arrays["expert_ids"].shape == (18, 26, 6) and arrays["expert_ids"].dtype == np.uint8
    # sequence 0: 6 tokens, template 2, the other 4 split 2 prefill + 2 decode (rest - rest // 2 = 2 prefill)
    # sequence 1: 5 tokens, rest 3 -> 2 prefill, 1 decode; sequence 2: 7 tokens, rest 5 -> 3 prefill, 2 decode
    expected = [PREFILL] * 4 + [DECODE] * 2 + [PREFILL] * 4 + [DECODE] + [PREFILL] * 5 + [DECODE] * 2
    assert arrays["phase"].tolist() == expected
    assert arrays["sequence"].tolist() == [0] * 6 + [1] * 5 + [2] * 7
    assert arrays["position"][:6].tolist() == list(range(6))
    assert arrays["expert_ids"][6, 3].tolist() == [0, 1, 2, 3, 4, 5]  # sequence 1's first token, layer 4


def test_esft_bad_lines_are_refused():
    from capsim.errors import CapsimError

    with pytest.raises(CapsimError, match="expected 6 ids"):
        import_esft.parse_line("1\t2\t3\t\t0.5\t0.5\t0.5", "f:1")
    with pytest.raises(CapsimError, match="not an ESFT"):
        import_esft.parse_line("1 2 3", "f:1")


def test_committed_esft_trace_verifies_and_matches_its_source_counts():
    t = open_trace(ESFT, verify=True)
    m = t.meta
    # ESFT: 127 + 33 + 13 + 40 = 213 sequences, 8,222 + 8,327 + 8,479 + 8,251 = 33,279 tokens (wc of the files)
    assert (m["sequences"], m["tokens"], t.num_experts, t.top_k, m["moe_layers"]) == (213, 33_279, 64, 6, 26)
    assert m["synthetic"] is False and m["provenance"]["licence"].startswith("MIT")
    from capsim.model.catalogue import load_spec

    assert m["config_hash"] == load_spec("deepseek-v2-lite")[1]["config_hash"]  # replayed without --trace-any-model


def test_committed_routing_replays_without_torch():
    code = ("import sys; from capsim import api; "
            "r = api.predict('deepseek-v2-lite', 'h100', batch=16); "
            "assert r['scenario']['routing_kind'] == 'trace', r['scenario']; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"CAPSIM_CACHE": "off", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


# ------------------------------------------------------------------------------ what --routing real chooses
@pytest.mark.parametrize("model, kind, needle", [
    ("deepseek-v2-lite", "trace", "esft-deepseek-v2-lite"),
    ("mixtral", "fitted", "mixtral-8x7b.json"),
    ("olmoe", "fitted", "olmoe-1b-7b.json"),
    ("qwen3-30b", "prior", "no routing data for Qwen/Qwen3-30B-A3B"),
    ("deepseek-v3", "prior", "prior"),
])
def test_real_routing_is_the_default_and_named(model, kind, needle):
    sc = api.predict(model, "dgx-h100", batch=8, check_memory=False)["scenario"]
    assert sc["routing_kind"] == kind and needle in sc["routing"], sc
    assert sc["routing_source"]


def test_deepseek_v2_lite_batch_16_differs_from_uniform_by_what_the_trace_says():
    real = api.predict("deepseek-v2-lite", "h100", batch=16)
    uni = api.predict("deepseek-v2-lite", "h100", batch=16, routing="uniform")
    # uniform: 64 (1 - (1 - 6/64)^16) = 64 (1 - 0.9375^16) = 64 x 0.79300 = 50.752 experts per layer
    assert uni["activated_experts_per_layer"] == pytest.approx(64 * (1 - (58 / 64) ** 16), rel=1e-12)
    assert uni["scenario"]["routing_kind"] == "uniform" and uni["spread"] is None
    sp = real["spread"]["activated_experts_per_layer"]
    assert sp["p10"] < real["activated_experts_per_layer"] < sp["p90"] < uni["activated_experts_per_layer"]


def test_routing_path_takes_a_routing_model_file(tmp_path):
    m = fitted.RoutingModel("x", 8, 2, 32, "fitted", {0: np.array([0.3, 0.3, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])},
                            50.0, {"sources": [{"repository": "hand-made", "licence": "CC0"}]})
    path = fitted.save(tmp_path / "m.json", m)
    r = api.predict("mixtral", "dgx-h100", devices=2, batch=4, routing=str(path))
    assert r["scenario"]["routing_kind"] == "fitted" and "hand-made" in r["scenario"]["routing_source"]


def test_bad_routing_values_are_one_line_errors(tmp_path):
    refused(["predict", "-m", "mixtral", "-H", "dgx-h100", "--routing", "nosuch"], tmp_path, "--routing nosuch")
    (tmp_path / "m.json").write_text('{"format": "capsim-routing-model", "version": 1, "num_experts": 4}')
    refused(["predict", "-m", "mixtral", "-H", "dgx-h100", "--routing", "m.json"], tmp_path, "m.json")


# -------------------------------------------------------------------------------------- fitted sampler
def test_inclusion_caps_at_one_and_keeps_k():
    # k = 2, q = (0.7, 0.1, 0.1, 0.1): 2 q = (1.4, 0.2, 0.2, 0.2) -> expert 0 capped at 1, its 0.4 spread over
    # the other three in proportion: 0.2 x (1 + 0.4 / 0.6) = 1/3 each; total 1 + 3 x 1/3 = 2.
    pi = fitted.inclusion(np.array([0.7, 0.1, 0.1, 0.1]), 2)
    assert pi == pytest.approx([1.0, 1 / 3, 1 / 3, 1 / 3])


def test_systematic_sampling_picks_k_distinct_experts_at_their_inclusion_probabilities():
    rng = np.random.default_rng(3)
    pi = fitted.inclusion(rng.dirichlet(np.ones(16)), 4)
    ids = fitted.systematic_topk(pi[None, :], np.zeros(100_000, dtype=np.int64), rng)
    assert all(len(set(row)) == 4 for row in ids[:5000])
    freq = np.bincount(ids.ravel(), minlength=16) / 100_000
    # binomial sampling error of a frequency over 100,000 tokens: sd <= 0.0016; 5 sd
    assert np.abs(freq - pi).max() < 0.008


def test_fit_concentration_recovers_a_known_dirichlet():
    rng = np.random.default_rng(11)
    p = rng.dirichlet(np.ones(32))
    counts = np.array([rng.multinomial(400, rng.dirichlet(60.0 * p)) for _ in range(600)])
    assert fitted.fit_concentration(counts) == pytest.approx(60.0, rel=0.15)
    same = np.array([rng.multinomial(400, p) for _ in range(600)])  # no spread beyond sampling noise
    assert fitted.fit_concentration(same) > 1000


def test_prior_file_is_what_the_shipped_data_gives():
    shipped = prior.load()
    again = prior.fit()
    assert again["layer_load_cv"]["value"] == pytest.approx(shipped["layer_load_cv"]["value"], rel=1e-9)
    assert again["sequence_concentration"]["value"] == pytest.approx(shipped["sequence_concentration"]["value"],
                                                                   rel=1e-9)
    assert {m["model_id"] for m in shipped["models"]} >= {"deepseek-ai/DeepSeek-V2-Lite",
                                                          "mistralai/Mixtral-8x7B-v0.1", "allenai/OLMoE-1B-7B-0924"}


def test_dirichlet_a_gives_the_cv_asked():
    a = prior.dirichlet_a(64, 0.5)
    # CV^2 = (E - 1) / (E a + 1) -> 63 / (64 a + 1) = 0.25
    assert 63 / (64 * a + 1) == pytest.approx(0.25)
    draws = np.random.default_rng(0).dirichlet(np.full(64, a), size=4000)
    assert np.mean([prior.layer_cv(d) for d in draws]) == pytest.approx(0.5, rel=0.05)


# ------------------------------------------------------------------------------------- busiest EP rank
def test_max_binomial_exact_small_cases():
    assert max_binomial(1, 0.5, 2) == pytest.approx(0.75)  # 1 - P(both 0) = 1 - 1/4
    # Binomial(2, 1/2): F(0) = 1/4, F(1) = 3/4; E[max of 2] = (1 - 1/16) + (1 - 9/16) = 1.375
    assert max_binomial(2, 0.5, 2) == pytest.approx(1.375)
    assert max_binomial(10, 0.3, 1) == pytest.approx(3.0)  # one copy: the mean


def test_uniform_ep_prices_the_busiest_rank_not_the_mean():
    # Mixtral on 8 ranks (one expert each), one decode token: 2 experts used, on 2 ranks; the mean rank holds
    # 2/8 of an expert, the busiest one exactly 1 (the independent-ranks estimate 1 - (3/4)^8 = 0.8999 is
    # floored at 1: some rank always holds an activated expert) and 4x the mean's assignments (1 of the 2 over
    # a mean of 2/8: the independent-ranks estimate, 4.0012, is capped at 4 since a token's two distinct experts
    # put at most one assignment on a one-expert rank).
    act, load = busiest_rank(8, 2, 1, 8)
    assert float(act) == 1.0 and float(load) == 4.0
    assert float(busiest_rank(8, 2, 1, 1)[0]) == pytest.approx(float(expected_activated(8, 2, 1)))
    # many tokens: every rank busy, the busiest close to the mean (64 tokens x 2 = 128 assignments, 16 per rank)
    act, load = busiest_rank(8, 2, 64, 8)
    assert float(act) == pytest.approx(1.0, abs=1e-6) and 1.0 < float(load) < 1.0 + 3 * math.sqrt(16 * 7 / 8) / 16


def test_replayed_ep_step_reads_the_busiest_ranks_experts(tmp_path):
    """A hand-made trace whose every token picks experts 0 and 1 (both on rank 0 of EP2): the busiest rank
    reads 2 experts per layer at any batch, so TPOT does not move with the batch's experts, while the uniform
    busiest rank reads more as the batch grows."""
    from capsim.traces.format import write_trace
    from capsim.traces.synthetic import layout

    n_seq, per = 64, 8
    ids = np.zeros((n_seq * per, 32, 2), np.uint8)
    ids[..., 1] = 1
    arrays = {"expert_ids": ids, "weights": np.full(ids.shape, 0.5, np.float16), **layout(n_seq, 4, 4)}
    write_trace(tmp_path / "same", arrays, {"model_id": "mistralai/Mixtral-8x7B-v0.1", "num_experts": 8,
                                             "top_k": 2, "synthetic": True})
    rep = {b: api.predict("mixtral", "dgx-h100", devices=2, ep=2, batch=b, trace=str(tmp_path / "same"))
           for b in (1, 32)}
    assert rep[1]["spread"]["activated_experts_per_layer"]["p90"] == 2.0
    assert rep[32]["activated_experts_per_layer"] == 2.0


# ------------------------------------------------------------------------------------ validation table
def test_routing_validation_table_computes_its_errors():
    from capsim.validation import routing

    t = routing.table(REPO / "validation")
    priced = [r for r in t["rows"] if "skipped" not in r]
    assert len(priced) >= 9
    for r in priced:
        assert r["error_real"] == pytest.approx(r["real"] / r["measured"] - 1)
        assert r["uniform"] == pytest.approx(float(expected_activated(128, 8, r["batch"])))
    assert json.dumps(t)  # JSON-ready


def test_replayed_hit_rates_are_kept_and_give_the_same_answer(tmp_path, monkeypatch):
    """An expert-cache replay over a trace is kept in the cache folder (by the trace's content hash) and a
    fresh process's answer read from it is the replayed one."""
    from capsim import placement

    monkeypatch.setenv("CAPSIM_CACHE_DIR", str(tmp_path / "cache"))
    placement._replayed_hit_rate.cache_clear()
    q = dict(devices=1, batch=4, offload="gpu-fetch", expert_cache=16, trace=str(ESFT), engine="roofline")
    first = api.predict("deepseek-v2-lite", "h100", **q)
    kept = list((tmp_path / "cache" / "hit-rates").glob("*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())
    placement._replayed_hit_rate.cache_clear()  # as a new process would: only the file is left
    again = api.predict("deepseek-v2-lite", "h100", **q)
    assert again["offload"]["hit_rate_decode"] == first["offload"]["hit_rate_decode"]
    assert 16 / 64 < first["offload"]["hit_rate_decode"] < 1.0  # the trace's skew beats uniform's 16/64


def test_a_drawn_trace_without_the_cache_is_removed_when_the_process_ends(tmp_path):
    """With CAPSIM_CACHE=off a drawn trace (Mixtral's fitted routing: ~46 MB) goes to a temporary folder; every
    run used to leave one behind in $TMPDIR. It must exist while the process runs and be gone after."""
    code = ("from capsim import api; from capsim.traces import sources; "
            "r = api.predict('mixtral', 'dgx-h100', batch=8, check_memory=False); "
            "assert r['scenario']['routing_kind'] == 'fitted', r['scenario']; "
            "[d] = sources._TEMP.values(); assert (d / 'routing').is_dir(); print(d)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"CAPSIM_CACHE": "off", "TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith(str(tmp_path))  # the draw was written under our TMPDIR ...
    assert list(tmp_path.iterdir()) == []  # ... and removed at exit
