"""The accelerators, links and systems added late in 2026 (older data-center parts, China export SKUs, GB300 NVL72,
8-GPU boards and cloud instances): spot values against the text they cite, each system's accelerator count and
scale-up link, and a forecast on a few of them.

Each spot-value row quotes the text and names the source id; hardware_db/sources/accelerators-2026.yaml and
hardware_db/sources/cpus-systems-2026.yaml hold the full source notes (where the copy was read, its tier).
"""

from __future__ import annotations

import math

import pytest
from hw_spot import BF16, BW, CAP, FP16, alias_clashes, check_spot, forecast, problems_in

from capsim.hardware import db as hwdb
from capsim.hardware.topology import build_graph, devices

DB, PROBLEMS = hwdb.check(hwdb.BUILTIN_DB)

# AMD CDNA 2 white paper, https://www.amd.com/content/dam/amd/en/documents/instinct-business-docs/white-papers/amd-cdna2-white-paper.pdf
CDNA2 = "amd-cdna2-whitepaper"
# NVIDIA A10 datasheet, https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/a10-datasheet.pdf
A10_DS = "nv-a10-datasheet"
# community datasheet table, https://github.com/winston-zhang-orz/gpu-specs/blob/097f0fb34b7530bb7aa83535e5170a4c6701b5d7/specs.md
GPU_SPECS = "gpu-specs-gmasse"
# "GPU Performance (Data Sheets) Quick Reference (2023)" blog table (A30 column), citing
# https://www.nvidia.com/en-us/data-center/products/a30-gpu/
QUICKREF = "arthurchiao-gpu-quickref-2023"
# Google Cloud GPU table as copied, https://huggingface.co/spaces/Elfsong/gcp_allocator/commit/3a1a5af88c8fd7c36675800b52069eaf40fed2b4
GCP_TABLE = "gcp-gpu-table-copy"
# PC Watch T4 launch report, https://pc.watch.impress.co.jp/docs/news/1142896.html
PCWATCH = "pcwatch-tesla-t4"
# Chinese NVIDIA data-center spec report (2026-09-18), GitHub file index id 68975056964
CN_REPORT = "cn-nvidia-dc-spec-report-2026"
# Chinese GPU comparison table (A800 80GB SXM4 row), GitHub file index id 69437149373
CN_A800 = "cn-a800-spec-table"
# NVIDIA RTX 6000 Ada datasheet, read via
# https://github.com/atineoSE/coding-model-seeks-gpu/blob/ff052946489e8bb55dce164802bdb7c01251fde6/pipeline/pipeline/sources/rtx6000ada_specs.md
RTX6000ADA = "nv-rtx6000ada-datasheet"


NEW_ACCELERATORS = ("mi250x", "a10", "a30", "t4", "h20", "h800-sxm5-80gb", "a800-sxm4-80gb", "rtx-6000-ada")
NEW_LINKS = ("nvlink-4-h800", "nvlink-3-a800")
NEW_FILES = (*NEW_ACCELERATORS, *NEW_LINKS, "gb300-nvl72", "hgx-h20", "hgx-h800", "hgx-a800", "server-8x-mi355x",
             "aws-p4de-24xlarge", "azure-nd96amsr-a100-v4", "azure-nd-h100-v5", "aws-p5en-48xlarge",
             "gcp-a3-highgpu-8g", "accelerators-2026", "cpus-systems-2026")


def test_new_files_load_without_problems():
    assert not problems_in(PROBLEMS, NEW_FILES)


