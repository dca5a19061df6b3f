"""capsim provision: the search against a brute-force search over the same candidates, the constraint
arithmetic, pricing, and the answers to bad or impossible input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from capsim.cap import assumptions as cap_assumptions
from capsim.cap.hourly import Pricer
from capsim.cap.report import cost_report
from capsim.cli.main import cli
from capsim.errors import CapsimError
from capsim.hardware import db as hwdb
from capsim.predict import Query, predict
from capsim.provision.candidates import enumerate_layouts
from capsim.provision.evaluate import Workload, batch_grid, curve
from capsim.provision.requirements import CONSTRAINTS, Requirements, ratios, worst
from capsim.provision.search import pareto, search


@pytest.fixture(scope="module")
def db():
    return hwdb.load()


@pytest.fixture(scope="module")
def pricer(db):
    return Pricer(db, cap_assumptions.load(db))


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# ---------------------------------------------------------------- the brute force check

HW = ["dgx-h200", "dgx-h100", "dgx-a100"]
REQ = Requirements(users=256, ttft_s=2.0, tpot_s=0.05)
WORK = Workload("deepseek-v3", input_len=512, output_len=128, routing="uniform")  # exact: brute force prices each point
MAX_BATCH = 512


def _brute_force(db, layouts):
    """Every (layout, batch) predicted on its own with capsim predict (no vectorised path), the limits checked
    one by one, the price from capsim cap cost: the cheapest qualifying point, and the set of qualifying keys."""
    a = cap_assumptions.load(db)
    best, keys = None, set()
    for lay in layouts:
        def one(b, lay=lay):
            q = Query(model=WORK.model, hardware=lay.hardware, devices=lay.devices, nodes=lay.nodes,
                      precision=lay.precision, batch=int(b), input_len=WORK.input_len, output_len=WORK.output_len,
                      tp=lay.tp, ep=lay.ep, offload=lay.offload, check_memory=False, routing=WORK.routing)
            return predict(q, db)
        try:
            first = one(1)
        except CapsimError:
            continue
        d1 = first["memory_bytes"]["device"]
        for b in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]:
            try:
                rep = one(b)
            except CapsimError:
                continue
            d = rep["memory_bytes"]["device"]
            need = d["kv_cache"] + d1["total"] - d1["kv_cache"]  # arrival: one prompt's prefill activations
            ok = (b >= REQ.users and first["ttft_s"] + rep["tpot_s"] <= REQ.ttft_s and rep["tpot_s"] <= REQ.tpot_s
                  and (d["capacity"] is None or need <= d["capacity"]))
            if not ok:
                continue
            try:
                usd = cost_report(db, lay.hardware, a, 1.0, devices=lay.devices, cloud=True)["usd_per_h"]
            except CapsimError:
                usd = cost_report(db, lay.hardware, a, 1.0, devices=lay.devices)["usd_per_h"]
            keys.add((lay.hardware, lay.devices, lay.nodes))
            if usd is None:
                continue
            usd *= lay.nodes
            if best is None or usd < best[0] - 1e-9:
                best = (usd, lay, b)
    return best, keys


def test_top_answer_matches_brute_force(db, pricer):
    layouts = enumerate_layouts(db, HW, [None], 2, ["none", "cpu"])
    res = search(layouts, WORK, REQ, db, pricer, max_batch=MAX_BATCH)
    best, keys = _brute_force(db, layouts)
    assert best is not None and res.ranked
    top = res.ranked[0]
    assert top.usd_per_h == pytest.approx(best[0], rel=1e-12)
    # the same system, device count and nodes (the TP/EP split and placement may differ only at equal price)
    assert (top.layout.hardware, top.layout.devices, top.layout.nodes) == (best[1].hardware, best[1].devices,
                                                                          best[1].nodes)
    found = {(c.layout.hardware, c.layout.devices, c.layout.nodes) for c in res.ranked + res.unpriced}
    assert found == keys


# ---------------------------------------------------------------- constraint arithmetic


def test_ratios_are_uses_of_each_limit():
    req = Requirements(tokens_per_s=1000.0, users=64, ttft_s=2.0, tpot_s=0.05, min_accuracy=0.8, benchmark="mmlu")
    batch, tpot, ttft = np.array([32.0, 64.0]), np.array([0.04, 0.08]), np.array([1.0, 3.0])
    r = ratios(req, batch, ttft, tpot, np.array([0.5, 0.9]), accuracy=0.885)
    # tokens/s = batch / TPOT = 800 and 800 -> use 1000/800 = 1.25; users 64/32 = 2 and 1
    np.testing.assert_allclose(r["tokens_per_s"], [1.25, 1.25])
    np.testing.assert_allclose(r["users"], [2.0, 1.0])
    np.testing.assert_allclose(r["ttft"], [0.5, 1.5])
    np.testing.assert_allclose(r["tpot"], [0.8, 1.6])
    np.testing.assert_allclose(r["accuracy"], [0.8 / 0.885] * 2)
    top, which = worst(r)
    np.testing.assert_allclose(top, [2.0, 1.6])
    assert [CONSTRAINTS[i] for i in which] == ["users", "tpot"]


def test_unknown_accuracy_fails_an_accuracy_limit_and_limits_not_set_are_ignored():
    req = Requirements(users=1, min_accuracy=0.5, benchmark="mmlu")
    r = ratios(req, np.array([4.0]), np.array([1.0]), np.array([0.01]), np.array([0.1]), accuracy=None)
    assert math.isinf(r["accuracy"][0]) and np.isnan(r["ttft"][0]) and np.isnan(r["tokens_per_s"][0])
    assert CONSTRAINTS[int(worst(r)[1][0])] == "accuracy"


def test_batch_grid_is_powers_of_two_plus_the_users():
    assert batch_grid(100, 48).tolist() == [1, 2, 4, 8, 16, 32, 48, 64]
    assert batch_grid(64, 64).tolist() == [1, 2, 4, 8, 16, 32, 64]
    assert batch_grid(8, 1000).tolist() == [1, 2, 4, 8]


@pytest.mark.parametrize("routing, rel", [
    ("uniform", 1e-9),  # the same closed form: exactly equal
    # real routing: provision prices the mean of MEAN_SAMPLES compositions, predict each of 200 and takes the
    # mean time: they differ by the sampling error of the mean and the step's curvature (measured < 0.5%)
    ("real", 0.02),
])
def test_vectorised_curve_equals_capsim_predict(db, routing, rel):
    lay = next(x for x in enumerate_layouts(db, ["dgx-h100"], [None], 1, ["none"])
               if (x.devices, x.tp, x.ep) == (8, 8, 8))
    c = curve(lay, Workload("mixtral", 512, 128, routing=routing), batch_grid(64, None), db)
    for i, b in enumerate(c.batch):
        rep = predict(Query(model="mixtral", hardware="dgx-h100", devices=8, tp=8, ep=8, batch=int(b),
                            input_len=512, output_len=128, check_memory=False, routing=routing), db)
        assert c.tpot_s[i] == pytest.approx(rep["tpot_s"], rel=rel)
        assert c.ttft_batch_s[i] == pytest.approx(rep["ttft_s"], rel=rel)
        assert c.memory_bytes[i] == pytest.approx(rep["memory_bytes"]["device"]["total"], rel=1e-9)


def test_pricing_pro_rata_nodes_and_override(db, pricer):
    # dgx-h100 is priced like with like: GPUs x the H100 SXM per-GPU price (RunPod, host share included, $3.29/h):
    # 4 GPUs = 4 x 3.29 = $13.16/h, 2 nodes of 8 = 16 x 3.29 = $52.64/h (utilisation 1, the default)
    assert pricer.price("dgx-h100", 4, 1).usd_per_h == pytest.approx(4 * 3.29)
    assert pricer.price("dgx-h100", 8, 2).usd_per_h == pytest.approx(2 * 8 * 3.29)
    assert "8 x 3.29 USD/h per GPU" in pricer.price("dgx-h100", 8, 1).detail
    given = Pricer(db, cap_assumptions.load(db), usd_per_h_given={"dgx-h100": 80.0})
    assert given.price("dgx-h100", 8, 3).usd_per_h == pytest.approx(240.0)
    assert given.price("dgx-h100", 2, 1).basis == "given"
    assert pricer.price("dgx-b200", 8, 1).usd_per_h == pytest.approx(8 * 6.79)  # no instance price: 8 x per-GPU
    # no stated DRAM capacity: neither a standard host (cloud) nor a complete set of parts (owned)
    assert pricer.price("workstation-rtx-4090", 1, 1).usd_per_h is None


def test_every_accelerator_of_the_acceptance_question_is_priced():
    # capsim provision -m gpt-oss-120b --users 100 --tpot 50ms -H h100,h200,b200,mi300x,l40s,rtx-5090
    hw = ["h100", "h200", "b200", "mi300x", "l40s", "rtx-5090"]
    # the ideal engine, so that every accelerator qualifies and the test is about their prices
    out = run("provision", "-m", "gpt-oss-120b", "--users", "100", "--tpot", "50ms", "-H", ",".join(hw),
              "--top", "1000", "--json", "--engine", "roofline")
    assert out.exit_code == 0, out.output
    d = json.loads(out.output)
    assert d["qualifying_unpriced"] == [] and d["qualifying"]
    assert all(r["usd_per_h"] is not None for r in d["qualifying"] + d["closest"])
    assert {r["hardware"] for r in d["qualifying"]} == set(hw)  # every one qualifies, priced
    assert all(r["cost_basis"] == "cloud" and "host share included" in r["cost_detail"] for r in d["qualifying"])
    # systems with no instance price of their own, standard hosts: 8 x 6.79 and 8 x 2.39 per hour
    d = json.loads(run("provision", "-m", "deepseek-v3", "--users", "1000", "--ttft", "2s", "--tpot", "50ms", "-H",
                       "dgx-b200,server-8x-mi300x", "--max-nodes", "1", "--json", "--engine", "roofline").output)
    assert d["qualifying_unpriced"] == []
    per_h = {r["hardware"]: r["usd_per_h"] for r in d["qualifying"] if r["devices"] == 8}
    assert per_h == pytest.approx({"dgx-b200": 8 * 6.79, "server-8x-mi300x": 8 * 2.39})


def test_pareto_front_keeps_only_undominated():
    class C:
        def __init__(self, usd, cap):
            self.usd_per_h, self.max_tokens_per_s = usd, cap
    a, b, c, d = C(10, 100), C(20, 90), C(30, 300), C(5, 50)
    assert pareto([a, b, c, d]) == [d, a, c]


# ---------------------------------------------------------------- the command


def test_deepseek_v3_question_answers_with_a_ranked_table(tmp_path):
    png = tmp_path / "pareto.png"
    out = run("provision", "-m", "deepseek-v3", "--users", "1000", "--tpot", "50ms", "--ttft", "2s",
              "-H", "dgx-h200,dgx-h100", "--max-nodes", "2", "--plot", str(png), "--json", "--engine", "roofline")
    assert out.exit_code == 0, out.output
    d = json.loads(out.output)
    assert d["found"] and d["qualifying"]
    first = d["qualifying"][0]
    assert first["batch"] >= 1000 and first["tpot_s"] <= 0.05 and first["ttft_s"] <= 2.0
    assert first["binding_constraint"] in ("ttft", "tpot", "memory", "max_batch")
    costs = [r["usd_per_h"] for r in d["qualifying"]]
    assert costs == sorted(costs)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_candidate_lists_the_closest_and_the_binding_constraint():
    out = run("provision", "-m", "deepseek-v3", "--users", "64", "--tpot", "1ms", "-H", "dgx-h200",
              "--max-nodes", "1", "--offload", "none")
    assert out.exit_code == 0, out.output
    assert "NO candidate meets every limit" in out.output and "tpot (" in out.output
    d = json.loads(run("provision", "-m", "deepseek-v3", "--users", "64", "--tpot", "1ms", "-H", "dgx-h200",
                       "--max-nodes", "1", "--offload", "none", "--json").output)
    assert not d["found"] and d["closest"]
    # no layout steps in 1 ms (those that hold 64 users are bound by TPOT), and the rest cannot hold 64 users
    binding = [r["binding_constraint"] for r in d["closest"]]
    assert "tpot" in binding and set(binding) <= {"tpot", "users"}
    assert all(r["binding_ratio"] > 1 for r in d["closest"])
    ratios_ = [r["binding_ratio"] for r in d["closest"]]
    assert ratios_ == sorted(ratios_)  # closest first


def test_accuracy_limit_binds_when_no_published_score_is_high_enough():
    # DeepSeek-V3 MMLU is 88.5% (capsim/catalogue/accuracy.yaml, DeepSeek-V3 README): 0.95 cannot be met
    d = json.loads(run("provision", "-m", "deepseek-v3", "--users", "8", "--min-accuracy", "0.95", "--benchmark",
                       "mmlu", "-H", "dgx-h200", "--max-nodes", "1", "--offload", "none", "--json").output)
    assert not d["found"]
    assert d["closest"][0]["binding_constraint"] == "accuracy"
    assert d["closest"][0]["binding_ratio"] == pytest.approx(0.95 / 0.885)


@pytest.mark.parametrize("args, words", [
    (["--tpot", "fast"], "--tpot fast: expected a positive time"),
    ([], "give what must be served"),
    (["--min-accuracy", "0.8"], "--min-accuracy needs --benchmark"),
    (["-H", "no-such-box"], "--hardware no-such-box"),
    (["--usd-per-hour", "dgx-h100"], "--usd-per-hour dgx-h100: expected NAME=USD"),
    (["--plot", "out.jpg"], "--plot out.jpg: expected a file name ending in .png, .svg, .pdf"),
])
def test_bad_input_is_one_line_exit_2(args, words):
    base = ["provision", "-m", "deepseek-v3"] + ([] if args == [] else ["--users", "8"])
    out = CliRunner().invoke(cli, base + args)
    assert out.exit_code == 2
    assert words in out.output and "Traceback" not in out.output
