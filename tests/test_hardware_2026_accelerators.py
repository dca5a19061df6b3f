"""Spot values of the accelerators added in 2026 against the vendor text they cite (SI units).

Each row quotes the datasheet text and where it was read; see hardware_db/sources/accelerators-2026.yaml and
hardware_db/sources/nvidia-datacenter.yaml for the full source notes.
"""

import pytest
from hw_spot import BF16, BW, CAP, check_spot

from capsim.hardware import db as hwdb

# NVIDIA Blackwell Ultra datasheet, https://resources.nvidia.com/en-us-blackwell-architecture/blackwell-ultra-datasheet
BLACKWELL_ULTRA = "nv-blackwell-ultra-datasheet"
# NVIDIA Blackwell datasheet, https://nvdam.widen.net/s/wwnsxrhm2w/blackwell-datasheet-3384703
BLACKWELL = "nv-blackwell-datasheet"
# NVIDIA GH200 datasheet, https://nvdam.widen.net/s/rrgqqnpbz8/grace-datasheet-gh200-grace-hopper-superchip-3773000
GH200 = "nv-gh200-datasheet"
# NVIDIA H100 product page / datasheet (H100 NVL column), https://www.nvidia.com/en-us/data-center/h100/
H100_NVL = "nv-h100-datasheet-nvl"
# AMD CDNA 4 white paper, https://www.amd.com/content/dam/amd/en/documents/instinct-tech-docs/white-papers/amd-cdna-4-architecture-whitepaper.pdf
CDNA4 = "amd-cdna4-whitepaper"
# Intel Gaudi 3 Hot Chips 2024 slides, https://hc2024.hotchips.org/ (copy: https://www.sgpjbg.com/baogao/465025.html)
GAUDI3 = "intel-gaudi3-hotchips2024"
# NVIDIA L40 spec table, https://www.nvidia.com/en-us/data-center/l40/ (copy: https://www.mullet.se/product.html?product_id=355414)
L40 = "nv-l40-datasheet"



@pytest.fixture(scope="module")
def db():
    return hwdb.load()


@pytest.mark.parametrize(
    "item_id, field, expected, source",
    [
        # B300 (HGX B300 per-GPU column): "GPU Memory | Bandwidth 270 GB HBM3E | 7.7 TB/s"
        ("b300", CAP, 270e9, BLACKWELL_ULTRA),
        ("b300", BW, 7.7e12, BLACKWELL_ULTRA),
        # "FP16/BF16 Tensor Core 4.5 PFLOPS" (sparse; dense is one-half) -> 2.25 PFLOPS dense
        ("b300", BF16, 2.25e15, BLACKWELL_ULTRA),
        # GB300 (GB300 NVL72 per-GPU column): "279 GB HBM3E | 8 TB/s"
        ("gb300", CAP, 279e9, BLACKWELL_ULTRA),
        ("gb300", BW, 8e12, BLACKWELL_ULTRA),
        # "FP16/BF16 Tensor Core 5 PFLOPS" (sparse) -> 2.5 PFLOPS dense; rack row 360 PFLOPS / 72 = 5
        ("gb300", BF16, 2.5e15, BLACKWELL_ULTRA),
        # GB200 (GB200 NVL72 per-GPU column): "186 GB HBM3E | 8 TB/s"
        ("gb200", CAP, 186e9, BLACKWELL),
        ("gb200", BW, 8e12, BLACKWELL),
        # "FP16/BF16 Tensor Core 5 PFLOPS" ("All other Tensor Core specs are sparse; dense is one-half")
        ("gb200", BF16, 2.5e15, BLACKWELL),
        # GH200 144 GB: "96GB HBM3 | 144GB HBM3e", "Up to 4TB/s | Up to 4.9TB/s"
        ("gh200-144gb", CAP, 144e9, GH200),
        ("gh200-144gb", BW, 4.9e12, GH200),
        # "BFLOAT16 Tensor Core 1,979 teraFLOPS* | 990 teraFLOPS" (sparse* | dense)
        ("gh200-144gb", BF16, 990e12, GH200),
        # H100 NVL: "GPU Memory 94GB", "GPU Memory Bandwidth 3.9TB/s"
        ("h100-nvl", CAP, 94e9, H100_NVL),
        ("h100-nvl", BW, 3.9e12, H100_NVL),
        # "BFLOAT16 Tensor Core* 1,671 teraFLOPS" ("* With sparsity") -> 835.5 TFLOPS dense
        ("h100-nvl", BF16, 835.5e12, H100_NVL),
        # MI355X: "288GB HBM3E with 8TB/s of bandwidth"
        ("mi355x", CAP, 288e9, CDNA4),
        ("mi355x", BW, 8e12, CDNA4),
        # Table 1 "Matrix BF16 | BF16 Sparsity ... 2.5 PF | 5.0 PF" (MI355X, dense | sparse)
        ("mi355x", BF16, 2.5e15, CDNA4),
        # Gaudi 3: "HBM Capacity 128 GB", "HBM Bandwidth 3.67 TB/s"
        ("gaudi-3", CAP, 128e9, GAUDI3),
        ("gaudi-3", BW, 3.67e12, GAUDI3),
        # "BF16 Matrix TFLOPs 1835" (dense MME peak)
        ("gaudi-3", BF16, 1835e12, GAUDI3),
        # L40: "GPU Memory 48 GB GDDR6 with ECC", "Memory Bandwidth 864GB/s"
        ("l40", CAP, 48e9, L40),
        ("l40", BW, 864e9, L40),
        # "BFLOAT16 Tensor Core TFLOPS 181.05 | 362.1*" (dense | sparse)
        ("l40", BF16, 181.05e12, L40),
    ],
)
def test_spot_values(db, item_id, field, expected, source):
    check_spot(db, item_id, field, expected, source)


def test_blackwell_ultra_bins_differ(db):
    # Same chip, two power/clock bins: the GB300 NVL72 GPU is the faster one.
    b300, gb300 = db.get("b300", "accelerator"), db.get("gb300", "accelerator")
    assert gb300.peak_flop_per_s["bf16"].value > b300.peak_flop_per_s["bf16"].value
    assert gb300.tdp_w.value == pytest.approx(1400.0)
    assert b300.tdp_w.value == pytest.approx(1100.0)


def test_new_accelerators_link_to_existing_items(db):
    for item_id in ("b300", "gb300", "gb200", "gh200-144gb", "h100-nvl", "mi355x", "gaudi-3", "l40"):
        acc = db.get(item_id, "accelerator")
        for link_id in (acc.host_link, acc.scale_up_link):
            if link_id is not None:
                assert db.get(link_id, "link").id == link_id
