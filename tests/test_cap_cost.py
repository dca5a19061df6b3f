"""The CAP cost model: exact values derived by hand from the committed hardware_db prices and sourced defaults."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from capsim.cap import assumptions, cost
from capsim.cap.parts import hardware_parts, price_date
from capsim.cap.report import cost_report
from capsim.cli.main import cli
from capsim.errors import CapsimError
from capsim.hardware import db as hwdb

LIFETIME_H = 5 * 365.25 * 24  # 43,830 h: the default lifetime (Amazon 10-K, five years)
PUE, USD_KWH = 1.58, 0.1194  # Uptime Institute 2023 average; EIA median state, Sept 2024
DRAM_USD_PER_B = 85 / (32 * 2**30)  # midpoint of "$80-$90" for a 32 GB (= 32 GiB) DDR5 RDIMM
SSD_USD_PER_B = 299.99 / 2.0e12  # hardware_db samsung-9100-pro: $299.99 for 2 TB


@pytest.fixture(scope="module")
def db():
    return hwdb.load()


@pytest.fixture(scope="module")
def a(db):
    return assumptions.load(db)


def close(x, y):
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


# ------------------------------------------------------------------ defaults and their sources


def test_every_default_is_sourced_and_its_formula_holds(a):
    assert assumptions.formula_problems() == []  # value = formula(x) for every default with a published figure
    assert close(a.lifetime_s, LIFETIME_H * 3600)
    assert (a.utilisation, a.pue, a.usd_per_kwh, a.idle_power_fraction) == (1.0, PUE, USD_KWH, 0.5)
    assert close(a.dram_usd_per_byte, DRAM_USD_PER_B)
    assert close(a.ssd_usd_per_byte, SSD_USD_PER_B)
    for name, row in a.table().items():
        assert row["source"] and row["unit"] and row.get("title") and row.get("url"), name
        assert row.get("as_published") or row["kind"] == "assumption", name
    assert a.provenance["ssd_usd_per_byte"].source == "engadget-9100pro-copy"  # read from hardware_db, not restated


def test_overrides_are_checked_and_marked_as_user_input(a):
    b = a.with_overrides(pue=1.2, utilisation=0.5)
    assert (b.pue, b.utilisation, b.lifetime_s) == (1.2, 0.5, a.lifetime_s)
    assert b.provenance["pue"].source == "user override" and b.provenance["lifetime_s"].source == "amazon-10k-2024"
    for bad in ({"utilisation": 0.0}, {"utilisation": 1.5}, {"pue": 0.9}, {"lifetime_s": -1.0},
                {"idle_power_fraction": 2.0}, {"usd_per_kwh": float("nan")}):
        with pytest.raises(CapsimError):
            a.with_overrides(**bad)


# ------------------------------------------------------------------ the pure formulas


def test_formulas_exact():
    # P_avg = P_max (f + (1 - f) u) = 1000 W x (0.5 + 0.5 x 0.25) = 625 W
    assert close(float(cost.average_power_w(1000.0, 0.25, 0.5)), 625.0)
    # capex $43,830 over 43,830 h = $1/h; 1 kW x PUE 1.5 x $0.10/kWh = $0.15/h; u = 1: $1.15/h
    life = LIFETIME_H * 3600
    assert close(float(cost.hourly_cost_usd(43_830.0, life, 1.0, 1000.0, 1.5, 0.10)), 1.15)
    # u = 0.5, same average draw: (1 + 0.15) / 0.5 = $2.30 per hour of serving
    assert close(float(cost.hourly_cost_usd(43_830.0, life, 0.5, 1000.0, 1.5, 0.10)), 2.30)
    # $1.15/h at 1000 tokens/s: 1.15 / (1000 x 3600) x 1e6 = $0.319444.../1M tokens
    assert close(float(cost.usd_per_million_tokens(1.15, 1000.0)), 1.15 / 3.6)
    # 1000 W x PUE 1.5 / 100 tokens/s = 15 J/token; without PUE 10 J
    assert close(float(cost.joules_per_token(1000.0, 100.0, 1.5)), 15.0)
    assert close(float(cost.joules_per_token(1000.0, 100.0)), 10.0)
    assert close(float(cost.cloud_hourly_cost_usd(98.32, 0.5)), 196.64)
    # vectorised over scenarios: capex $43,830 and $87,660 -> $1.15/h and $2.15/h
    np.testing.assert_allclose(cost.hourly_cost_usd(np.array([43_830.0, 87_660.0]), life, 1.0, 1000.0, 1.5, 0.10),
                               [1.15, 2.15], rtol=1e-12)


def test_capex_lists_unpriced_parts_instead_of_counting_zero():
    class P:
        def __init__(self, name, count, unit_usd):
            self.name, self.count, self.unit_usd = name, count, unit_usd

    c = cost.system_capex_usd([P("gpu", 8, None), P("cpu", 2, 1000.0), P("dram", 2, 50.0)])
    assert c.priced_usd == 2100.0 and c.unpriced == ("gpu",) and not c.complete and c.usd is None
    assert cost.system_capex_usd([P("cpu", 2, 1000.0)]).usd == 2000.0


# ------------------------------------------------------------------ reports on committed hardware entries


def test_cpu_server_fully_priced_from_its_parts(db, a):
    r = cost_report(db, "cpu-server-epyc-9654", a, 1000.0)
    # 2 x EPYC 9654 at AMD's 1kU $11,805 + 2 x 768 GiB DDR5 (12 x 64 GiB per socket) x $85 / 32 GiB = 2 x $2,040
    capex = 2 * 11_805 + 2 * 12 * 64 * 85 / 32
    assert r["capex"]["complete"] and close(r["capex"]["usd"], capex) and close(capex, 27_690.0)
    assert r["capex"]["basis"].startswith("sum of parts")
    # no published system power: 2 x 360 W TDP; the DRAM has no power figure and is listed
    assert r["power"]["max_w"] == 720.0 and r["power"]["parts_without_power"] == ["dram"]
    per_h = capex / LIFETIME_H + 0.720 * PUE * USD_KWH  # $0.63176 capital + $0.13583 energy
    assert close(r["usd_per_h"], per_h)
    assert close(r["usd_per_million_output_tokens"], per_h / (1000 * 3600) * 1e6)
    assert close(r["joules_per_output_token"], 720 * PUE / 1000)  # u = 1: P_max x PUE / tokens/s = 1.1376 J
    assert close(r["joules_per_output_token_it"], 0.72)
    cpu = next(p for p in r["parts"] if p["name"] == "cpu")
    assert (cpu["unit_usd"], cpu["price_source"], cpu["unit_power_w"]) == (11_805.0, "amd-epyc-9654", 360.0)


def test_dgx_h100_unpriced_parts_are_listed(db, a):
    r = cost_report(db, "dgx-h100", a, 1000.0)
    assert r["capex"]["usd"] is None and not r["capex"]["complete"]
    assert r["capex"]["unpriced_parts"] == ["gpu", "nvswitch", "cpu", "nic"]  # NVIDIA publishes no GPU list price
    # priced: 2 x 1 TB DDR5 at the DRAM $/byte, 8 x 3.84 TB NVMe at the SSD $/byte (micron-9400 has no price)
    priced = 2 * 1.0e12 * DRAM_USD_PER_B + 8 * 3.84e12 * SSD_USD_PER_B
    assert close(r["capex"]["parts_priced_usd"], priced)
    assert r["usd_per_h"] is None and r["usd_per_million_output_tokens"] is None
    assert "gpu" in r["cost_basis"]["missing"] and "--price" in r["cost_basis"]["missing"]
    # the system's published 10.2 kW max power still gives the energy per token: 10,200 x 1.58 / 1000 J
    assert r["power"]["source"] == "nv-dgx-h100-datasheet" and close(r["joules_per_output_token"], 10.2 * PUE)


def test_dgx_h100_priced_by_hand(db, a):
    prices = {"h100-sxm5-80gb": 25_000.0, "nvswitch": 0.0, "cpu": 10_000.0, "nic": 1_500.0}  # user inputs, not data
    r = cost_report(db, "dgx-h100", a, 2000.0, prices=prices)
    capex = 8 * 25_000 + 0 + 2 * 10_000 + 8 * 1_500 + 2 * 1.0e12 * DRAM_USD_PER_B + 8 * 3.84e12 * SSD_USD_PER_B
    assert r["capex"]["complete"] and close(r["capex"]["usd"], capex)
    per_h = capex / LIFETIME_H + 10.2 * PUE * USD_KWH
    assert close(r["usd_per_h"], per_h) and close(r["usd_per_million_output_tokens"], per_h / (2000 * 3600) * 1e6)
    gpu = next(p for p in r["parts"] if p["name"] == "gpu")
    assert gpu["price_source"] == "--price" and gpu["price_basis"] == "unit price given by hand"
    with pytest.raises(CapsimError, match="no part named 'bogus'"):
        cost_report(db, "dgx-h100", a, 1.0, prices={"bogus": 1.0})


def test_cloud_price_pro_rated(db, a):
    # like with like: dgx-h100 is a standard host (2 TB DDR5 / 8 GPUs = 233 GiB <= 256 GiB), so its cloud price is
    # 8 x the H100 SXM per-GPU price (RunPod Secure, host share included, 2026-08-23) = 8 x 3.29 = $26.32/h;
    # 2 of 8 devices: 2 x 3.29 = $6.58/h; at 1000 tokens/s $6.58 / 3.6 per 1M
    r = cost_report(db, "dgx-h100", a, 1000.0, cloud=True, devices=2)
    assert close(r["usd_per_h"], 2 * 3.29) and close(r["usd_per_million_output_tokens"], 2 * 3.29 / 3.6)
    assert r["cost_basis"]["source"] == "runpod-pods-feed-2026-08-23" and r["share_of_system"] == 0.25
    # the AWS p5.48xlarge instance price ($98.32/h for 8) is shown pro rata as the alternative, not used
    b = r["cost_basis"]
    assert close(b["instance_usd_per_h"], 98.32 / 4) and b["instance_source"] == "aws-p5-ondemand-secondary"
    assert b["instance_used"] is False and b["price_basis"] == "per-device"
    half = cost_report(db, "dgx-h100", a.with_overrides(utilisation=0.5), 1000.0, cloud=True)
    assert close(half["usd_per_h"], 2 * 8 * 3.29)  # paid while idle: 26.32 / 0.5
    with pytest.raises(CapsimError, match="--cloud"):
        cost_report(db, "cpu-server-epyc-9654", a, 1.0, cloud=True)


def test_dgx_b200_and_mi300x_server_priced_per_gpu(db, a):
    # dgx-b200 has no instance price; standard host (2 TB / 8 = 233 GiB): 8 x 6.79 (RunPod B200) = $54.32/h,
    # over utilisation 0.5: 54.32 / 0.5 = $108.64 per hour of serving
    r = cost_report(db, "dgx-b200", a.with_overrides(utilisation=0.5), 1000.0, cloud=True)
    assert close(r["usd_per_h"], 8 * 6.79 / 0.5) and close(r["cost_basis"]["usd_per_h_listed"], 54.32)
    b = r["cost_basis"]
    assert (b["per_device_usd_per_h"], b["devices"], b["item"]) == (6.79, 8, "b200") and "instance_usd_per_h" not in b
    # server-8x-mi300x: 1536 GiB / 8 = 192 GiB per GPU: 8 x 2.39 (RunPod MI300X) = $19.12/h
    m = cost_report(db, "server-8x-mi300x", a, 1000.0, cloud=True)
    assert close(m["usd_per_h"], 8 * 2.39) and m["cloud_prices"]["standard_host"]["standard"]
    assert close(m["cloud_prices"]["standard_host"]["dram_bytes_per_accelerator"], 1536 * 2**30 / 8)


def test_report_carries_source_url_and_date(db, a):
    b = cost_report(db, "dgx-b200", a, 1000.0, cloud=True)["cost_basis"]
    assert b["source"] == "runpod-pods-feed-2026-08-23" and b["source_title"].startswith("RunPod Pods per-GPU")
    assert b["source_url"].startswith("https://github.com/toolshedlabs-hash/gpu-price-feed/")
    assert (b["price_date"], b["price_date_from"]) == ("2026-08-23", "price note's 'as of'")
    # the instance alternative carries its own date: the Next Platform article (2023-07-27) in its source title
    h = cost_report(db, "dgx-h100", a, 1000.0, cloud=True)["cloud_prices"]["instance"]
    assert (h["price_date"], h["price_date_from"]) == ("2023-07-27", "source title")


def test_price_date_rule():
    # 1. the price note's "as of YYYY-MM-DD"; 2. the last ISO date of the source title; 3. the id's suffix
    assert price_date("RunPod ..., as of 2026-08-23; raised by 2026-09-25", "x", "t 2020-01-01") == (
        "2026-08-23", "price note's 'as of'")
    assert price_date("no date", "x", "feed, snapshot 2026-01-02 collected 2026-08-23") == (
        "2026-08-23", "source title")
    assert price_date(None, "feed-2026-10-01", "a title") == ("2026-10-01", "source id")
    assert price_date("as of 2026-13-45", "feed-2026-02-30", "undated title") == (None, "undated")  # not dates


def test_bare_device_cloud_includes_the_host_share(db, a):
    # -H h100 --devices 2 on the cloud basis: 2 x 3.29 = $6.58/h; the per-GPU price includes the host share
    r = cost_report(db, "h100", a, 1000.0, cloud=True, devices=2)
    assert close(r["usd_per_h"], 2 * 3.29) and r["cost_basis"]["per_device_usd_per_h"] == 3.29
    assert any("includes the host share" in n and "2026-08-23" in n for n in r["notes"])
    assert not any("not included" in n for n in r["notes"])
    # owned basis: no purchase price for an H100, and the bare device leaves the host out
    o = cost_report(db, "h100", a, 1000.0, devices=2)
    assert o["usd_per_h"] is None and "--cloud" in o["cost_basis"]["missing"]
    assert any("host (CPU, DRAM, SSD, network) is not included" in n for n in o["notes"])


def test_offload_testbed_is_not_priced_per_gpu(db, a):
    # ktransformers-testbed: 1 TB DDR5 behind one RTX 4090D = 931 GiB > 256 GiB: not a standard host
    hp = hardware_parts(db, "ktransformers-testbed", a)
    assert hp.host["standard"] is False and close(hp.host["dram_bytes_per_accelerator"], 1.0e12)
    assert hp.cloud is None
    # even if the 4090D had a per-GPU price (the H100's, here), the host rule keeps it off the per-GPU basis;
    # with an instance price (dgx-h100's, here) that is what the cloud basis uses
    items = dict(db.items)
    items["rtx-4090d"] = items["rtx-4090d"].model_copy(update={"price": items["h100-sxm5-80gb"].price})
    items["ktransformers-testbed"] = items["ktransformers-testbed"].model_copy(
        update={"price": items["dgx-h100"].price})
    alt = hwdb.HardwareDB(items=items, sources=dict(db.sources))
    hp = hardware_parts(alt, "ktransformers-testbed", a)
    assert hp.cloud.basis == "instance" and hp.cloud.usd_per_h == 98.32
    assert any("not a standard host" in n and "931 GiB" in n for n in hp.cloud_notes)
    # a DRAM capacity that is not stated cannot be checked: ik-llama-testbed is not priced per GPU either
    assert hardware_parts(db, "ik-llama-testbed", a).host["standard"] is False


def test_standard_host_limit_and_superchip(db, a):
    # below dgx-h100's 233 GiB per GPU the rule falls back to the system's own instance price ($98.32/h, AWS p5)
    r = cost_report(db, "dgx-h100", a.with_overrides(standard_host_dram_bytes_per_accelerator=200 * 2**30), 1.0,
                    cloud=True)
    assert close(r["usd_per_h"], 98.32) and r["cost_basis"]["instance_used"] is True
    # gh200-node: 480 GB LPDDR5X on the superchip itself (NVLink-C2C host link): the 1x GH200 price covers it
    g = cost_report(db, "gh200-node", a, 1.0, cloud=True)
    assert close(g["usd_per_h"], 2.29) and g["cost_basis"]["source"] == "lambda-odc-feed-2026-08-23"


def test_system_purchase_price_and_parts_basis(db, a):
    r = cost_report(db, "dgx-a100", a, 1000.0)
    assert r["capex"]["usd"] == 199_000.0 and r["capex"]["source"] == "anandtech-ampere-unleashed"
    assert close(r["usd_per_h"], 199_000 / LIFETIME_H + 6.5 * PUE * USD_KWH)  # published 6.5 kW max
    parts = cost_report(db, "dgx-a100", a, 1000.0, capex_from="parts")
    assert parts["capex"]["usd"] is None and parts["capex"]["unpriced_parts"] == ["gpu", "nvswitch", "nic"]


def test_bare_devices_utilisation_and_idle_energy(db, a):
    b = a.with_overrides(utilisation=0.5)
    r = cost_report(db, "rtx-4090", b, 100.0, devices=2)
    # 2 x $1,599 launch MSRP; 2 x 450 W; P_avg = 900 x (0.5 + 0.5 x 0.5) = 675 W
    assert r["capex"]["usd"] == 3198.0 and r["power"]["max_w"] == 900.0 and close(r["power"]["average_w"], 675.0)
    per_h = (3198 / LIFETIME_H + 0.675 * PUE * USD_KWH) / 0.5
    assert close(r["usd_per_h"], per_h)
    assert close(r["joules_per_output_token"], 675 / 0.5 * PUE / 100)  # 21.33 J: idle hours and PUE included
    assert close(r["joules_per_output_token_it"], 9.0)  # 900 W / 100 tokens/s while serving
    assert any("bare device" in n for n in r["notes"])


def test_dram_without_capacity_is_unpriced_until_given(db, a):
    r = cost_report(db, "workstation-rtx-4090", a, 50.0)
    assert r["capex"]["unpriced_parts"] == ["dram"]
    dram = next(p for p in r["parts"] if p["name"] == "dram")
    assert dram["price_basis"] == "capacity not stated in the system entry"
    ok = cost_report(db, "workstation-rtx-4090", a, 50.0, prices={"dram": 300.0})
    # RTX 4090 $1,599 + Ryzen 9 7950X $699 + DRAM $300 + 990 PRO 2 TB at the SSD $/byte
    assert close(ok["capex"]["usd"], 1599 + 699 + 300 + 2.0e12 * SSD_USD_PER_B)


# ------------------------------------------------------------------ command line


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_cli_json_and_text(db):
    r = run("cap", "cost", "-H", "cpu-server-epyc-9654", "--tokens-per-s", "1000", "--pue", "1.2", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert close(rep["usd_per_h"], 27_690 / LIFETIME_H + 0.72 * 1.2 * USD_KWH)
    assert rep["assumptions"]["pue"]["source"] == "user override"
    t = run("cap", "cost", "-H", "dgx-h100", "--tokens-per-s", "1000", "--lifetime-years", "4")
    assert t.exit_code == 0, t.output
    assert "no price for gpu, nvswitch, cpu, nic" in t.stdout and "assumptions" in t.stdout
    assert "cloud (--cloud)     8 x $3.29/h per GPU" in t.stdout and "$98.32/h (aws-p5-ondemand-secondary" in t.stdout


def test_cli_cloud_shows_source_url_and_date():
    t = run("cap", "cost", "-H", "dgx-b200", "--tokens-per-s", "1000", "--cloud")
    assert t.exit_code == 0, t.output
    assert "cloud price         8 x $6.79/h per GPU (b200; host share included) = $54.32/h" in t.stdout
    assert "  price date        2026-08-23" in t.stdout and "<https://github.com/toolshedlabs-hash" in t.stdout
    j = json.loads(run("cap", "cost", "-H", "h100", "--devices", "2", "--tokens-per-s", "1000", "--cloud",
                       "--json").stdout)
    b = j["cost_basis"]
    assert (b["source"], b["price_date"], b["per_device_usd_per_h"], b["devices"]) == (
        "runpod-pods-feed-2026-08-23", "2026-08-23", 3.29, 2)
    assert close(j["usd_per_h"], 6.58) and j["sources"]["runpod-pods-feed-2026-08-23"]["url"] == b["source_url"]
    k = run("cap", "cost", "-H", "dgx-h100", "--tokens-per-s", "1", "--cloud", "--standard-host-dram-gib", "128")
    assert "$98.32/h" in k.stdout and "not a standard host" in k.stdout  # 233 GiB > 128 GiB: the instance price


def test_cli_runs_a_prediction_for_the_rate():
    r = run("cap", "cost", "-H", "dgx-a100", "-m", "mixtral", "--batch", "8", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    p = rep["prediction"]
    assert close(rep["output_tokens_per_s"], 8 * 128 / p["request_latency_s"])  # batch x output_len / latency
    assert close(rep["usd_per_million_output_tokens"], rep["usd_per_h"] / (rep["output_tokens_per_s"] * 3600) * 1e6)


@pytest.mark.parametrize("args", [
    ("-H", "dgx-h100"),  # neither --tokens-per-s nor --model
    ("-H", "dgx-h100", "--tokens-per-s", "10", "--utilisation", "0"),
    ("-H", "dgx-h100", "--tokens-per-s", "10", "--price", "gpu"),
    ("-H", "dgx-h100", "--tokens-per-s", "-1"),
    ("-H", "no-such-box", "--tokens-per-s", "10"),
    ("-H", "cpu-server-epyc-9654", "--tokens-per-s", "10", "--cloud"),
    ("-H", "ktransformers-testbed", "--tokens-per-s", "10", "--cloud"),  # not a standard host, no instance price
    ("-H", "dgx-h100", "--tokens-per-s", "10", "--standard-host-dram-gib", "-1"),
    ("-H", "dgx-h100", "--tokens-per-s", "inf"),
])
def test_cli_bad_input_is_one_line_exit_2(args):
    r = run("cap", "cost", *args)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("capsim: error: ") and "\n" not in err and "Traceback" not in r.output
