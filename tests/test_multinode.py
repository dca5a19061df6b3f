"""Multi-node parallelism (--nodes): collectives priced on the cluster graph, with hand-derived answers.

Two data sets: the built-in DGX H100 (8 GPUs on NVSwitch, 450 GB/s NVLink 4 per direction per GPU, eight
400 Gb/s InfiniBand NDR NICs = 50 GB/s per direction each, one per GPU) and a toy pod written here with
round numbers and link latencies, so that latency terms can be checked exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from capsim import engines
from capsim.cli.main import cli
from capsim.hardware import db as hwdb
from capsim.hardware.target import for_layout, resolve_target
from capsim.hardware.topology import (
    FABRIC,
    alltoall_collective,
    build_cluster,
    build_graph,
    devices,
    ring_collective,
)
from capsim.predict import Query, predict
from capsim.sim.ops import ALLREDUCES_PER_LAYER
from capsim.sim.shape import weight_bytes

DB = hwdb.load()
TOY = Path(__file__).parent / "data" / "toy_db"
NIC_BYTES_PER_S = 50e9  # hardware_db/links/infiniband-ndr-400g.yaml: "400 Gb/s" per direction = 50e9 B/s
NVLINK_BYTES_PER_S = 450e9  # hardware_db/links/nvlink-4.yaml: "900 GB/sec total" / 2


def test_database_figures_this_file_derives_from():
    ib, nvl = DB.items["infiniband-ndr-400g"], DB.items["nvlink-4"]
    assert ib.bandwidth_per_direction_bytes_per_s.value == NIC_BYTES_PER_S
    assert nvl.bandwidth_per_direction_bytes_per_s.value == NVLINK_BYTES_PER_S
    sysm = DB.items["dgx-h100"]
    assert sysm.scale_out_link == "infiniband-ndr-400g"
    assert [c.count for c in sysm.components if c.role in ("accelerator", "nic")] == [8, 8]


def test_cluster_graph_routes_each_gpu_through_its_own_nic():
    g = build_cluster(DB.items["dgx-h100"], DB, 2)
    gpus = devices(g)
    assert gpus == [f"n{k}/gpu{i}" for k in range(2) for i in range(8)]
    # GPU 3 of node 0 to GPU 5 of node 1: its own NIC (rail), the fabric, the destination's own NIC.
    ring = ring_collective(g, [["n0/gpu3", "n1/gpu5"]])
    assert ring.bandwidth_bytes_per_s == NIC_BYTES_PER_S
    assert g["n0/nic3"][FABRIC]["link"] == "infiniband-ndr-400g"
    # One node is the system's own graph (8 gpu, 1 nvswitch, 2 cpu, 2 dram, 8 nvme, 8 nic = 29 nodes);
    # two are two prefixed copies and the fabric switch: 2 x 29 + 1.
    one = build_cluster(DB.items["dgx-h100"], DB, 1)
    assert sorted(one) == sorted(build_graph(DB.items["dgx-h100"], DB)) and len(one) == 29
    assert len(g) == 2 * 29 + 1


def test_ep16_alltoall_over_two_nodes_is_the_nic_over_the_crossing_fraction():
    # EP16 = 2 nodes x 8 GPUs. Each GPU sends M bytes to each of the 15 others: 7 over its NVLink
    # (7 flows on gpu->nvswitch, 7 M / 450e9 s) and 8 to the other node, all through its own NIC
    # (8 flows on nic->fabric, 8 M / 50e9 s, the most loaded link). In that time it sends 15 M, so
    # bandwidth per rank = 15 M / (8 M / 50e9) = 50e9 / (8/15) = 93.75e9 B/s: the NIC bandwidth
    # over the fraction of a rank's messages that cross the node boundary (8 of 15).
    t = resolve_target(DB, "dgx-h100", nodes=2)
    assert t.n_devices == 16 and t.nodes == 2 and t.devices_per_node == 8
    laid = for_layout(t, tp=1, ep=16)
    assert laid.alltoall_bandwidth_bytes_per_s == pytest.approx(NIC_BYTES_PER_S * 15 / 8, rel=1e-12)
    assert "infiniband-ndr-400g" in laid.alltoall_bottleneck and "shared by 8" in laid.alltoall_bottleneck
    # Nine nodes (EP72): 64 of a rank's 71 messages cross: 50e9 x 71 / 64.
    g9 = build_cluster(DB.items["dgx-h100"], DB, 9)
    assert alltoall_collective(g9, devices(g9)).bandwidth_bytes_per_s == pytest.approx(50e9 * 71 / 64, rel=1e-12)
    # Within one node (EP8): 7 flows on each 450e9 NVLink, 7 messages sent: 450e9.
    assert for_layout(resolve_target(DB, "dgx-h100"), 1, 8).alltoall_bandwidth_bytes_per_s == NVLINK_BYTES_PER_S


def test_ring_allreduce_spanning_nodes_is_bound_by_the_nic():
    # TP16 over 2 nodes: ring n0/gpu0..7, n1/gpu0..7. Two hops cross nodes (n0/gpu7 -> n1/gpu0 and back),
    # each over one NIC at 50e9; the others run on NVLink at 450e9. The ring runs at its slowest hop: 50e9.
    t = resolve_target(DB, "dgx-h100", nodes=2)
    tp16 = for_layout(t, tp=16, ep=1)
    assert tp16.ring_bandwidth_bytes_per_s == NIC_BYTES_PER_S
    assert "fabric (infiniband-ndr-400g)" in tp16.ring_bottleneck
    # TP8 x DP2 (the default): one ring per node, both at once, never leaving the NVSwitch: 450e9.
    tp8 = for_layout(t, tp=8, ep=1)
    assert tp8.ring_bandwidth_bytes_per_s == NVLINK_BYTES_PER_S
    assert tp8.alltoall_bandwidth_bytes_per_s == math.inf  # no EP: no all-to-all priced


def test_default_layout_keeps_tp_inside_a_node():
    rep = predict(Query(model="mixtral", hardware="dgx-h100", nodes=2, batch=32), DB)
    sc = rep["scenario"]
    assert (sc["devices"], sc["nodes"], sc["devices_per_node"], sc["tp"], sc["dp"]) == (16, 2, 8, 8, 2)
    assert rep["collectives"]["tp_allreduce"]["ring_bandwidth_bytes_per_s"] == NVLINK_BYTES_PER_S
    # --devices counts per node: 4 of each node's 8 GPUs, 8 in all; the cloud price is 8 GPUs x the H100's per-GPU
    # price (hardware_db/accelerators/h100-sxm5-80gb.yaml: 3.29 USD/h, host share included).
    rep = predict(Query(model="mixtral", hardware="dgx-h100", nodes=2, devices=4, batch=32), DB)
    assert (rep["scenario"]["devices"], rep["scenario"]["tp"], rep["scenario"]["dp"]) == (8, 4, 2)
    assert rep["cost"]["usd_per_h"] == pytest.approx(8 * DB.items["h100-sxm5-80gb"].price.cloud_usd_per_h.value)


def _ep_case(nodes: int, ep: int, batch: int) -> dict:
    return predict(Query(model="qwen3-30b", hardware="dgx-h100", nodes=nodes, tp=1, ep=ep, batch=batch,
                         routing="uniform", engine="roofline"), DB)  # the whole prefill in one step


def test_ep16_across_nodes_spends_longer_per_token_in_all_to_all_than_ep8_in_a_node():
    # Same load per device: TP1, so every GPU is its own attention group with 8 sequences (64 on 8 GPUs,
    # 128 on 16). The all-to-all bytes per device are 2 x (T / n) x k x h x 2 B x (ep - 1)/ep x MoE layers
    # (capsim.sim.ops): the same except (ep - 1)/ep, 15/16 against 7/8, a ratio of 15/14. They move at
    # 93.75e9 B/s over two nodes and 450e9 B/s in one; the roofline profile adds no software latency and no
    # overlap, so time = bytes / bandwidth + 2 calls (dispatch, combine) x 48 MoE layers x the longest route's
    # link latency (NCCL's per-step latencies, hardware_db/sources nccl-tuning): GPU -> NVSwitch -> GPU
    # 2 x 0.3 us = 0.6 us in a node; GPU -> NIC -> fabric -> NIC -> GPU 2 x 0.5 + 2 x 0.85 = 2.7 us across.
    one, two = _ep_case(1, 8, 64), _ep_case(2, 16, 128)
    assert engines.load("roofline").collective_latency_s == 0 and engines.load("roofline").transfer_overlap == 0
    assert one["collectives"]["ep_alltoall"]["link_latency_per_call_s"] == pytest.approx(0.6e-6, rel=1e-12)
    assert two["collectives"]["ep_alltoall"]["link_latency_per_call_s"] == pytest.approx(2.7e-6, rel=1e-12)
    from capsim.sim.experts import busiest_rank

    for phase, tokens in (("decode", 1), ("prefill", 512)):
        a, b = (_alltoall(r["phases"][phase]) for r in (one, two))
        # the busiest rank's load scales the bytes (uniform routing: capsim.sim.experts.busiest_rank of the step's
        # 64 or 128 sequences x tokens over Qwen3-30B's 128 experts, top-8, on 8 or 16 ranks)
        load_a, load_b = (float(busiest_rank(128, 8, n * tokens, ep)[1]) for n, ep in ((64, 8), (128, 16)))
        assert load_b > load_a > 1.0
        assert b["bytes"] == pytest.approx(a["bytes"] * 15 / 14 * load_b / load_a, rel=1e-12)
        assert a["time_s"] == pytest.approx(a["bytes"] / NVLINK_BYTES_PER_S + 2 * 48 * 0.6e-6, rel=1e-12)
        assert b["time_s"] == pytest.approx(b["bytes"] / (NIC_BYTES_PER_S * 15 / 8) + 2 * 48 * 2.7e-6, rel=1e-12)
        assert b["time_s"] > 4 * a["time_s"]
    assert two["collectives"]["ep_alltoall"]["bandwidth_bytes_per_s"] == pytest.approx(93.75e9, rel=1e-12)
    assert one["collectives"]["ep_alltoall"]["bandwidth_bytes_per_s"] == NVLINK_BYTES_PER_S


def test_experts_split_over_every_rank_of_every_node():
    # EP16 holds 128 / 16 = 8 routed experts per GPU, EP8 holds 16; everything else is replicated
    # (TP1), so the weights per device differ by exactly one sixteenth of the routed-expert bytes.
    one, two = _ep_case(1, 8, 64), _ep_case(2, 16, 128)
    from capsim.model.catalogue import load_spec
    from capsim.precision import get
    from capsim.sim.shape import shape_of

    routed = weight_bytes(shape_of(load_spec("qwen3-30b")[0], get("bf16")))["routed_experts"]
    w1, w2 = (r["memory_bytes"]["device"]["weights"] for r in (one, two))
    assert w1 - w2 == pytest.approx(routed / 16, rel=1e-9)


def test_pipeline_stages_on_separate_nodes_hop_over_the_nic():
    # PP2 over 2 nodes: each stage is one node (TP8). A decode step is the whole model at micro-batch
    # 16 on one stage group plus one hop of 16 tokens' hidden states (4096 x 2 bytes) from n0/gpu7 to
    # n1/gpu0 over the NICs at 50e9 B/s. The same model at batch 16 on one node is the stage group's time.
    pp = predict(Query(model="mixtral", hardware="dgx-h100", nodes=2, pp=2, batch=32), DB)
    base = predict(Query(model="mixtral", hardware="dgx-h100", batch=16), DB)
    assert pp["collectives"]["pp_hop"]["bandwidth_bytes_per_s"] == NIC_BYTES_PER_S
    assert pp["tpot_s"] == pytest.approx(base["tpot_s"] + 16 * 4096 * 2 / NIC_BYTES_PER_S, rel=1e-12)


# ------------------------------------------------------------------ toy pod with link latencies

TOY_POD = """\
# 2 toy GPUs on one CPU (PCIe 32 GB/s, 1 us each), one 10 GB/s, 5 us scale-out NIC per GPU.
id: toy-pod
kind: system
name: Toy pod
vendor: Test
composition_source: toy-spec
components:
  - {name: gpu, role: accelerator, item: toy-gpu, count: 2}
  - {name: cpu, role: cpu, item: toy-cpu, count: 1}
  - {name: nic, role: nic, item: toy-ib, count: 2}