@pytest.mark.parametrize(
    "item_id, field, expected, source",
    [
        # MI250X, CDNA 2 white paper Table 1: "Memory Size 128GB HBM2e"
        ("mi250x", CAP, 128e9, CDNA2),
        # endnote MI200-30: "... for total memory bandwidth of 3.2768 TB/s"
        ("mi250x", BW, 3.2768e12, CDNA2),
        # Table 1: "Peak FP16/BF16 383.0 TF" (CDNA 2 prints dense peaks)
        ("mi250x", BF16, 383.0e12, CDNA2),
        # A10, community table: "GPU Memory (GB) ... 24", "Memory Bandwidth (GB/s) ... 600"
        ("a10", CAP, 24e9, GPU_SPECS),
        ("a10", BW, 600e9, GPU_SPECS),
        # A10 datasheet: "BFLOAT16 Tensor Core 125 TF | 250 TF*" (dense | sparse)
        ("a10", BF16, 125e12, A10_DS),
        # A30, quick-reference table: "GPU Mem 24GB HBM2", "GPU Mem BW 933GB/s", "BFLOAT16 TensorCore 165 TFLOPS"
        ("a30", CAP, 24e9, QUICKREF),
        ("a30", BW, 933e9, QUICKREF),
        ("a30", BF16, 165e12, QUICKREF),
        # T4, community table: "GPU Memory (GB) ... 16"; Google Cloud table: "T4 | 16 GB GDDR6 @ 320 GBps"
        ("t4", CAP, 16e9, GPU_SPECS),
        ("t4", BW, 320e9, GCP_TABLE),
        # T4 has no BF16 (Turing): the tensor rate is FP16, "FP16での演算性能は65TFLOPS"
        ("t4", FP16, 65e12, PCWATCH),
        # H20: "显存 96GB HBM3", "带宽 4.0 TB/s", "BF16 | FP16 Tensor Core 148 | 148 TFLOPS" (dense, report §E.1)
        ("h20", CAP, 96e9, CN_REPORT),
        ("h20", BW, 4.0e12, CN_REPORT),
        ("h20", BF16, 148e12, CN_REPORT),
        # H800 SXM: "80GB HBM3 ... 3.35 TB/s", "Tensor BF16/FP16 1,979 TFLOPS*" ("*采用稀疏技术") -> 989.5 dense
        ("h800-sxm5-80gb", CAP, 80e9, CN_REPORT),
        ("h800-sxm5-80gb", BW, 3.35e12, CN_REPORT),
        ("h800-sxm5-80gb", BF16, 989.5e12, CN_REPORT),
        # A800 80GB SXM4: "80 GB HBM2e ECC | 2,039 GB/s", FP16/BF16 Tensor "312 / 624* TFLOPS" (dense / sparse)
        ("a800-sxm4-80gb", CAP, 80e9, CN_A800),
        ("a800-sxm4-80gb", BW, 2.039e12, CN_A800),
        ("a800-sxm4-80gb", BF16, 312e12, CN_A800),
        # RTX 6000 Ada: "GPU memory 48GB GDDR6", "Memory bandwidth 960 GB/s"
        ("rtx-6000-ada", CAP, 48e9, RTX6000ADA),
        ("rtx-6000-ada", BW, 960e9, RTX6000ADA),
        # "Tensor performance 1457.0 TFLOPS" (footnote 4: effective FP8 with sparsity) -> dense FP8 728.5 -> BF16 364.25
        ("rtx-6000-ada", BF16, 364.25e12, RTX6000ADA),
    ],
)
def test_spot_values(item_id, field, expected, source):
    check_spot(DB, item_id, field, expected, source)


def test_sparse_figures_are_halved():
    h800 = DB.get("h800-sxm5-80gb", "accelerator").peak_flop_per_s
    assert h800["bf16"].kind == "derived" and h800["bf16"].formula == "x / 2"
    assert h800["fp8"].value == pytest.approx(2 * h800["bf16"].value)
    ada = DB.get("rtx-6000-ada", "accelerator").peak_flop_per_s
    assert ada["fp8"].value == pytest.approx(1457.0e12 / 2)
    assert ada["bf16"].value == pytest.approx(ada["fp8"].value / 2)
    # printed dense figures stay as printed
    assert DB.get("h20", "accelerator").peak_flop_per_s["bf16"].kind == "vendor-spec"
    assert DB.get("mi250x", "accelerator").peak_flop_per_s["bf16"].kind == "vendor-spec"


def test_turing_t4_publishes_no_bf16():
    assert "bf16" not in DB.get("t4", "accelerator").peak_flop_per_s


def test_export_skus_keep_compute_and_cut_nvlink():
    h100, h800 = DB.get("h100-sxm5-80gb", "accelerator"), DB.get("h800-sxm5-80gb", "accelerator")
    assert h800.peak_flop_per_s["bf16"].value == h100.peak_flop_per_s["bf16"].value
    a100, a800 = DB.get("a100-sxm4-80gb", "accelerator"), DB.get("a800-sxm4-80gb", "accelerator")
    assert a800.peak_flop_per_s["bf16"].value == a100.peak_flop_per_s["bf16"].value
    # 400 GB/s total per GPU = 200 GB/s per direction, below the 450 (H100) and 300 (A100) of the full parts
    for link_id, full in (("nvlink-4-h800", "nvlink-4"), ("nvlink-3-a800", "nvlink-3")):
        cut, ref = DB.get(link_id, "link"), DB.get(full, "link")
        assert cut.bandwidth_per_direction_bytes_per_s.value == pytest.approx(200e9)
        assert cut.bandwidth_per_direction_bytes_per_s.value < ref.bandwidth_per_direction_bytes_per_s.value
    assert h800.scale_up_link == "nvlink-4-h800" and a800.scale_up_link == "nvlink-3-a800"
    # the H20 keeps the full NVLink 4 but has about 15% of the H100's BF16
    h20 = DB.get("h20", "accelerator")
    assert h20.scale_up_link == "nvlink-4"
    assert h20.peak_flop_per_s["bf16"].value / h100.peak_flop_per_s["bf16"].value == pytest.approx(0.15, abs=0.01)


