"""Trace replay: exact answers on hand-made traces, and the spread it adds to predictions."""

import numpy as np
import pytest

from capsim.errors import CapsimError
from capsim.hardware.db import load
from capsim.predict import Query, predict
from capsim.traces.format import open_trace, write_trace
from capsim.traces.replay import decode_routing, prefill_routing

LAYERS, EXPERTS, TOP_K = 32, 8, 2  # Mixtral-8x7B's routing shape, so the traces replay on `mixtral`
PROMPT, DECODE = 4, 6


def _trace(path, ids_of_sequence, sequences):
    """Each sequence's tokens all choose the experts ids_of_sequence(s) in every layer."""
    per_seq = PROMPT + DECODE
    n = sequences * per_seq
    seq = np.repeat(np.arange(sequences), per_seq)
    pos = np.tile(np.arange(per_seq), sequences)
    ids = np.zeros((n, LAYERS, TOP_K), dtype=int)
    for s in range(sequences):
        ids[seq == s] = ids_of_sequence(s)
    arrays = {"expert_ids": ids, "weights": np.full(ids.shape, 0.5), "sequence": seq, "position": pos,
              "phase": (pos >= PROMPT).astype(int)}
    meta = {"model_id": "hand-made", "num_experts": EXPERTS, "top_k": TOP_K, "synthetic": True,
            "synthetic_spec": {"kind": "hand-made test trace"}}
    return open_trace(write_trace(path, arrays, meta), verify=True)


@pytest.fixture
def same(tmp_path):
    return _trace(tmp_path / "same", lambda s: [0, 1], sequences=16)  # every token: experts 0 and 1


@pytest.fixture
def disjoint(tmp_path):
    return _trace(tmp_path / "disjoint", lambda s: [2 * s, 2 * s + 1], sequences=4)  # sequence s: 2s, 2s+1


@pytest.mark.parametrize("batch", [1, 2, 4, 8, 16])
def test_all_tokens_to_the_same_experts_read_top_k_per_layer(same, batch):
    stats, _ = decode_routing(same, batch, samples=20)
    assert np.all(stats["activated"] == TOP_K)  # the union over any batch is {0, 1}


@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_disjoint_experts_read_k_times_batch(disjoint, batch):
    stats, _ = decode_routing(disjoint, batch, samples=20)
    assert np.all(stats["activated"] == TOP_K * batch)  # B distinct sequences, disjoint pairs: k x B


def test_prefill_union_over_prompts(disjoint):
    stats, _ = prefill_routing(disjoint, 3, samples=10)
    assert np.all(stats["activated"] == 6) and len(stats["activated"]) == 10


def test_expert_parallel_rank_load(same, disjoint):
    # EP2: experts 0-3 on rank 0, 4-7 on rank 1. All assignments on rank 0: the slowest rank carries
    # twice the mean, and holds the 2 activated experts.
    stats, _ = decode_routing(same, 4, ep=2, samples=10)
    assert np.all(stats["rank_load"] == 2.0) and np.all(stats["rank_activated"] == 2)
    # All 4 disjoint sequences: 8 assignments, 4 per rank: balanced; each rank holds 4 activated experts.
    stats, _ = decode_routing(disjoint, 4, ep=2, samples=10)
    assert np.all(stats["rank_load"] == 1.0) and np.all(stats["rank_activated"] == 4)


def test_batch_larger_than_the_trace_draws_distinct_tokens_and_says_so(disjoint):
    stats, notes = decode_routing(disjoint, 8, samples=10)
    assert notes and "sequences < batch" in notes[0]
    assert np.all(stats["activated"] <= EXPERTS)


def test_predict_with_trace_replays_and_reports_spread(same, disjoint):
    db = load()
    q = dict(model="mixtral", hardware="dgx-h100", devices=2, batch=4, trace_samples=30)
    uniform = predict(Query(**q, routing="uniform"), db)
    narrow = predict(Query(**q, trace=str(same.path)), db)
    wide = predict(Query(**q, trace=str(disjoint.path)), db)
    assert narrow["activated_experts_per_layer"] == 2.0 and wide["activated_experts_per_layer"] == 8.0
    # Uniform routing at batch 4: 8 (1 - (6/8)^4) = 5.47 experts, between the two traces; so is TPOT.
    assert uniform["activated_experts_per_layer"] == pytest.approx(8 * (1 - 0.75**4))
    assert narrow["tpot_s"] < uniform["tpot_s"] < wide["tpot_s"]
    assert set(narrow["spread"]["tpot_s"]) == {"p10", "p50", "p90"}
    assert narrow["scenario"]["trace_synthetic"] is True and narrow["scenario"]["routing"].startswith("trace")
    assert uniform["spread"] is None


def test_trace_of_another_shape_is_refused(tmp_path):
    ids = np.zeros((4, 2, 1), dtype=int)
    arrays = {"expert_ids": ids, "weights": np.ones(ids.shape), "sequence": [0, 0, 1, 1], "position": [0, 1, 0, 1],
              "phase": [0, 1, 0, 1]}
    path = write_trace(tmp_path / "top1", arrays, {"model_id": "x", "num_experts": 4, "top_k": 1, "synthetic": True})
    with pytest.raises(CapsimError, match="4 experts top-1"):
        predict(Query(model="mixtral", hardware="dgx-h100", trace=str(path)), load())
    with pytest.raises(CapsimError, match="not a capsim trace"):
        predict(Query(model="mixtral", hardware="dgx-h100", trace=str(tmp_path)), load())


