"""capsim.api, the public facade: each function once on small inputs, against exact values where they exist, and
against the command or internal function it wraps (the API must not drift from ``capsim predict / validate``)."""

import doctest
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from capsim import api
from capsim.errors import CapsimError

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "traces" / "tiny-olmoe-stdlib"
TINY_MODEL = ROOT / "traces" / "models" / "tiny-olmoe-stdlib" / "config.json"


def test_every_public_name_exists_and_is_documented():
    assert api.__all__ == sorted(set(api.__all__), key=api.__all__.index)  # no duplicates
    for name in api.__all__:
        obj = getattr(api, name)
        assert callable(obj) and obj.__doc__ and len(obj.__doc__.split()) >= 8, name


def test_docstring_examples_hold():
    res = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert res.attempted >= 8 and res.failed == 0


def test_the_api_never_imports_torch():
    # a fresh interpreter: importing the API and using its prediction, trace and validation paths leaves torch
    # and transformers unimported (the collector and `capsim measure` are the only torch users)
    code = (
        "import sys\nfrom capsim import api\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'at import'\n"
        f"api.predict({str(TINY_MODEL)!r}, 'rtx-4090', batch=4, trace={str(TRACE)!r}, trace_samples=5)\n"
        f"api.activated_experts_curve({str(TRACE)!r}, batch_sizes=(2,), samples=5)\n"
        "api.validate_cpu()\n"
        "bad = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr


# ----------------------------------------------------------------------------- data, prediction, CAP

def test_hardware_db_merges_a_user_folder(tmp_path):
    user = tmp_path / "my_hw"
    user.mkdir()
    text = (ROOT / "hardware_db" / "accelerators" / "rtx-4090.yaml").read_text()
    text = text.replace("id: rtx-4090", "id: my-4090").replace('aliases: ["4090", rtx4090, geforce-rtx-4090]',
                                                               "aliases: []")
    (user / "my-4090.yaml").write_text(text)
    db = api.hardware_db(user)
    assert db.get("my-4090").memory.bandwidth_bytes_per_s.value == 1.008e12  # "1008 GB/sec", decimal
    assert "rtx-4090" in db.items  # the built-in set is still there
    with pytest.raises(CapsimError):
        api.hardware_db().get("my-4090")
    with pytest.raises(CapsimError, match="no such folder"):
        api.hardware_db(tmp_path / "missing")
    # the same device under another id predicts the same (a folder path is accepted as hardware_db)
    a = api.predict("qwen3-30b", "my-4090", precision="int4", hardware_db=user)
    b = api.predict("qwen3-30b", "rtx-4090", precision="int4")
    assert a["tpot_s"] == b["tpot_s"] and a["ttft_s"] == b["ttft_s"]


def _numbers(d, path=""):
    """Every numeric leaf of a nested dict, by path."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(d, (list, tuple)):
        for i, v in enumerate(d):
            yield from _numbers(v, f"{path}.{i}")
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        yield path, float(d)


def test_predict_equals_the_internal_predict():
    from capsim.predict import Query, predict

    got = api.predict("mixtral", "dgx-h100", devices=2, batch=4, input_len=256, output_len=64, routing="uniform")
    want = predict(Query(model="mixtral", hardware="dgx-h100", devices=2, batch=4, input_len=256, output_len=64,
                         routing="uniform"), api.hardware_db())
    g, w = dict(_numbers(got)), dict(_numbers(want))
    assert g.keys() == w.keys() and len(g) > 50
    for k in w:
        assert g[k] == pytest.approx(w[k], rel=1e-12, abs=1e-300), k
    # uniform routing: a decode step of 4 tokens activates 8 (1 - (1 - 2/8)^4) = 5.46875 of Mixtral's 8 experts
    assert got["activated_experts_per_layer"] == pytest.approx(8 * (1 - 0.75 ** 4), rel=1e-12)
    assert got["decode_tokens_per_s"] == pytest.approx(4 / got["tpot_s"], rel=1e-12)


def test_predict_rejects_unknown_options():
    with pytest.raises(TypeError, match="batchsize"):
        api.predict("mixtral", "h100", batchsize=4)


def test_sweep_rows_equal_predict():
    db = api.hardware_db()
    # uniform routing: the same closed form, equal to 1e-9; real routing (the default): the sweep prices the mean
    # of 32 compositions, predict each of 200 (equal to the sampling error, 2%)
    for routing, rel in (("uniform", 1e-9), ("real", 0.02)):
        df = api.sweep({"models": ["mixtral"], "hardware": ["dgx-h100"], "devices": [2, 4], "batch": "1..8:x2",
                        "traces": [routing]})
        assert isinstance(df, pd.DataFrame) and len(df) == 2 * 4  # devices x batch
        assert list(df["batch"]) == [1, 2, 4, 8] * 2
        for row in df.iloc[[0, 5]].itertuples():
            rep = api.predict("mixtral", "dgx-h100", devices=int(row.devices), batch=int(row.batch),
                              check_memory=False, hardware_db=db, routing=routing)
            assert row.tpot_s == pytest.approx(rep["tpot_s"], rel=rel)
            assert row.ttft_s == pytest.approx(rep["ttft_s"], rel=rel)
    with pytest.raises(CapsimError, match="unknown key"):
        api.sweep({"models": ["mixtral"], "hardware": ["h100"], "batches": [1]})


def test_cost_owned_and_cloud_exact():
    # RTX 4090: $1,599 and 450 W (hardware_db). Over 1000 h, PUE 1.5, $0.1/kWh, serving all the time:
    # $/h = 1599 / 1000 + 0.450 kW x 1.5 x 0.1 = 1.599 + 0.0675 = 1.6665; at 100 tokens/s
    # $/1M tokens = 1.6665 / (100 x 3600) x 1e6 = 4.6291666...; J/token at the facility = 450 x 1.5 / 100 = 6.75
    rep = api.cost("rtx-4090", 100.0, lifetime_s=3.6e6, utilisation=1.0, pue=1.5, usd_per_kwh=0.1)
    assert rep["capex"]["usd"] == 1599.0
    assert rep["usd_per_h"] == pytest.approx(1.6665, rel=1e-12)
    assert rep["usd_per_million_output_tokens"] == pytest.approx(1.6665 / 0.36, rel=1e-12)
    assert rep["joules_per_output_token"] == pytest.approx(6.75, rel=1e-12)
    assert rep["assumptions"]["pue"]["source"] == "user override"
    # cloud: the listed $/h over the utilisation
    full = api.cost("dgx-h100", 1000.0, cloud=True)
    half = api.cost("dgx-h100", 1000.0, cloud=True, utilisation=0.5)
    assert half["usd_per_h"] == pytest.approx(2 * full["usd_per_h"], rel=1e-12)
    assert full["usd_per_million_output_tokens"] == pytest.approx(full["usd_per_h"] / 3.6, rel=1e-12)
    with pytest.raises(CapsimError):
        api.cost("rtx-4090", 100.0, pue=0.5)  # PUE < 1 is refused


def test_accuracy_is_the_cited_score():
    r = api.accuracy("mixtral", "MMLU")
    assert r["value"] == 0.706 and r["score"]["as_published"] == "70.6%"  # Mixtral paper, Table 2
    assert r["score"]["source"] == "mixtral-paper" and r["exact_precision"]
    none = api.accuracy("mixtral", "no-such-benchmark")
    assert none["value"] is None and "no published score" in none["reason"]


# ----------------------------------------------------------------------------- traces

def _decode_trace(sequences=8, steps=4):
    """Sequence s always routes to experts (s, s + 8) of 16, top-2, in 2 layers: B sequences touch 2B experts."""
    seq = np.repeat(np.arange(sequences), steps)
    ids = np.stack([seq, seq + 8], -1)[:, None, :].repeat(2, axis=1)
    return {"expert_ids": ids.astype(np.uint8), "sequence": seq.astype(np.uint32),
            "position": np.tile(np.arange(steps), sequences).astype(np.uint32),
            "phase": np.ones(len(seq), np.uint8)}


def test_activated_experts_curve_exact_on_a_constructed_trace():
    c = api.activated_experts_curve(_decode_trace(), batch_sizes=(1, 2, 4, 8, 16), samples=20)
    assert list(c["batch"]) == [1, 2, 4, 8]  # 16 > the 8 sequences available: dropped
    for col in ("mean", "p10", "p90", "layer_0", "layer_1"):
        np.testing.assert_array_equal(c[col], 2.0 * c["batch"])  # disjoint experts per sequence
    np.testing.assert_allclose(c["uniform"], 16 * (1 - (1 - 2 / 16) ** c["batch"]), rtol=1e-12)


def test_activated_experts_curve_on_a_synthetic_uniform_trace_follows_the_formula():
    t = api.synthetic_trace(num_experts=16, top_k=2, moe_layers=4, sequences=128, prompt_len=4, decode_len=64,
                            seed=3)
    assert t.meta["synthetic"] is True
    samples = 400
    c = api.activated_experts_curve(t, samples=samples, seed=3)
    formula = api.expected_activated_experts(16, 2, c["batch"].to_numpy())
    np.testing.assert_allclose(formula, 16 * (1 - (7 / 8) ** c["batch"]), rtol=1e-12)
    # tolerance: 4 standard errors of the mean over samples x layers (measured: within 2.2), or 0.01 experts
    # where every batch activates all 16 and the spread is zero
    tol = np.maximum(4 * c["std"] / math.sqrt(samples * 4), 0.01)
    assert np.all(np.abs(c["mean"] - formula) <= tol), (c["mean"] - formula) / tol
    # the shipped trace of a trained router does not: at B = 16 it activates far fewer
    real = api.activated_experts_curve(TRACE, batch_sizes=(16,), samples=50).iloc[0]
    assert real["mean"] < 0.75 * real["uniform"]


def test_popularity_imbalance_affinity():
    counts = api.expert_popularity(TRACE)
    meta = api.open_trace(TRACE).meta
    assert counts.shape == (4, 16) and counts.dtype == np.int64
    assert np.all(counts.sum(1) == meta["tokens"] * meta["top_k"])  # every token counts once per top-k slot
    np.testing.assert_allclose(api.expert_popularity(TRACE, share=True).sum(1), 1.0, rtol=1e-12)
    dec = api.expert_popularity(TRACE, phase="decode")
    assert dec.sum() == meta["decode_tokens"] * 2 * 4
    # hand-made loads: layer 0 all on expert 0, layer 1 balanced
    imb = api.load_imbalance(np.array([[4, 0, 0, 0], [1, 1, 1, 1]]), ep_sizes=(2, 4))
    assert imb["experts"].tolist() == [4.0, 1.0]  # max / mean tokens per expert
    assert imb["ep2"].tolist() == [2.0, 1.0]  # ranks {0,1} and {2,3}: loads (4, 0) -> 4 / 2
    assert imb["ep4"].tolist() == imb["experts"].tolist()
    assert api.load_imbalance(TRACE, ep_sizes=(16,))["ep16"].tolist() == api.load_imbalance(TRACE)["experts"].tolist()
    # affinity: layer 1's expert = layer 0's, top-1, uniform over 4 experts: I = log2 4 = 2 bits exactly
    ids = np.repeat(np.arange(4), 25)[:, None, None].repeat(2, axis=1)
    aff = api.cross_layer_affinity({"expert_ids": ids})
    assert aff["mi_bits"][0] == pytest.approx(2.0, rel=1e-12) and aff["nmi"][0] == pytest.approx(1.0)
    assert aff["joint"].shape == (1, 4, 4) and aff["joint"][0].trace() == 100


def test_synthetic_trace_written_and_summarised(tmp_path):
    t = api.synthetic_trace("zipf", num_experts=8, top_k=2, moe_layers=2, sequences=8, prompt_len=4,
                            decode_len=8, zipf_s=1.2, out=tmp_path / "z")
    again = api.open_trace(tmp_path / "z", verify=True)
    assert again.meta["synthetic"] is True and again.meta["synthetic_spec"]["zipf_s"] == 1.2
    assert len(t) == 8 * (4 + 8)
    s = api.trace_summary(tmp_path / "z", batch_sizes=(1, 4), samples=10)
    json.dumps(s)  # plain Python types
    assert s["trace"]["tokens"] == 96 and s["trace"]["synthetic"] is True
    assert s["activated_experts"]["decode"]["mean"][0] == 2.0  # one token: exactly top-k experts
    shutil.rmtree(tmp_path / "z")


# ----------------------------------------------------------------------------- validation

def _cli_json(*args):
    from capsim.cli.main import cli

    r = CliRunner().invoke(cli, ["validate", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_validate_cpu_equals_capsim_validate():
    df = api.validate_cpu()
    cli = _cli_json()
    assert list(df["case"]) == [c["case"] for c in cli["cases"]]
    np.testing.assert_allclose(df["predicted_s"], [c["predicted_s"] for c in cli["cases"]], rtol=1e-12)
    np.testing.assert_allclose(df["error_pct"], 100 * (df["predicted_s"] / df["measured_s"] - 1), rtol=1e-9)
    assert list(df["subset"]) == [c["subset"] for c in cli["cases"]]
    assert (df["shape"] == df["case"].str.split("/").str[0]).all()
    assert {"deepseek-like"} == set(df.loc[df["shape"] == "deepseek-like", "shape"]) and \
        (df.loc[df["shape"] == "deepseek-like", "subset"] == "held-out").all()  # a whole shape held out
    agg = api.error_summary(df, by=("subset", "phase"))
    for key, v in cli["aggregates"].items():
        row = agg.loc[tuple(key.split("/"))]
        assert row["cases"] == v["cases"]
        assert row["median_abs_pct"] == pytest.approx(v["median_abs_pct"], rel=1e-12)
        assert row["max_abs_pct"] == pytest.approx(v["max_abs_pct"], rel=1e-12)
    assert agg.loc[("all", "all"), "cases"] == len(df)


def test_validate_published_equals_capsim_validate_published():
    df = api.validate_published()
    cli = _cli_json("--published")
    assert list(df["row"]) == [r["row"] for r in cli["rows"]]
    np.testing.assert_allclose(df["error_pct"], [r["error_pct"] for r in cli["rows"]], rtol=1e-12)
    assert len(df.attrs["unsupported"]) == len(cli["unsupported"]) > 0
    # SI columns: ms rows scaled by 1e-3, and the error is the same in SI
    ms = df[df["unit"] == "ms"]
    np.testing.assert_allclose(ms["published_si"], ms["published"] * 1e-3, rtol=1e-12)
    np.testing.assert_allclose(df["error_pct"], 100 * (df["predicted_si"] / df["published_si"] - 1), rtol=1e-9)
    agg = api.error_summary(df)
    tiers = df[df["kind"].isin(["offload", "multi-device"])]
    agg_tiers = api.error_summary(tiers)
    for key, v in cli["aggregates"].items():
        src, k = {"offload + multi-device": (agg_tiers, "all"),
                  "offload + multi-device, held-out": (agg_tiers, "held-out")}.get(key, (agg, key))
        assert src.loc[k, "cases"] == v["rows"]
        assert src.loc[k, "median_abs_pct"] == pytest.approx(v["median_abs_pct"], rel=1e-12)


def test_error_summary_exact():
    f = pd.DataFrame({"subset": ["a", "a", "a", "b"], "error_pct": [-10.0, 2.0, 30.0, -4.0]})
    s = api.error_summary(f)
    assert s.loc["a"].tolist() == [3, 10.0, 30.0]  # |errors| 10, 2, 30: median 10, max 30
    assert s.loc["b"].tolist() == [1, 4.0, 4.0]
    assert s.loc["all"].tolist() == [4, 7.0, 30.0]  # 2, 4, 10, 30: median 7
    assert "all" not in api.error_summary(f, total=False).index
