"""Physical-consistency properties of the simulator, checked over random scenarios with hypothesis.

Each property is a law any roofline-style inference model must obey (faster hardware is never
slower, utilisations are fractions of a peak, more work takes no less time, ...). Scenarios draw a
model from a few catalogue entries (MoE and the dense reference), a batch and lengths, hardware
peaks from realistic ranges, a parallel layout and either the ideal roofline profile or one with
efficiencies below 1 and overheads above 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsim import engines, precision
from capsim.hardware import db as hwdb
from capsim.model.catalogue import load_spec
from capsim.predict import Query, predict
from capsim.scenario import from_parts
from capsim.sim import request
from capsim.sim.experts import expected_activated
from capsim.sim.memory import memory_use, weights_per_device
from capsim.sim.metrics import utilisation
from capsim.sim.ops import step_costs
from capsim.sim.shape import shape_of

REL = 1e-12  # relative float slack for "never worse" comparisons
# MoE with full attention (GQA and MLA), the dense reference, and two with windowed layers
# (gpt-oss sliding windows, Llama-4 chunked attention) so the capsim.sim.span paths are exercised.
MODEL_NAMES = ("mixtral", "deepseek-v3", "qwen3-30b", "olmoe", "llama-3.1-8b", "gpt-oss-20b", "llama-4-scout")
MOE_NAMES = tuple(m for m in MODEL_NAMES if m != "llama-3.1-8b")


def _shape(name: str):
    spec, info = load_spec(name)
    return shape_of(spec, precision.get(info["native_precision"]))


SHAPES = {name: _shape(name) for name in MODEL_NAMES}
ROOFLINE = engines.load("roofline")
PROPS = settings(max_examples=200, deadline=None)


def le(a, b) -> bool:
    """a <= b up to REL relative slack."""
    a, b = float(a), float(b)
    return a <= b + REL * max(abs(a), abs(b))


# ---------------------------------------------------------------------------------------- strategies

def profiles():
    """The ideal roofline, or an engine with efficiencies < 1 and overheads > 0."""
    real = st.builds(
        lambda ce, me, le_, ko, so, cl, ov, rf: dataclasses.replace(
            ROOFLINE, id="test-real", compute_efficiency=ce, memory_efficiency=me, link_efficiency=le_,
            kernel_overhead_s=ko, step_overhead_s=so, collective_latency_s=cl, transfer_overlap=ov,
            memory_reserve_fraction=rf),
        st.floats(0.2, 0.99), st.floats(0.2, 0.99), st.floats(0.2, 0.99), st.floats(1e-7, 2e-5),
        st.floats(1e-5, 5e-3), st.floats(1e-7, 3e-5), st.floats(0.0, 0.95), st.floats(0.0, 0.2),
    )
    return st.one_of(st.just(ROOFLINE), real)


@st.composite
def layouts(draw):
    """(tp, ep, n): n and tp in {1, 2, 4, 8} with tp | n; ep is 1 or n."""
    n = draw(st.sampled_from((1, 2, 4, 8)))
    tp = draw(st.sampled_from([t for t in (1, 2, 4, 8) if n % t == 0]))
    ep = draw(st.sampled_from((1, n)))
    return tp, ep, n


@st.composite
def hardware(draw):
    """Per-device peaks and bandwidths of real accelerators and CPUs (orders of magnitude).

    Attention (16-bit) and vector (fp32) peaks are at most the matmul peak, as on every device
    in the database when the matmul dtype is the one capsim picks.
    """
    matmul = draw(st.floats(1e12, 5e15))
    return {
        "peak_flop_per_s": {"matmul": matmul, "attention": matmul * draw(st.floats(0.05, 1.0)),
                            "vector": matmul * draw(st.floats(0.01, 1.0))},
        "bandwidth_bytes_per_s": draw(st.floats(5e10, 1e13)),
        "ring_bandwidth_bytes_per_s": draw(st.floats(1e10, 2e12)),
        "alltoall_bandwidth_bytes_per_s": draw(st.floats(1e10, 2e12)),
    }


@st.composite
def scenarios(draw, models=MODEL_NAMES):
    tp, ep, n = draw(layouts())
    return {
        "model": draw(st.sampled_from(models)),
        "batch": draw(st.integers(1, 512)),
        "input_len": draw(st.integers(1, 8192)),
        "output_len": draw(st.integers(1, 4096)),
        "kv_bytes_per_element": draw(st.sampled_from((1.0, 2.0))),
        "hw": draw(hardware()),
        "profile": draw(profiles()),
        "tp": tp, "ep": ep, "n": n,
    }


def simulate(sc, **override):
    sc = {**sc, **override}
    scenario = from_parts(SHAPES[sc["model"]], kv_bytes=sc["kv_bytes_per_element"], profile=sc["profile"],
                          tp=sc["tp"], ep=sc["ep"], n=sc["n"], **sc["hw"])
    return request.simulate(scenario, sc["batch"], sc["input_len"], sc["output_len"])


def scaled(hw, key, factor):
    out = {**hw, "peak_flop_per_s": dict(hw["peak_flop_per_s"])}
    if key == "peak_flop_per_s":
        out[key] = {k: v * factor for k, v in hw[key].items()}
    else:
        out[key] = hw[key] * factor
    return out


# ---------------------------------------------------------------------------------------- 1. hardware

@PROPS
@given(sc=scenarios(), factor=st.floats(1.0, 100.0),
       key=st.sampled_from(("bandwidth_bytes_per_s", "peak_flop_per_s", "ring_bandwidth_bytes_per_s",
                            "alltoall_bandwidth_bytes_per_s")))
def test_faster_hardware_is_never_slower(sc, factor, key):
    """More memory bandwidth, FLOP/s or link bandwidth never increases TTFT or TPOT."""
    base = simulate(sc)
    fast = simulate(sc, hw=scaled(sc["hw"], key, factor))
    assert le(fast.ttft_s, base.ttft_s)
    assert le(fast.tpot_s, base.tpot_s)
    assert le(fast.request_s, base.request_s)


# ---------------------------------------------------------------------------------------- 2. utilisation

@PROPS
@given(sc=scenarios())
def test_sparse_utilisation_is_a_fraction_of_peak(sc):
    """S-MBU and S-MFU lie in [0, 1] in both phases; the dense MBU/MFU are never below them."""
    res = simulate(sc)
    hw = sc["hw"]
    for step, timing in ((res.prefill, res.prefill_timing), (res.decode, res.decode_timing)):
        u = utilisation(step, timing, bandwidth_bytes_per_s=hw["bandwidth_bytes_per_s"],
                        peak_flop_per_s=hw["peak_flop_per_s"])
        for key in ("s_mbu", "s_mfu"):
            assert 0.0 <= float(u[key]) and le(u[key], 1.0), (key, float(u[key]))
        assert le(u["s_mbu"], u["mbu"])
        assert le(u["s_mfu"], u["mfu"])




def test_s_mfu_at_most_one_when_the_matmul_dtype_is_slower_than_attention():
    """S-MFU stays <= 1 when the forced matmul dtype (fp32) is slower than the attention dtype (bf16)."""
    rep = predict(Query(model="olmoe", hardware="h100", compute_dtype="fp32", input_len=8192), hwdb.load())
    assert 0 < rep["phases"]["prefill"]["s_mfu"] <= 1.0
    assert 0 < rep["phases"]["decode"]["s_mfu"] <= 1.0


# ---------------------------------------------------------------------------------------- 3. batch

@PROPS
@given(sc=scenarios(), b2=st.integers(1, 512))
def test_decode_step_time_non_decreasing_in_batch(sc, b2):
    """A bigger decode batch never makes the decode step (TPOT) faster."""
    b1, b2 = sorted((sc["batch"], b2))
    assert le(simulate(sc, batch=b1).tpot_s, simulate(sc, batch=b2).tpot_s)


# ---------------------------------------------------------------------------------------- 4. experts

@settings(max_examples=200, deadline=None)
@given(e=st.integers(1, 512), data=st.data(), t1=st.floats(1.0, 1e6), t2=st.floats(1.0, 1e6))
def test_expected_activated_between_top_k_and_all_experts(e, data, t1, t2):
    """Distinct experts touched by T >= 1 tokens lie in [k, E], equal k at T = 1 and grow with T."""
    k = data.draw(st.integers(1, e))
    lo, hi = sorted((t1, t2))
    a_lo, a_hi = float(expected_activated(e, k, lo)), float(expected_activated(e, k, hi))
    for a in (a_lo, a_hi):
        assert k * (1 - 1e-9) <= a <= e * (1 + 1e-12)
    assert float(expected_activated(e, k, 1)) == pytest.approx(k, rel=1e-9)
    assert float(expected_activated(e, k, 0)) == 0.0  # no token, no expert
    assert le(a_lo, a_hi)
    assert np.all(np.diff(expected_activated(e, k, np.arange(1, 200))) >= -REL * e)


@PROPS
@given(sc=scenarios(models=MOE_NAMES), tokens=st.integers(1, 100_000), more=st.integers(0, 100_000),
       decode=st.booleans())
def test_step_activated_experts_between_top_k_and_all_experts(sc, tokens, more, decode):
    """A step activates between k and E experts per layer, more with more tokens (any parallel layout)."""
    s = SHAPES[sc["model"]]
    tp, ep, n = sc["tp"], sc["ep"], sc["n"]

    def activated(t):
        st_ = step_costs(s, tokens=t, seqs=t, pairs=t, kv_read_tokens=t, decode=decode,
                         kv_bytes_per_element=2.0, tp=tp, ep=ep, n=n)
        return float(st_.activated_experts)

    a1, a2 = activated(tokens), activated(tokens + more)
    for a in (a1, a2):
        assert s.top_k * (1 - 1e-9) <= a <= s.num_experts * (1 + 1e-12)
    assert le(a1, a2)
    assert activated(1) == pytest.approx(s.top_k, rel=1e-9)


def test_batch_below_dp_still_activates_top_k_and_is_not_faster_than_one_device():
    """Idle data-parallel replicas cannot make one sequence decode faster or touch fewer than k experts."""
    db = hwdb.load()
    spread = predict(Query(model="olmoe", hardware="dgx-h100", tp=1, batch=1), db)
    alone = predict(Query(model="olmoe", hardware="h100", batch=1), db)
    assert spread["activated_experts_per_layer"] >= spread["top_k"] * (1 - 1e-9)
    assert spread["tpot_s"] >= alone["tpot_s"] * (1 - 1e-9)


# ---------------------------------------------------------------------------------------- 5. lengths

@PROPS
@given(sc=scenarios(), i2=st.integers(1, 8192), o2=st.integers(1, 4096))
def test_longer_context_is_never_faster(sc, i2, o2):
    """Longer prompts never shorten TTFT or TPOT; longer outputs (a bigger mean context) never shorten TPOT."""
    i1, i2 = sorted((sc["input_len"], i2))
    o1, o2 = sorted((sc["output_len"], o2))
    short_in, long_in = simulate(sc, input_len=i1), simulate(sc, input_len=i2)
    assert le(short_in.ttft_s, long_in.ttft_s)
    assert le(short_in.tpot_s, long_in.tpot_s)
    assert le(simulate(sc, output_len=o1).tpot_s, simulate(sc, output_len=o2).tpot_s)


# ---------------------------------------------------------------------------------------- 6. memory

@PROPS
@given(sc=scenarios(), b2=st.integers(1, 512), capacity=st.floats(1e9, 2e12))
def test_fitting_is_monotone_in_batch(sc, b2, capacity):
    """Memory use grows with batch, so if a batch fits every smaller batch fits."""
    b1, b2 = sorted((sc["batch"], b2))

    def use(b):
        return memory_use(SHAPES[sc["model"]], batch=b, input_len=sc["input_len"], output_len=sc["output_len"],
                          kv_bytes_per_element=sc["kv_bytes_per_element"], capacity_bytes=capacity,
                          reserve_fraction=sc["profile"].memory_reserve_fraction, tp=sc["tp"], ep=sc["ep"],
                          n=sc["n"])

    small, big = use(b1), use(b2)
    assert le(small.total, big.total)
    if bool(big.fits):
        assert bool(small.fits)


@settings(max_examples=100, deadline=None)
@given(model=st.sampled_from(MODEL_NAMES), ep=st.sampled_from((1, 2, 4, 8)))
def test_weights_per_device_non_increasing_in_tp(model, ep):
    """Splitting tensors over more devices never puts more weight bytes on one device."""
    s = SHAPES[model]
    w = [float(weights_per_device(s, tp=tp, ep=1)) for tp in (1, 2, 4, 8)]
    assert all(le(b, a) for a, b in zip(w, w[1:], strict=False))
    w_ep = [float(weights_per_device(s, tp=tp, ep=ep)) for tp in (1, 2, 4, 8)]
    assert all(le(b, a) for a, b in zip(w_ep, w_ep[1:], strict=False))