# ------------------------------------------------------------------------------- union, not B x k, in S-MBU

def test_s_mbu_counts_the_union_of_experts(same, disjoint):
    db = load()
    q = dict(model="mixtral", hardware="dgx-h100", devices=2, batch=4, trace_samples=20)
    narrow = predict(Query(**q, trace=str(same.path)), db)["phases"]["decode"]
    wide = predict(Query(**q, trace=str(disjoint.path)), db)["phases"]["decode"]
    # Both batches make 4 x 2 = 8 token-expert assignments per layer; only the union is read. Mixtral:
    # one expert in all 32 layers is 11,274,289,152 bytes in bf16, split over TP2: the 6 extra experts of
    # the disjoint batch are 6 x 11,274,289,152 / 2 = 33,822,867,456 more bytes per device.
    assert wide["bytes_per_device"] - narrow["bytes_per_device"] == pytest.approx(33_822_867_456, rel=1e-9)
    assert wide["flops_per_device"] == pytest.approx(narrow["flops_per_device"], rel=1e-12)  # same assignments
    for ph in (narrow, wide):  # S-MBU is exactly those bytes over the step at peak bandwidth (3.35 TB/s)
        assert ph["s_mbu"] == pytest.approx(ph["bytes_per_device"] / (ph["step_s"] * 3.35e12), rel=1e-12)


# ------------------------------------------------------------------------------- bad input through the CLI

def _cli(*args):
    from click.testing import CliRunner

    from capsim.cli.main import cli

    return CliRunner().invoke(cli, list(args))


def _one_line(result, *needles):
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("capsim: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    for n in needles:
        assert n in result.stderr, (n, result.stderr)


def test_trace_from_another_model_is_refused(tmp_path):
    import json
    from pathlib import Path

    model = Path(__file__).resolve().parents[1] / "traces" / "models" / "tiny-olmoe-stdlib" / "config.json"
    other = json.loads(model.read_text())
    other["hidden_size"] = 256  # same experts and top-k, another model
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(other))
    trace = str(model.parents[2] / "tiny-olmoe-stdlib")
    _one_line(_cli("predict", "-m", str(cfg), "-H", "rtx-4090", "--trace", trace), "config hash", "--trace-any-model")
    ok = _cli("predict", "-m", str(cfg), "-H", "rtx-4090", "--trace", trace, "--trace-any-model", "--json")
    assert ok.exit_code == 0, ok.output


def test_truncated_and_corrupt_traces_are_one_line_errors(same, tmp_path):
    import shutil

    truncated = tmp_path / "truncated"
    shutil.copytree(same.path, truncated)
    data = (truncated / "expert_ids.npy").read_bytes()
    (truncated / "expert_ids.npy").write_bytes(data[: len(data) // 2])
    _one_line(_cli("predict", "-m", "mixtral", "-H", "dgx-h100", "--trace", str(truncated)), "expert_ids.npy")

    corrupt = tmp_path / "corrupt"
    shutil.copytree(same.path, corrupt)
    raw = bytearray((corrupt / "expert_ids.npy").read_bytes())
    raw[-1] ^= 0x01  # one routed expert id changed, same size
    (corrupt / "expert_ids.npy").write_bytes(bytes(raw))
    _one_line(_cli("predict", "-m", "mixtral", "-H", "dgx-h100", "--trace", str(corrupt)), "content hash")
    _one_line(_cli("trace", "stats", str(truncated)), "expert_ids.npy")
    _one_line(_cli("predict", "-m", "mixtral", "-H", "dgx-h100", "--trace", str(tmp_path / "none")), "not a capsim trace")


def test_collect_with_missing_prompts_file_overwrites_nothing(tmp_path, same):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(same.path, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    from pathlib import Path

    model = Path(__file__).resolve().parents[1] / "traces" / "models" / "tiny-olmoe-stdlib"
    _one_line(_cli("trace", "collect", "--model", str(model), "--prompts",
                   str(tmp_path / "missing.txt"), "--max-new-tokens", "2", "--batch-size", "1", "--out", str(out)),
              "missing.txt")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_prefill_replay_draws_enough_prompts_for_the_prompt_tokens(tmp_path):
    from capsim.traces import replay
    from capsim.traces.format import open_trace, write_trace
    from capsim.traces.synthetic import synthetic_trace

    arrays, meta = synthetic_trace("uniform", num_experts=16, top_k=2, moe_layers=2, sequences=64, prompt_len=96,
                                   decode_len=8)
    trace = open_trace(write_trace(tmp_path / "t", arrays, meta))
    # every traced prompt has 96 tokens: 4 prompts of 512 tokens = 2,048 tokens = ceil(2048 / 96) = 22 prompts
    assert replay.prompts_for(trace, 4, 512)[0] == 22
    assert replay.prompts_for(trace, 4, 96) == (4, [])  # the traced length itself: the batch as it is
    assert replay.prompts_for(trace, 4, 10)[0] == 4  # never fewer prompts than sequences
    assert replay.prompts_for(trace, 4, None) == (4, [])
    # 22 uniform prompts route 2 x 2,112 = 4,224 assignments over 16 experts: all 16 activated
    stats, notes = replay.prefill_routing(trace, 4, samples=4, input_len=512)
    assert "draws 22 traced prompts" in notes[0]
    assert np.all(stats["activated"] == 16)
