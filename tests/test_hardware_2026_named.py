"""The items the hardware issue names explicitly (A10G and AWS G5, RTX PRO 6000 Blackwell Server Edition and AWS G7e,
AWS P5e / P6-B200, an 8x Gaudi 3 box with its RoCE scale-up link, an H100 NVL bridged pair): spot values against the
text they cite, each system's accelerator count and GPU-to-GPU link, dated prices, and a forecast on each system.

Each spot-value row quotes the text and names the source id; hardware_db/sources/named-2026.yaml holds the full
source notes (where the copy was read, its tier).
"""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner
from hw_spot import BF16, BW, CAP, FP16, alias_clashes, check_spot, forecast, problems_in

from capsim.cli.main import cli
from capsim.hardware import db as hwdb
from capsim.hardware.topology import alltoall_bandwidth, build_graph, devices

DB, PROBLEMS = hwdb.check(hwdb.BUILTIN_DB)

# Baseten blog, https://www.baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/
BASETEN = "baseten-a10-vs-a10g"
# AWS A10G datasheet as quoted by public copies,
# https://d1.awsstatic.com/product-marketing/ec2/NVIDIA_AWS_A10G_DataSheet_FINAL_02_17_2022.pdf
A10G_DS = "aws-a10g-datasheet-copies"
# NVIDIA RTX PRO 6000 Blackwell Server Edition page, https://www.nvidia.com/en-us/data-center/rtx-pro-6000-blackwell-server-edition/
RTXPRO_SE = "nv-rtx-pro-6000-server-page"
# Intel Gaudi network configuration, https://docs.habana.ai/en/latest/Management_and_Monitoring/Network_Configuration/index.html
GAUDI_NET = "intel-gaudi-network-config"
# dated EC2 instance table (Price List API, us-east-1, checked 2026-07-27), GitHub file index id 57802202665
EC2_2026_07 = "spawn-ec2-instance-types-2026-07-27"


NEW_ACCELERATORS = ("a10g", "rtx-pro-6000-server")
NEW_LINKS = ("gaudi3-roce-scaleup", "nvlink-4-bridge-h100-nvl")
NEW_SYSTEMS = ("aws-g5-xlarge", "aws-g5-48xlarge", "aws-g7e-48xlarge", "aws-p5e-48xlarge", "aws-p6-b200-48xlarge",
               "gaudi3-server", "server-2x-h100-nvl")
NEW_FILES = (*NEW_ACCELERATORS, *NEW_LINKS, *NEW_SYSTEMS, "gaudi-3", "named-2026")


def test_new_files_load_without_problems():
    assert not problems_in(PROBLEMS, NEW_FILES)


@pytest.mark.parametrize(
    "item_id, field, expected, source",
    [
        # A10G, Baseten: "24 gigabytes of GDDR6 VRAM with a memory bandwidth of 600 gigabytes per second"
        ("a10g", CAP, 24e9, BASETEN),
        ("a10g", BW, 600e9, BASETEN),
        # AWS A10G datasheet as quoted: "lists BF16 tensor throughput as 70 TF dense (140 with sparsity)"
        ("a10g", BF16, 70e12, A10G_DS),
        # Baseten: "the standard A10 boasts 125 TF of compute, while the A10G only has 70 TF" (FP16 tensor)
        ("a10g", FP16, 70e12, BASETEN),
        # RTX PRO 6000 Server Edition: "96 GB GDDR7 ECC", "Memory Bandwidth: 1597 GB/s"
        ("rtx-pro-6000-server", CAP, 96e9, RTXPRO_SE),
        ("rtx-pro-6000-server", BW, 1.597e12, RTXPRO_SE),
        # "FP16 | BF16 Tensor Core: 1 PFLOP" (2:4-sparse, no footnote on the page) -> 500 TFLOPS dense
        ("rtx-pro-6000-server", BF16, 500e12, RTXPRO_SE),
        # "FP4 Tensor Core: 4 PFLOPS" (sparse) -> 2 PFLOPS dense
        ("rtx-pro-6000-server", "peak_flop_per_s.fp4", 2e15, RTXPRO_SE),
        # "Single-Precision Performance (FP32): 120 TFLOPS"
        ("rtx-pro-6000-server", "peak_flop_per_s.fp32", 120e12, RTXPRO_SE),
    ],
)
def test_spot_values(item_id, field, expected, source):
    check_spot(DB, item_id, field, expected, source)