def test_new_accelerators_link_to_existing_items():
    for item_id in NEW_ACCELERATORS:
        acc = DB.get(item_id, "accelerator")
        for link_id in (acc.host_link, acc.scale_up_link):
            if link_id is not None:
                assert DB.get(link_id, "link").id == link_id


def test_aliases_do_not_collide():
    assert not alias_clashes(DB, {*NEW_FILES, "gb300"})


# system id: (accelerator item, count, scale-up link of every GPU)
SYSTEMS = {
    "gb300-nvl72": ("gb300", 72, "nvlink-5"),
    "hgx-h20": ("h20", 8, "nvlink-4"),
    "hgx-h800": ("h800-sxm5-80gb", 8, "nvlink-4-h800"),
    "hgx-a800": ("a800-sxm4-80gb", 8, "nvlink-3-a800"),
    "server-8x-mi355x": ("mi355x", 8, "amd-infinity-fabric-mi300x"),
    "aws-p4de-24xlarge": ("a100-sxm4-80gb", 8, "nvlink-3"),
    "azure-nd96amsr-a100-v4": ("a100-sxm4-80gb", 8, "nvlink-3"),
    "azure-nd-h100-v5": ("h100-sxm5-80gb", 8, "nvlink-4"),
    "aws-p5en-48xlarge": ("h200-sxm-141gb", 8, "nvlink-4"),
    "gcp-a3-highgpu-8g": ("h100-sxm5-80gb", 8, "nvlink-4"),
}


@pytest.mark.parametrize("sys_id", sorted(SYSTEMS))
def test_system_loads_with_its_accelerator_count(sys_id):
    item, count, link = SYSTEMS[sys_id]
    g = build_graph(DB.items[sys_id], DB)
    gpus = devices(g, "accelerator")
    assert len(gpus) == count
    assert {g.nodes[d]["item"] for d in gpus} == {item}
    # every GPU reaches the one switch node over its scale-up bundle: one scale-up domain of `count` GPUs
    switches = devices(g, "switch")
    assert len(switches) == 1
    assert all(g[d][switches[0]]["link"] == link for d in gpus)


def test_gb300_nvl72_pairs_each_grace_with_two_gpus():
    g = build_graph(DB.items["gb300-nvl72"], DB)
    assert len(devices(g, "cpu")) == 36
    assert all(g[f"gpu{i}"][f"cpu{i // 2}"]["link"] == "nvlink-c2c" for i in range(72))


def test_dated_cloud_prices():
    # datareceipts 2026-11-09: p4de.24xlarge "usd_per_hour": 27.44705 (us-east-1)
    p4de = DB.items["aws-p4de-24xlarge"].price.cloud_usd_per_h
    assert p4de.value == pytest.approx(27.44705)
    # Azure ND96isr_H100_v5 "$12.29" per GPU-hour x 8 GPUs
    nd = DB.items["azure-nd-h100-v5"].price.cloud_usd_per_h
    assert nd.kind == "derived" and nd.value == pytest.approx(12.29 * 8)
    # dstack 2026-08-06: p5en.48xlarge on-demand $63.296
    assert DB.items["aws-p5en-48xlarge"].price.cloud_usd_per_h.value == pytest.approx(63.296)


@pytest.mark.parametrize("sys_id", ["hgx-h800", "hgx-h20", "aws-p5en-48xlarge", "server-8x-mi355x"])
def test_mixtral_forecast_runs(sys_id):
    out = forecast("-m", "mixtral", "-H", sys_id)
    assert out["scenario"]["hardware"] == sys_id
    assert out["tpot_s"] > 0 and math.isfinite(out["tpot_s"])


def test_h800_nvlink_cut_slows_collectives_against_hgx_h100_stand_in():
    """Same GPUs' compute and memory, NVLink cut 900 -> 400 GB/s: the prefill of an 8-way TP forecast is slower."""
    def ttft(sys_id):
        return forecast("-m", "mixtral", "-H", sys_id)["ttft_s"]

    assert ttft("hgx-h800") > ttft("gcp-a3-highgpu-8g")
