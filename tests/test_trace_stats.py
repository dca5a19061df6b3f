"""Trace statistics, synthetic traces and ``capsim trace stats|synth``: exact on hand-made traces."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsim.cli.trace_analyse import stats_cmd, synth_cmd
from capsim.sim.experts import expected_activated
from capsim.traces import stats
from capsim.traces.format import DECODE, PREFILL, open_trace, write_trace
from capsim.traces.synthetic import (
    expected_activated_zipf,
    fit_zipf_exponent,
    fitted_trace,
    synthetic_trace,
    uniform_trace,
    zipf_trace,
)

# ----------------------------------------------------------------------------- helpers


def make(tmp_path, ids, seq, pos, phase, num_experts, name="t"):
    """Write a hand-made trace and open it (ids: (tokens, layers, k))."""
    ids = np.asarray(ids)
    arrays = {"expert_ids": ids, "weights": np.ones(ids.shape) / ids.shape[-1], "sequence": np.asarray(seq),
              "position": np.asarray(pos), "phase": np.asarray(phase)}
    write_trace(tmp_path / name, arrays, {"model_id": "hand-made", "num_experts": num_experts,
                                          "top_k": ids.shape[-1], "synthetic": False})
    return open_trace(tmp_path / name)


def layout(sequences, prompt, decode):
    per = prompt + decode
    pos = np.tile(np.arange(per), sequences)
    return np.repeat(np.arange(sequences), per), pos, np.where(pos < prompt, PREFILL, DECODE)


def write_synth(tmp_path, name, arrays_meta):
    arrays, meta = arrays_meta
    write_trace(tmp_path / name, arrays, meta)
    return open_trace(tmp_path / name)


# ----------------------------------------------------------------------------- hand-made traces


def test_all_tokens_to_one_expert(tmp_path):
    seq, pos, phase = layout(sequences=4, prompt=3, decode=5)
    ids = np.zeros((len(seq), 2, 1), np.int64)  # top-1, 2 layers, everything to expert 0
    t = make(tmp_path, ids, seq, pos, phase, num_experts=8)
    pop = stats.expert_popularity(t)
    one_hot = np.zeros((2, 8))
    one_hot[:, 0] = 1
    for name, n in (("all", 32), ("prefill", 12), ("decode", 20)):
        np.testing.assert_array_equal(pop["share"][name], one_hot)
        assert pop["counts"][name][:, 0].tolist() == [n, n] and pop["tokens"][name] == n
    for phase_name in ("decode", "prefill"):
        c = stats.activated_experts_curve(t, [1, 2, 4, 8], phase=phase_name, samples=20)
        assert c["batch_sizes"].tolist() == [1, 2, 4]  # 8 > the 4 sequences: dropped
        for key in ("mean", "p10", "p50", "p90"):
            np.testing.assert_array_equal(c[key], [1, 1, 1])
        np.testing.assert_array_equal(c["std"], 0)
    dec = stats.activated_experts_curve(t, [1, 2, 4], samples=20)
    np.testing.assert_array_equal(dec["tokens"], [1, 2, 4])
    np.testing.assert_allclose(dec["uniform"], expected_activated(8, 1, np.array([1, 2, 4])))
    pre = stats.activated_experts_curve(t, [1, 2, 4], phase="prefill", samples=20)
    np.testing.assert_array_equal(pre["tokens"], [3, 6, 12])
    imb = stats.load_imbalance(pop["counts"]["all"], [2, 4])
    np.testing.assert_array_equal(imb["experts"]["per_layer"], [8, 8])
    assert imb["ep"][2]["mean"] == 2 and imb["ep"][4]["mean"] == 4


def test_disjoint_experts_per_sequence_activate_k_times_b(tmp_path):
    e, n_seq, layers = 32, 8, 3  # top-2
    seq, pos, phase = layout(n_seq, prompt=4, decode=6)
    ids = np.stack([2 * seq, 2 * seq + 1], -1)[:, None, :].repeat(layers, 1)  # sequence s: experts 2s, 2s+1
    t = make(tmp_path, ids, seq, pos, phase, num_experts=e)
    for phase_name in ("decode", "prefill"):
        c = stats.activated_experts_curve(t, [1, 2, 4, 8], phase=phase_name, samples=50, seed=3)
        assert c["batch_sizes"].tolist() == [1, 2, 4, 8]
        for key in ("mean", "p10", "p50", "p90"):
            np.testing.assert_array_equal(c[key], [2, 4, 8, 16])
        np.testing.assert_array_equal(c["per_layer_mean"], np.array([[2], [4], [8], [16]]).repeat(layers, 1))
        assert c["max_batch"] == n_seq


def test_prefill_is_the_union_of_prompts(tmp_path):
    # seq 0 prompt touches {0, 1}, seq 1 prompt {1, 2}; decode tokens use expert 7 only
    ids = np.array([0, 1, 7, 1, 2, 7])[:, None, None]
    t = make(tmp_path, ids, [0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2], [0, 0, 1, 0, 0, 1], num_experts=8)
    pre = stats.activated_experts_curve(t, [1, 2], phase="prefill", samples=30)
    np.testing.assert_array_equal(pre["mean"], [2, 3])
    np.testing.assert_array_equal(pre["tokens"], [2, 4])
    dec = stats.activated_experts_curve(t, [1, 2], samples=30)
    np.testing.assert_array_equal(dec["mean"], [1, 1])


def test_decode_batch_is_one_step_of_concurrent_sequences(tmp_path):
    # seq 0 decodes 3 steps (experts 0, 5, 6), seq 1 one step (expert 1); rows stored step-major
    # (as a batched collector writes them), not sequence by sequence.
    rows = [(0, 4, 0), (1, 2, 1), (0, 5, 5), (0, 6, 6)]  # (sequence, position, expert)
    seq, pos, ids = (np.array(c) for c in zip(*rows, strict=True))
    t = make(tmp_path, ids[:, None, None], seq, pos, np.full(4, DECODE), num_experts=8)
    c = stats.activated_experts_curve(t, [1, 2, 3], samples=100)
    assert c["batch_sizes"].tolist() == [1, 2] and c["max_batch"] == 2
    np.testing.assert_array_equal(c["mean"], [1, 2])  # B=2 only at step 0: experts {0, 1}
    np.testing.assert_array_equal(stats.activated_experts_curve(t, [], samples=5)["mean"], [])


def test_ep_rank_imbalance_exact():
    counts = np.array([[3, 0, 0, 1, 4, 0, 0, 0],   # layer 0: 8 tokens, top-1
                       [1, 1, 1, 1, 1, 1, 1, 1]])  # layer 1: balanced
    imb = stats.load_imbalance(counts, [2, 4, 8])
    np.testing.assert_allclose(imb["experts"]["per_layer"], [4.0, 1.0])
    np.testing.assert_array_equal(imb["ep"][2]["rank_tokens"], [[4, 4], [4, 4]])
    np.testing.assert_allclose(imb["ep"][2]["per_layer"], [1.0, 1.0])
    np.testing.assert_array_equal(imb["ep"][4]["rank_tokens"], [[3, 1, 4, 0], [2, 2, 2, 2]])
    np.testing.assert_allclose(imb["ep"][4]["per_layer"], [2.0, 1.0])
    np.testing.assert_allclose(imb["ep"][8]["per_layer"], [4.0, 1.0])
    assert imb["ep"][4]["worst_layer"] == 0 and imb["ep"][4]["max"] == 2.0 and imb["ep"][4]["mean"] == 1.5
    assert stats.default_ep_sizes(12) == [2, 4] and stats.default_ep_sizes(60) == [2, 4]
    with pytest.raises(ValueError, match="ep=3"):
        stats.load_imbalance(counts, [3])


def test_decode_step_imbalance_exact(tmp_path):
    # one decode step of 4 sequences, top-1 experts 0, 0, 1, 4 (E = 8): B = 4 has one composition
    t = make(tmp_path, np.array([0, 0, 1, 4])[:, None, None], [0, 1, 2, 3], [7, 7, 7, 7], [1, 1, 1, 1], 8)
    s = stats.decode_step_imbalance(t, [4], ep_sizes=[2, 4], samples=10)
    assert s["batch_sizes"].tolist() == [4]
    assert s["experts"][0] == pytest.approx(2 * 3 / 4)  # max 2 tokens / (4 tokens over 3 active experts)
    assert s["ep"][2]["tokens"][0] == pytest.approx(3 / 2)  # ranks get 3 and 1 tokens
    assert s["ep"][2]["activated"][0] == pytest.approx(2 / 1.5)  # ranks hold 2 and 1 active experts
    assert s["ep"][4]["tokens"][0] == pytest.approx(3 / 1)  # ranks 3, 0, 1, 0


def test_affinity_copied_routing_is_maximal_and_independent_is_zero():
    rng = np.random.default_rng(1)
    e, n = 8, 20000
    first = rng.integers(e, size=n)
    copied = stats.cross_layer_affinity({"expert_ids": np.stack([first, first], 1)[:, :, None]})
    h = -(np.bincount(first) / n * np.log2(np.bincount(first) / n)).sum()
    assert copied["mi_bits"][0] == pytest.approx(h) and h > 2.99  # = H(layer l) ~ log2(8): the maximum
    assert copied["nmi"][0] == pytest.approx(1.0)
    assert copied["top_lift"][0] == pytest.approx(e, rel=0.05)
    permuted = stats.cross_layer_affinity({"expert_ids": np.stack([first, (3 * first + 1) % e], 1)[:, :, None]})
    assert permuted["nmi"][0] == pytest.approx(1.0)  # any deterministic map, not only the identity
    indep = stats.cross_layer_affinity({"expert_ids": np.stack([first, rng.integers(e, size=n)], 1)[:, :, None]})
    assert indep["mi_bits"][0] < 0.01 and indep["nmi"][0] < 0.005
    assert indep["mi_bits"][0] < 5 * indep["mi_noise_bits"][0]
    assert indep["top_lift"][0] == pytest.approx(1.0, abs=0.15)
    cond = stats.conditional_probabilities(stats.affinity_counts({"expert_ids": np.stack([first, first], 1)[:, :, None]}))
    np.testing.assert_allclose(cond[0], np.eye(e))


def test_functions_take_arrays_too():
    ids = np.array([[[0, 1]], [[1, 2]], [[2, 3]]])
    pop = stats.expert_popularity({"expert_ids": ids})
    assert pop["counts"]["all"].tolist() == [[1, 2, 2, 1]]
    assert pop["tokens"]["prefill"] == 3  # missing columns: one prefill sequence
    c = stats.activated_experts_curve(stats.from_arrays({"expert_ids": ids}, num_experts=6), [1], "prefill", 5)
    assert c["mean"].tolist() == [4.0] and c["uniform"][0] == pytest.approx(expected_activated(6, 2, 3))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(e=st.integers(2, 12), data=st.data())
def test_activated_bounds(tmp_path, e, data):
    k = data.draw(st.integers(1, e))
    n_seq = data.draw(st.integers(1, 6))
    decode = data.draw(st.integers(1, 4))
    rng = np.random.default_rng(data.draw(st.integers(0, 100)))
    seq, pos, phase = layout(n_seq, prompt=2, decode=decode)
    ids = np.argsort(rng.random((len(seq), 2, e)), -1)[..., :k]
    t = make(tmp_path, ids, seq, pos, phase, num_experts=e)
    for name in ("decode", "prefill"):
        c = stats.activated_experts_curve(t, [1, 2, 4], phase=name, samples=5)
        assert np.all(c["p10"] <= c["p50"] + 1e-9) and np.all(c["p50"] <= c["p90"] + 1e-9)
        assert np.all(c["mean"] >= k) and np.all(c["mean"] <= np.minimum(e, k * c["tokens"]))
    json.dumps(stats.summary(t, samples=3), allow_nan=False)


# ----------------------------------------------------------------------------- synthetic traces


def test_uniform_synthetic_matches_the_closed_form(tmp_path):
    t = write_synth(tmp_path, "u", uniform_trace(64, 8, 6, sequences=48, prompt_len=2, decode_len=12, seed=5))
    c = stats.activated_experts_curve(t, [1, 4, 16], samples=300, seed=1)
    expect = expected_activated(64, 8, np.array([1, 4, 16]))
    np.testing.assert_allclose(c["uniform"], expect)
    np.testing.assert_allclose(c["mean"], expect, rtol=0.03)
    assert c["mean"][0] == 8  # top-k distinct


def test_zipf_activates_fewer_than_uniform(tmp_path):
    t = write_synth(tmp_path, "z", zipf_trace(64, 8, 4, s=1.2, sequences=32, prompt_len=4, decode_len=8, seed=2))
    c = stats.activated_experts_curve(t, [4, 16], samples=200)
    assert np.all(c["mean"] < 0.85 * c["uniform"])
    assert np.all(c["mean"] == pytest.approx(expected_activated_zipf(64, 8, 1.2, [4, 16]), abs=1.0))
    pop = stats.expert_popularity(t)["share"]["all"]
    assert pop.max(-1).min() > 2 / 64  # a hot expert in every layer
    assert len({int(np.argmax(row)) for row in pop}) > 1 or len(pop) == 1  # ranks permuted per layer


def test_fitted_generator_hits_moecap_qwen3_target(tmp_path):
    s = fit_zipf_exponent(128, 8, 16, 57.7)
    assert 0 < s < 3
    assert expected_activated_zipf(128, 8, s, 16) == pytest.approx(57.7, abs=0.2)
    arrays, meta = fitted_trace(128, 8, 4, fit_batch=16, fit_activated=57.7, sequences=32, prompt_len=0,
                                decode_len=32, seed=7)
    assert meta["synthetic_spec"]["zipf_s"] == pytest.approx(s)
    assert meta["synthetic_spec"]["fit"]["uniform_activated"] == pytest.approx(82.4, abs=0.05)
    t = write_synth(tmp_path, "f", (arrays, meta))
    c = stats.activated_experts_curve(t, [16], samples=300)
    assert abs(c["mean"][0] - 57.7) <= 1.0
    assert c["uniform"][0] == pytest.approx(82.4, abs=0.05)


def test_fit_targets_out_of_reach():
    for a in (7.0, 83.0, 129.0):
        with pytest.raises(ValueError):
            fit_zipf_exponent(128, 8, 16, a)
    with pytest.raises(ValueError, match="batch"):
        fit_zipf_exponent(128, 8, 1, 20)
    assert fit_zipf_exponent(128, 8, 16, float(expected_activated(128, 8, 16))) == pytest.approx(0, abs=0.02)


@pytest.mark.parametrize("kind", ["uniform", "zipf", "fitted"])
def test_synthetic_meta_and_layout(tmp_path, kind):
    arrays, meta = synthetic_trace(kind, num_experts=16, top_k=4, moe_layers=3, sequences=3, prompt_len=2,
                                   decode_len=3, seed=1, zipf_s=0.5, fit_batch=4, fit_activated=9.0)
    assert meta["synthetic"] is True and meta["synthetic_spec"]["generator"] == kind
    assert meta["synthetic_spec"]["seed"] == 1 and meta["model_id"] == "synthetic"
    assert arrays["sequence"].tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert arrays["position"].tolist() == [0, 1, 2, 3, 4] * 3
    assert arrays["phase"].tolist() == [0, 0, 1, 1, 1] * 3
    ids = arrays["expert_ids"]
    assert ids.shape == (15, 3, 4) and ids.dtype == np.uint8
    assert all(len(set(row)) == 4 for row in ids.reshape(-1, 4).tolist())  # distinct within a token
    np.testing.assert_allclose(arrays["weights"].astype(float).sum(-1), 1, atol=5e-3)
    t = write_synth(tmp_path, kind, (arrays, meta))
    t.verify()
    assert t.meta["synthetic"] is True and t.meta["synthetic_spec"]["generator"] == kind
    again, _ = synthetic_trace(kind, num_experts=16, top_k=4, moe_layers=3, sequences=3, prompt_len=2,
                               decode_len=3, seed=1, zipf_s=0.5, fit_batch=4, fit_activated=9.0)
    np.testing.assert_array_equal(again["expert_ids"], ids)  # seeded


def test_top_k_equal_to_experts():
    arrays, _ = uniform_trace(4, 4, 2, sequences=2, prompt_len=1, decode_len=1)
    assert sorted(arrays["expert_ids"][0, 0].tolist()) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- CLI


def invoke(cmd, *args):
    return CliRunner().invoke(cmd, [str(a) for a in args])


def one_line_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in result.output
    assert err.startswith("capsim: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def synth_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "trace"
    r = invoke(synth_cmd, "--out", path, "--experts", 32, "--top-k", 4, "--layers", 3, "--sequences", 20,
               "--prompt-len", 6, "--decode-len", 10, "--zipf-s", 0.8, "--seed", 3)
    assert r.exit_code == 0, r.output
    assert "synthetic zipf" in r.output
    return path


def test_cli_synth_writes_a_readable_trace(synth_path):
    t = open_trace(synth_path, verify=True)
    assert (t.num_experts, t.top_k, t.meta["moe_layers"], t.meta["sequences"], len(t)) == (32, 4, 3, 20, 320)
    assert t.meta["synthetic"] is True and t.meta["synthetic_spec"]["zipf_s"] == 0.8


def test_cli_synth_model_defaults_and_fit(tmp_path):
    r = invoke(synth_cmd, "--out", tmp_path / "q", "--model", "qwen3-30b", "--sequences", 2, "--prompt-len", 1,
               "--decode-len", 2, "--fit-batch", 16, "--fit-activated", 57.7)
    assert r.exit_code == 0, r.output
    t = open_trace(tmp_path / "q")
    assert (t.meta["model_id"], t.num_experts, t.top_k, t.meta["moe_layers"]) == ("Qwen/Qwen3-30B-A3B", 128, 8, 48)
    assert t.meta["synthetic_spec"]["generator"] == "fitted" and t.meta["synthetic"] is True
    r = invoke(synth_cmd, "--out", tmp_path / "m", "--model", "my-own-moe", "--experts", 8, "--top-k", 2,
               "--layers", 1, "--sequences", 1, "--decode-len", 1)
    assert r.exit_code == 0, r.output
    assert open_trace(tmp_path / "m").meta["model_id"] == "my-own-moe"


def test_cli_stats_json_and_human(synth_path):
    r = invoke(stats_cmd, synth_path, "--json", "--samples", 20)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert s["trace"]["synthetic"] is True and s["ep_sizes"] == [2, 4, 8]
    dec = s["activated_experts"]["decode"]
    assert dec["batch_sizes"] == [1, 2, 4, 8, 16] and len(dec["mean"]) == 5 and dec["mean"][0] == 4
    assert set(dec) >= {"batch_sizes", "mean", "p10", "p50", "p90", "std", "uniform", "tokens"}
    assert len(s["popularity"]["counts"]["decode"]) == 3 and len(s["affinity"]["mi_bits"]) == 2
    r = invoke(stats_cmd, synth_path, "--ep", 4, "--samples", 10)
    assert r.exit_code == 0, r.output
    assert "SYNTHETIC" in r.output and "ep=4" in r.output and "uniform" in r.output
    table = [line.split() for line in r.output.splitlines() if line[:1].isdigit()]
    assert [row[0] for row in table] == ["1", "2", "4", "8", "16"]


def test_cli_stats_plots(synth_path, tmp_path):
    out = tmp_path / "plots"
    r = invoke(stats_cmd, synth_path, "--plot", out, "--samples", 10)
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["activated_experts.png", "load_imbalance.png", "popularity.png"]  # no temp files left
    for p in out.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors(tmp_path, synth_path):
    one_line_error(invoke(stats_cmd, tmp_path / "nothing"), "not a capsim trace")
    one_line_error(invoke(stats_cmd, synth_path, "--ep", 3), "--ep 3")
    base = ["--out", tmp_path / "x", "--layers", 2]
    one_line_error(invoke(synth_cmd, *base, "--experts", 8, "--top-k", 9), "--top-k 9")
    one_line_error(invoke(synth_cmd, *base, "--top-k", 2), "--experts")
    one_line_error(invoke(synth_cmd, *base, "--experts", 128, "--top-k", 8, "--fit-batch", 16,
                          "--fit-activated", 200), "--fit-activated")
    one_line_error(invoke(synth_cmd, *base, "--experts", 128, "--top-k", 8, "--fit-batch", 16,
                          "--fit-activated", 90), "--fit-activated", "uniform")
    one_line_error(invoke(synth_cmd, *base, "--experts", 128, "--top-k", 8, "--fit-activated", 40), "--fit-batch")
    one_line_error(invoke(synth_cmd, *base, "--experts", 8, "--top-k", 2, "--kind", "uniform", "--zipf-s", 1),
                   "--zipf-s")
    one_line_error(invoke(synth_cmd, "--out", tmp_path / "x", "--model", "llama-3.1-8b"), "dense")
    one_line_error(invoke(synth_cmd, "--out", tmp_path / "x", "--model", "no-such-model"), "--model")
    assert not (tmp_path / "x").exists()


def test_summary_is_json_with_nan_as_null(tmp_path):
    seq, pos, phase = layout(3, prompt=0, decode=4)  # no prefill: its imbalance is NaN -> null
    t = make(tmp_path, np.zeros((len(seq), 2, 1), int), seq, pos, phase, num_experts=4)
    s = stats.summary(t, samples=5)
    text = json.dumps(s, allow_nan=False)
    assert json.loads(text)["load_imbalance"]["prefill"]["experts"]["mean"] is None
    assert s["activated_experts"]["prefill"]["batch_sizes"] == []
    assert s["activated_experts"]["decode"]["mean"] == [1.0, 1.0]
    assert math.isclose(s["affinity"]["mean_mi_bits"], 0.0, abs_tol=1e-12)