connections:
  - {a: gpu, b: cpu, link: toy-pcie}
  - {a: nic, b: cpu, link: toy-pcie}
scale_out_link: toy-ib
"""
TOY_IB = """\
id: toy-ib
kind: link
name: Toy scale-out link
vendor: Test
family: infiniband
bandwidth_per_direction_bytes_per_s: {value: 10.0e9, as_published: "10 GB/s", source: toy-spec, kind: vendor-spec}
latency_s: {value: 5.0e-6, as_published: "5 us", source: toy-spec, kind: vendor-spec}
"""


@pytest.fixture(scope="module")
def toy_db(tmp_path_factory):
    root = tmp_path_factory.mktemp("pod_db")
    (root / "systems").mkdir()
    (root / "links").mkdir()
    (root / "systems" / "toy-pod.yaml").write_text(TOY_POD)
    (root / "links" / "toy-ib.yaml").write_text(TOY_IB)
    db, problems = hwdb.check(hwdb.BUILTIN_DB, TOY, root)
    assert [p for p in problems if "toy" in p.file or "pod_db" in p.file] == []
    return db


def test_toy_pod_collectives_and_latencies(toy_db):
    # 2 nodes x 2 GPUs. Ring n0/gpu0 -> n0/gpu1 -> n1/gpu0 -> n1/gpu1 -> n0/gpu0: the in-node hops go
    # through the CPU (2 PCIe hops, 32 GB/s, 2 us); the crossing hops go GPU -> own NIC (PCIe 1 us) ->
    # fabric (5 us) -> NIC (5 us) -> GPU (PCIe 1 us): 10 GB/s and 12 us. Ring: 10e9 B/s, 12 us per step.
    t = resolve_target(toy_db, "toy-pod", nodes=2)
    ring = for_layout(t, tp=4, ep=1)
    assert ring.ring_bandwidth_bytes_per_s == 10e9
    assert ring.ring_latency_s == pytest.approx(12e-6, rel=1e-12)
    # All-to-all over the 4: each GPU sends 2 messages over its own NIC (nic->fabric load 2: 2 M / 10e9 s)
    # and 1 through the CPU (load 1 on 32e9); 3 messages in 2 M / 10e9 s: 15e9 B/s; longest route 12 us.
    a2a = for_layout(t, tp=1, ep=4)
    assert a2a.alltoall_bandwidth_bytes_per_s == pytest.approx(15e9, rel=1e-12)
    assert a2a.alltoall_latency_s == pytest.approx(12e-6, rel=1e-12)


def _alltoall(phase: dict) -> dict:
    """The EP all-to-all of a phase: its dispatch and combine operators together (one call each per MoE layer)."""
    d, c = phase["operators"]["ep_dispatch"], phase["operators"]["ep_combine"]
    assert d["calls"] == c["calls"]
    return {"bytes": d["bytes"] + c["bytes"], "time_s": d["time_s"] + c["time_s"], "calls": d["calls"] + c["calls"]}


def test_link_latency_is_added_per_collective_call(toy_db):
    # OLMoE (16 layers, all MoE) on the toy pod, TP4 over 2 nodes: 2 all-reduces per layer, each a ring of
    # 2 x (4 - 1) = 6 steps waiting 12 us on the slowest hop: 72 us per call, 32 calls per step.
    # The roofline profile has no software latency and no overlap, so the exposed all-reduce time is
    # bytes / 10e9 + 32 x 72 us.
    rep = predict(Query(model="olmoe", hardware="toy-pod", nodes=2, tp=4, batch=4, check_memory=False), toy_db)
    c = rep["collectives"]["tp_allreduce"]
    assert c["link_latency_per_call_s"] == pytest.approx(72e-6, rel=1e-12)
    op = rep["phases"]["decode"]["operators"]["tp_allreduce"]
    assert op["time_s"] == pytest.approx(op["bytes"] / 10e9 + ALLREDUCES_PER_LAYER * 16 * 72e-6, rel=1e-12)
    # EP4 with TP1: 2 all-to-alls (dispatch, combine) per MoE layer, 12 us each: 32 x 12 us on top.
    rep = predict(Query(model="olmoe", hardware="toy-pod", nodes=2, tp=1, ep=4, batch=4, check_memory=False),
                  toy_db)
    op = _alltoall(rep["phases"]["decode"])
    assert rep["collectives"]["ep_alltoall"]["link_latency_per_call_s"] == pytest.approx(12e-6, rel=1e-12)
    assert op["time_s"] == pytest.approx(op["bytes"] / 15e9 + 2 * 16 * 12e-6, rel=1e-12)


# ------------------------------------------------------------------------------------- CLI

def _one_line_error(result, *needles) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr
    assert "Traceback" not in result.output + err
    assert err.startswith("capsim: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize("hardware, nodes, needles", [
    ("dgx-h100", "0", ["--nodes 0", "expected an integer >= 1"]),
    ("h100-sxm5-80gb", "2", ["--nodes 2", "bare accelerator", "dgx-h100"]),
    ("epyc-9654", "2", ["--nodes 2", "bare cpu"]),
    ("workstation-rtx-4090", "2", ["--nodes 2", "has no scale_out_link"]),
])
def test_bad_nodes_are_one_line_errors(hardware, nodes, needles):
    r = CliRunner().invoke(cli, ["predict", "-m", "mixtral", "-H", hardware, "--nodes", nodes])
    _one_line_error(r, *needles)


def test_devices_per_node_cannot_exceed_a_node_and_offload_stays_on_one_node():
    r = CliRunner().invoke(cli, ["predict", "-m", "mixtral", "-H", "dgx-h100", "--nodes", "2", "--devices", "9"])
    _one_line_error(r, "--devices 9", "8 accelerators per node")
    r = CliRunner().invoke(cli, ["predict", "-m", "mixtral", "-H", "dgx-h100", "--nodes", "2", "--offload", "cpu"])
    _one_line_error(r, "--offload", "one node")


def test_json_and_text_report_nodes_and_collective_bandwidths():
    args = ["predict", "-m", "qwen3-30b", "-H", "dgx-h100", "--nodes", "2", "--tp", "1", "--ep", "16",
            "--batch", "128"]
    r = CliRunner().invoke(cli, [*args, "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout, parse_constant=lambda name: pytest.fail(f"JSON holds {name}"))
    assert rep["scenario"]["nodes"] == 2 and rep["scenario"]["devices"] == 16
    c = rep["collectives"]
    assert c["nodes"] == 2 and c["tp_allreduce"]["ring_bandwidth_bytes_per_s"] is None  # TP1: no ring
    assert c["ep_alltoall"]["bandwidth_bytes_per_s"] == pytest.approx(93.75e9, rel=1e-12)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "16x h100-sxm5-80gb (2 nodes of dgx-h100, TP1 EP16 DP16)" in r.stdout
    assert "collectives over 2 nodes: EP all-to-all 93.75 GB/s" in r.stdout


def test_no_fit_advice_names_nodes_and_the_advice_fits():
    # DeepSeek-V3 fp8 weights (~684 GB incl. embeddings; 84.3 GB per device at TP8) do not fit one DGX A100
    # (8 x 40 GB). Split 32 ways (tensor parallel) they take ~21 GB: the advice is 4 nodes at TP32, and
    # with 4 nodes already given, just the layout.
    args = ["predict", "-m", "deepseek-v3", "-H", "dgx-a100", "--batch", "8"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "--nodes 4 --tp 32 (the system has 8 devices per node)" in r.output
    r = CliRunner().invoke(cli, [*args, "--nodes", "4"])
    assert r.exit_code == 2 and "it would fit with --tp 32," in r.output
    r = CliRunner().invoke(cli, [*args, "--nodes", "4", "--tp", "32"])
    assert r.exit_code == 0, r.output
