"""The shipped trace from a MoE trained on this CPU: its routing departs from uniform.

traces/tiny-olmoe-stdlib was collected (capsim trace collect) from traces/models/tiny-olmoe-stdlib,
an OLMoE-shaped model (16 experts, top-2, 4 layers) trained for 10 minutes on the Python standard
library (scripts/train_tiny_moe.py), on prompts from held-out stdlib files.
"""

import json
from pathlib import Path

import numpy as np

from capsim.hardware.db import load
from capsim.predict import Query, predict
from capsim.traces.activated import activated_experts_curve
from capsim.traces.arrays import from_arrays
from capsim.traces.format import config_hash, open_trace
from capsim.traces.synthetic import uniform_trace

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "traces" / "tiny-olmoe-stdlib"
MODEL = ROOT / "traces" / "models" / "tiny-olmoe-stdlib"


def test_trace_is_real_and_matches_its_committed_model():
    t = open_trace(TRACE, verify=True)
    assert t.meta["synthetic"] is False and t.meta["random_init"] is False
    assert t.meta["config_hash"] == config_hash(json.loads((MODEL / "config.json").read_text()))
    assert (t.num_experts, t.top_k, t.meta["moe_layers"]) == (16, 2, 4)
    assert t.meta["sequences"] == 256 and t.meta["decode_tokens"] == 256 * 31  # 32 new tokens: 31 decode rows


def test_learned_routing_activates_far_fewer_experts_than_uniform():
    t = open_trace(TRACE)
    c = activated_experts_curve(t, [1, 16, 64], phase="decode", samples=200, seed=0)
    mean, p90, uniform = (np.asarray(c[k]) for k in ("mean", "p90", "uniform"))
    assert mean[0] == 2.0  # one token: exactly top-k
    # Batch 16: measured 8.7 experts per layer (p10-p90 7.5-10.0) where uniform routing predicts
    # 16 (1 - (1 - 2/16)^16) = 14.1; batch 64: 11.3 against 16.0.
    assert uniform[1] == np.float64(16 * (1 - (14 / 16) ** 16))
    assert p90[1] < 0.75 * uniform[1] and mean[2] < 0.8 * uniform[2]


def test_uniform_control_matches_the_formula():
    """The same measurement on a uniform synthetic trace of the same shape lands on the formula, so the
    departure above is the model's routing, not the sampling."""
    arrays, meta = uniform_trace(num_experts=16, top_k=2, moe_layers=4, sequences=256, prompt_len=8,
                                 decode_len=32, seed=0)
    c = activated_experts_curve(from_arrays(arrays, 16, 2), [16], phase="decode", samples=200, seed=0)
    assert meta["synthetic"] is True
    assert abs(float(c["mean"][0]) - float(c["uniform"][0])) < 0.05 * float(c["uniform"][0])


def test_replaying_the_learned_trace_reads_fewer_experts_than_uniform():
    db = load()
    q = dict(model=str(MODEL / "config.json"), hardware="rtx-4090", batch=16, input_len=96, output_len=32)
    uniform = predict(Query(**q), db)
    replay = predict(Query(**q, trace=str(TRACE), trace_samples=100), db)
    assert replay["activated_experts_per_layer"] < 0.75 * uniform["activated_experts_per_layer"]
    assert replay["tpot_s"] < uniform["tpot_s"]
    assert replay["spread"]["activated_experts_per_layer"]["p90"] < uniform["activated_experts_per_layer"]