def test_a10g_is_not_the_a10():
    a10, a10g = DB.get("a10", "accelerator"), DB.get("a10g", "accelerator")
    # same memory (24 GB, 600 GB/s), lower tensor rate (70 against 125 TFLOPS dense BF16)
    assert a10g.memory.capacity_bytes.value == a10.memory.capacity_bytes.value
    assert a10g.memory.bandwidth_bytes_per_s.value == a10.memory.bandwidth_bytes_per_s.value
    assert a10g.peak_flop_per_s["bf16"].value < a10.peak_flop_per_s["bf16"].value
    assert a10g.scale_up_link is None and a10g.host_link == "pcie-gen4-x16"
    assert DB.get("aws-a10g", "accelerator").id == "a10g"


def test_server_edition_differs_from_the_workstation_item():
    ws, se = DB.get("rtx-pro-6000-blackwell", "accelerator"), DB.get("rtx-pro-6000-server", "accelerator")
    assert ws.memory.bandwidth_bytes_per_s.value == pytest.approx(1.792e12)   # Workstation Edition
    assert se.memory.bandwidth_bytes_per_s.value < ws.memory.bandwidth_bytes_per_s.value
    assert se.memory.capacity_bytes.value == ws.memory.capacity_bytes.value
    # the printed PFLOPS rows are sparse: stored halved, as derived values
    for dtype in ("bf16", "fp16", "fp8", "fp4"):
        q = se.peak_flop_per_s[dtype]
        assert q.kind == "derived" and q.formula == "x / 2"
    assert se.peak_flop_per_s["bf16"].value < ws.peak_flop_per_s["bf16"].value
    # the bare alias still names the Workstation Edition; the server names resolve to the new item
    assert DB.get("rtx-pro-6000", "accelerator").id == "rtx-pro-6000-blackwell"
    assert DB.get("rtx-pro-6000-server-edition", "accelerator").id == "rtx-pro-6000-server"


def test_gaudi3_scale_up_link():
    # Intel: "21*200Gbps = 21*25 GB/s = 525 GB/s unidirectional bandwidth"
    link = DB.get("gaudi3-roce-scaleup", "link")
    assert link.bandwidth_per_direction_bytes_per_s.value == pytest.approx(525e9)
    assert link.bandwidth_per_direction_bytes_per_s.source == GAUDI_NET
    assert link.lanes == 21
    assert DB.get("gaudi-3", "accelerator").scale_up_link == "gaudi3-roce-scaleup"
    # 21 ports x 200 Gb/s = 21 x ethernet-200g
    port = DB.get("ethernet-200g", "link").bandwidth_per_direction_bytes_per_s.value
    assert link.bandwidth_per_direction_bytes_per_s.value == pytest.approx(21 * port)


def test_h100_nvl_bridge_is_half_of_nvidias_total():
    # NVIDIA H100 NVL: "NVIDIA NVLink: 600GB/s" (both directions) -> 300 GB/s per direction
    q = DB.get("nvlink-4-bridge-h100-nvl", "link").bandwidth_per_direction_bytes_per_s
    assert q.value == pytest.approx(300e9) and q.kind == "derived" and q.formula == "x / 2"


# system id: (accelerator item, count, link of every GPU-to-GPU hop)
SYSTEMS = {
    "aws-g5-xlarge": ("a10g", 1, None),
    "aws-g5-48xlarge": ("a10g", 8, "pcie-gen4-x16"),
    "aws-g7e-48xlarge": ("rtx-pro-6000-server", 8, "pcie-gen5-x16"),
    "aws-p5e-48xlarge": ("h200-sxm-141gb", 8, "nvlink-4"),
    "aws-p6-b200-48xlarge": ("b200", 8, "nvlink-5"),
    "gaudi3-server": ("gaudi-3", 8, "gaudi3-roce-scaleup"),
    "server-2x-h100-nvl": ("h100-nvl", 2, "nvlink-4-bridge-h100-nvl"),
}


