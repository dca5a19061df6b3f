"""Properties of every report over random questions (hypothesis): what `capsim predict --json`, `capsim cap cost
--json` and `capsim sweep --json` print is finite JSON (no NaN, no Infinity), and the throughput identities hold
exactly as defined in capsim.sim.metrics: decode tokens/s = batch / TPOT, per user = 1 / TPOT, prefill
tokens/s = batch x input / TTFT, output tokens/s over a request = batch x output / request latency. The physical
monotonicity laws (bandwidth, FLOP/s, batch, context) and utilisations in [0, 1] are in test_properties.py."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from capsim import engines
from capsim.cli.main import cli
from capsim.errors import CapsimError
from capsim.hardware import db as hwdb
from capsim.predict import Query, predict

DB = hwdb.load()
MODELS = ("mixtral", "deepseek-v3", "qwen3-30b", "olmoe", "gpt-oss-120b", "llama-4-scout", "llama-3.1-8b")
HARDWARE = ("dgx-h100", "dgx-h200", "dgx-b200", "server-8x-mi300x", "h100", "rtx-4090", "l40s", "rtx-5090",
            "mac-studio-m2-max", "cpu-server-epyc-9654", "ktransformers-testbed")
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REL = 1e-12


def _finite(obj, where="report") -> None:
    """Every number in a JSON-able object is finite (json.dumps(allow_nan=False) alone would say only that)."""
    if isinstance(obj, float):
        assert math.isfinite(obj), f"{where} = {obj}"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _finite(v, f"{where}[{i}]")


questions = st.builds(
    lambda m, h, b, i, o, e, n: Query(model=m, hardware=h, batch=b, input_len=i, output_len=o, engine=e, nodes=n,
                                      check_memory=False),
    st.sampled_from(MODELS), st.sampled_from(HARDWARE), st.integers(1, 4096), st.integers(1, 32768),
    st.integers(1, 4096), st.sampled_from(engines.available()), st.sampled_from((1, 1, 1, 2, 4)))


def _report(q: Query) -> dict:
    try:
        return predict(q, DB)
    except CapsimError:  # a layout the hardware cannot take (nodes of a bare device, ...): a refusal, not a report
        assume(False)


@SETTINGS
@given(questions)
def test_every_report_is_finite_json_and_the_throughput_identities_hold(q):
    rep = _report(q)
    json.dumps(rep, allow_nan=False)
    _finite(rep)
    b, i, o = q.batch, q.input_len, q.output_len
    assert rep["decode_tokens_per_s"] == pytest.approx(b / rep["tpot_s"], rel=REL)
    assert rep["decode_tokens_per_s_per_user"] == pytest.approx(1 / rep["tpot_s"], rel=REL)
    assert rep["prefill_tokens_per_s"] == pytest.approx(b * i / rep["ttft_s"], rel=REL)
    assert rep["output_tokens_per_s_total"] == pytest.approx(b * o / rep["request_latency_s"], rel=REL)
    for phase in ("prefill", "decode"):
        p = rep["phases"][phase]
        assert 0.0 <= p["s_mbu"] <= 1.0 + REL and 0.0 <= p["s_mfu"] <= 1.0 + REL, (phase, p["s_mbu"], p["s_mfu"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MODELS), st.sampled_from(("dgx-h100", "h100", "rtx-4090", "server-8x-mi300x")),
       st.integers(1, 256), st.integers(1, 4096))
def test_cli_json_is_finite(model, hardware, batch, input_len):
    """The --json of predict (with --no-memory-check: every question answers) and of cap cost for its rate."""
    r = CliRunner().invoke(cli, ["predict", "-m", model, "-H", hardware, "--batch", str(batch), "--input-len",
                                 str(input_len), "--no-memory-check", "--json"])
    assume(r.exit_code == 0)
    rep = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"predict --json printed {c}"))
    _finite(rep)
    c = CliRunner().invoke(cli, ["cap", "cost", "-H", hardware, "--tokens-per-s",
                                 repr(rep["output_tokens_per_s_total"]), "--json"])
    assert c.exit_code == 0, c.output
    _finite(json.loads(c.stdout, parse_constant=lambda x: pytest.fail(f"cap cost --json printed {x}")))


def test_sweep_json_is_finite():
    r = CliRunner().invoke(cli, ["sweep", "-m", "mixtral,olmoe", "-H", "dgx-h100,rtx-4090", "--batch", "1..4096:x8",
                                 "--input-len", "1,32768", "--json"])
    assert r.exit_code == 0, r.output
    _finite(json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"sweep --json printed {c}")))