@pytest.mark.parametrize("sys_id", sorted(SYSTEMS))
def test_system_loads_with_its_accelerator_count(sys_id):
    item, count, link = SYSTEMS[sys_id]
    g = build_graph(DB.items[sys_id], DB)
    gpus = devices(g, "accelerator")
    assert len(gpus) == count
    assert {g.nodes[d]["item"] for d in gpus} == {item}
    if link is None:
        return
    # every GPU leaves for its peers over the one named link (a switch node, or the bridge itself)
    for d in gpus:
        peer_links = {g[d][v]["link"] for v in g.successors(d) if g.nodes[v]["role"] in ("switch", "accelerator")}
        assert peer_links == {link}


def test_named_aliases_resolve():
    assert DB.get("server-8x-rtx-pro-6000").id == "aws-g7e-48xlarge"
    assert DB.get("p5e.48xlarge").id == "aws-p5e-48xlarge"
    assert DB.get("p6-b200.48xlarge").id == "aws-p6-b200-48xlarge"
    assert DB.get("g5.48xlarge").id == "aws-g5-48xlarge"
    assert DB.get("hls-3").id == "gaudi3-server"
    # HGX B300 is not a separate item: the DGX B300 system carries it as an alias
    assert DB.get("hgx-b300", "system").id == "dgx-b300"


def test_aliases_do_not_collide():
    assert not alias_clashes(DB, NEW_FILES)


def test_gaudi3_all_to_all_beats_a_pcie_box():
    def a2a(sys_id):
        g = build_graph(DB.items[sys_id], DB)
        return alltoall_bandwidth(g, devices(g, "accelerator"))

    # 21 RoCE ports per card (525 GB/s per direction) against one PCIe Gen5 x16 slot per card
    assert a2a("gaudi3-server") > a2a("aws-g7e-48xlarge") > 0


def test_dated_cloud_prices():
    price = {s: DB.items[s].price.cloud_usd_per_h for s in
             ("aws-g5-xlarge", "aws-g5-48xlarge", "aws-g7e-48xlarge", "aws-p6-b200-48xlarge")}
    # Price List API, us-east-1, 2026-07-27: g5.xlarge 1.006, g5.48xlarge 16.288, g7e.48xlarge 33.14432,
    # p6-b200.48xlarge 113.9328
    assert price["aws-g5-xlarge"].value == pytest.approx(1.006)
    assert price["aws-g5-48xlarge"].value == pytest.approx(16.288)
    assert price["aws-g7e-48xlarge"].value == pytest.approx(33.14432)
    assert price["aws-p6-b200-48xlarge"].value == pytest.approx(113.9328)
    assert {q.source for q in price.values()} == {EC2_2026_07}
    # p5e: "no published On-Demand rate (Capacity Block / reservation only)" -> no price stored
    assert DB.items["aws-p5e-48xlarge"].price is None
    # Azure NC80adis_H100_v5 (2x H100 NVL), eastus, retrieved 2026-11-09: "usd_per_hour": 17.64
    assert DB.items["server-2x-h100-nvl"].price.cloud_usd_per_h.value == pytest.approx(17.64)


@pytest.mark.parametrize("sys_id", ["aws-g5-48xlarge", "aws-g7e-48xlarge", "aws-p5e-48xlarge",
                                    "aws-p6-b200-48xlarge", "gaudi3-server", "server-2x-h100-nvl"])
def test_mixtral_forecast_runs(sys_id):
    out = forecast("-m", "mixtral", "-H", sys_id)
    assert out["scenario"]["hardware"] == sys_id
    assert out["tpot_s"] > 0 and math.isfinite(out["tpot_s"])


def test_single_a10g_needs_a_smaller_mixtral():
    # bf16 Mixtral (93 GB of weights) does not fit one 24 GB A10G; a 3-bit GGUF does
    r = CliRunner().invoke(cli, ["predict", "-m", "mixtral", "-H", "aws-g5-xlarge", "--json"])
    assert r.exit_code != 0
    assert forecast("-m", "mixtral", "-H", "aws-g5-xlarge", "--precision", "gguf-q3_k_s")["tpot_s"] > 0


def test_pcie_only_g5_decodes_slower_than_g7e():
    """Same 8-card PCIe shape, the A10G has 600 GB/s against the Server Edition's 1597 GB/s per card."""
    def tpot(sys_id):
        return forecast("-m", "mixtral", "-H", sys_id)["tpot_s"]

    assert tpot("aws-g5-48xlarge") > tpot("aws-g7e-48xlarge")
