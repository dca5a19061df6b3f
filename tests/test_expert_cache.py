"""Expert caches (LRU, LFU, static hot set) on hand-made step sequences, counted by hand; decode steps; CLI."""

import json

import numpy as np
import pytest

from capsim.errors import CapsimError
from capsim.offload.cache import hit_rate_curve, profile_hot_set, simulate
from capsim.offload.steps import decode_steps
from capsim.traces.format import open_trace, write_trace


def _steps(sets, experts, layers=1):
    """Bool (steps, layers, experts): step t touches the experts in sets[t] in every layer."""
    out = np.zeros((len(sets), layers, experts), dtype=bool)
    for t, s in enumerate(sets):
        out[t, :, list(s)] = True
    return out


CYCLE = _steps([{0, 1}, {2}, {0}, {1}, {2}, {0}], experts=4)  # 7 requests


def test_lru_by_hand():
    # capacity 2; cache after each step (expert@last use), evict least recent, ties: lowest id first
    # t0 {0,1}: miss 0, miss 1               -> {0@0, 1@0}
    # t1 {2}:   miss; 0 and 1 tie at @0, evict the lower id 0 -> {1@0, 2@1}
    # t2 {0}:   miss; evict 1 (@0)            -> {2@1, 0@2}
    # t3 {1}:   miss; evict 2 (@1)            -> {0@2, 1@3}
    # t4 {2}:   miss; evict 0 (@2)            -> {1@3, 2@4}
    # t5 {0}:   miss; evict 1 (@3)            -> {2@4, 0@5}
    st = simulate(CYCLE, 2, "lru")
    assert st.requests.tolist() == [7] and st.hits.tolist() == [0] and st.misses.tolist() == [7]
    assert st.hit_rate == 0.0 and st.policy == "lru" and st.capacity == 2


def test_lfu_by_hand():
    # capacity 2; (expert: frequency@last use), evict lowest frequency, then least recent, then lowest id
    # t0 {0,1}: 2 misses                      -> {0:1@0, 1:1@0}
    # t1 {2}:   miss; 0, 1 tie on 1@0: evict 0 -> {1:1@0, 2:1@1}
    # t2 {0}:   miss (0 -> 2@2); evict 1 (1@0 older than 2's 1@1)  -> {2:1@1, 0:2@2}
    # t3 {1}:   miss (1 -> 2@3); evict 2 (frequency 1)             -> {0:2@2, 1:2@3}
    # t4 {2}:   miss (2 -> 2@4); 0 and 1 both 2, evict 0 (older)   -> {1:2@3, 2:2@4}
    # t5 {0}:   miss (0 -> 3@5); evict 1 (2@3 older than 2's 2@4)  -> {2, 0}
    st = simulate(CYCLE, 2, "lfu")
    assert st.hits.tolist() == [0] and st.misses.tolist() == [7]


def test_static_by_hand():
    # touches over all steps: expert 0 x3, 1 x2, 2 x2, 3 x0 -> hot set of 2: {0, 1} (1 beats 2 on the lower id)
    # hits: the 3 requests of 0 and the 2 of 1 = 5 of 7
    assert profile_hot_set(CYCLE, 2)[0].tolist() == [True, True, False, False]
    st = simulate(CYCLE, 2, "static")
    assert st.hits.tolist() == [5] and st.misses.tolist() == [2] and st.hit_rate == pytest.approx(5 / 7)
    # a given hot set {2, 3}: only the 2 requests of expert 2 hit
    st = simulate(CYCLE, 2, "static", hot_set=np.array([[False, False, True, True]]))
    assert st.hits.tolist() == [2]


def test_lfu_beats_lru_on_a_scan():
    # capacity 2, 3 experts: a hot expert 0, a one-off scan of 1 and 2, then 0 again
    # LRU: t0 miss 0; t1 hit; t2 miss 1 -> {0, 1}; t3 miss 2, evict 0 (@1 older than 1@2); t4 miss 0 -> 1 hit
    # LFU: t0 miss 0; t1 hit (0: 2); t2 miss 1 (1: 1); t3 miss 2, evict 1 (frequency 1 < 2); t4 hit 0 -> 2 hits
    scan = _steps([{0}, {0}, {1}, {2}, {0}], experts=3)
    assert simulate(scan, 2, "lru").hits.tolist() == [1]
    assert simulate(scan, 2, "lfu").hits.tolist() == [2]


def test_lru_beats_lfu_after_a_phase_change():
    # capacity 2, 3 experts: expert 0 hot early (3 steps), then 1 and 2 alternate 3 times each
    # LRU: hits at t1, t2; t3 miss 1; t4 miss 2 evicts 0; t5..t8 all hit -> 6 hits
    # LFU: hits at t1, t2 (0 reaches frequency 3); t3 miss 1; then 1 and 2 evict each other since
    #      0 keeps frequency 3: t4 miss 2 (evict 1: 1@3), t5 miss 1 (evict 2: 1@4), t6 miss 2 (evict 1: 2@5),
    #      t7 miss 1 (evict 2: 2@6); t8 miss 2: 0 (3@2) and 1 (3@7) tie, evict the older 0 -> 2 hits
    phase = _steps([{0}, {0}, {0}, {1}, {2}, {1}, {2}, {1}, {2}], experts=3)
    assert simulate(phase, 2, "lru").hits.tolist() == [6]
    assert simulate(phase, 2, "lfu").hits.tolist() == [2]


def test_capacity_zero_never_hits():
    touched = np.random.default_rng(0).random((50, 3, 16)) < 0.3
    for policy in ("lru", "lfu", "static"):
        st = simulate(touched, 0, policy)
        assert st.hits.sum() == 0 and np.array_equal(st.misses, touched.sum(axis=(0, 2)))


def test_full_capacity_misses_only_on_first_touch():
    touched = np.random.default_rng(1).random((40, 3, 16)) < 0.2
    distinct = touched.any(axis=0).sum(axis=1)  # cold misses: each expert's first touch
    for policy in ("lru", "lfu"):
        st = simulate(touched, 16, policy)
        assert np.array_equal(st.misses, distinct)
        assert np.array_equal(st.hits, touched.sum(axis=(0, 2)) - distinct)
    assert simulate(touched, 16, "static").misses.sum() == 0  # every touched expert is in the hot set


def test_warmup_steps_fill_the_cache_but_are_not_counted():
    # capacity 1, steps {0},{0},{0}: t0 cold miss, t1 hit, t2 hit
    warm = _steps([{0}, {0}, {0}], experts=2)
    st = simulate(warm, 1, "lru")
    assert st.requests.tolist() == [3] and st.hits.tolist() == [2]
    st = simulate(warm, 1, "lru", warmup_steps=1)  # t0 loads 0 uncounted; t1, t2 counted: 2 of 2 hit
    assert st.requests.tolist() == [2] and st.hits.tolist() == [2] and st.hit_rate == 1.0


def test_step_touching_more_experts_than_the_capacity():
    # capacity 2, steps {0,1,2},{0,1,2},{3},{2}; misses of a full step are cached in keep order (lowest id
    # streamed first)
    # t0: 3 misses; cache keeps 1 and 2, streams 0                     -> {1@0, 2@0}
    # t1: hits 1, 2 (kept: a step's hits are never evicted for its misses); 0 misses and is streamed again
    # t2 {3}: miss; 1 and 2 tie @1, evict the lower id 1              -> {2@1, 3@2}
    # t3 {2}: hit.  Total: 8 requests, 3 hits, 5 misses
    over = _steps([{0, 1, 2}, {0, 1, 2}, {3}, {2}], experts=4)
    for policy in ("lru", "lfu"):  # LFU: 1 and 2 tie on frequency 2 @1 at t2, the same choice
        st = simulate(over, 2, policy)
        assert (st.requests.tolist(), st.hits.tolist(), st.misses.tolist()) == ([8], [3], [5])


def test_layers_are_independent_and_the_curve_rises():
    touched = np.concatenate([CYCLE, _steps([{3}] * 6, experts=4)], axis=1)  # layer 1 always expert 3
    st = simulate(touched, 2, "lru")
    assert st.hits.tolist() == [0, 5] and st.hit_rate == pytest.approx(5 / 13)
    assert st.hit_rate_per_layer.tolist() == [0.0, pytest.approx(5 / 6)]
    curve = hit_rate_curve(touched, [0, 1, 2, 3, 4], "lru")
    assert curve[0] == 0 and np.all(np.diff(curve) >= 0)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(capacity=5, policy="lru"), "--capacity 5: expected 0..4"),
    (dict(capacity=-1, policy="lfu"), "--capacity -1"),
    (dict(capacity=2, policy="fifo"), "--policy fifo"),
    (dict(capacity=2, policy="lru", warmup_steps=6), "--warmup-steps 6"),
    (dict(capacity=2, policy="lru", warmup_steps=-1), "--warmup-steps -1"),
    (dict(capacity=1, policy="static", hot_set=np.array([[True, True, False, False]])), "hot_set"),
    (dict(capacity=1, policy="static", hot_set=np.ones((2, 4), dtype=bool)), "hot_set"),
])
def test_bad_inputs_name_the_argument(kwargs, needle):
    with pytest.raises(CapsimError, match=needle):
        simulate(CYCLE, **kwargs)


def test_bad_touched_array():
    with pytest.raises(CapsimError, match="touched"):
        simulate(CYCLE[:, 0], 1, "lru")
    with pytest.raises(CapsimError, match="touched"):
        simulate(CYCLE.astype(int), 1, "lru")


# ------------------------------------------------------------------------------- decode steps of a trace

E, LAYERS = 8, 2
A, B, C, D = 10, 5, 7, 3  # sequence ids in trace order (not sorted: the queue follows the trace)


def _trace(path):
    """Top-1 routing; layer 0 expert x, layer 1 expert (x + 1) % 8. Decode experts: A 0,1,2; B 3; C 4,5; D 6.

    Prefill tokens all choose expert 7 in layer 0 (and 0 in layer 1): never in a decode step.
    """
    tokens = [  # (sequence, position, phase, layer-0 expert) in the order the model ran them
        (A, 0, 0, 7), (B, 0, 0, 7), (A, 1, 1, 0), (B, 1, 1, 3), (C, 0, 1, 4), (A, 2, 1, 1),
        (C, 1, 1, 5), (A, 3, 1, 2), (D, 0, 0, 7), (D, 1, 1, 6),
    ]
    seq, pos, phase, x = (np.array(c) for c in zip(*tokens, strict=True))
    ids = np.stack([x, (x + 1) % E], axis=1)[:, :, None]
    arrays = {"expert_ids": ids, "weights": np.ones(ids.shape), "sequence": seq, "position": pos, "phase": phase}
    meta = {"model_id": "hand-made", "num_experts": E, "top_k": 1, "synthetic": True}
    return write_trace(path, arrays, meta)


def _sets(touched):
    return [[sorted(np.flatnonzero(layer).tolist()) for layer in step] for step in touched]


def test_decode_steps_compose_a_full_batch_in_trace_order(tmp_path):
    trace = open_trace(_trace(tmp_path / "t"))
    # batch 2: slot 0 runs A (3 decode tokens, steps 0-2); slot 1 runs B (1 token, step 0), then C (steps 1-2).
    # At step 3 both slots are free; D takes slot 0 but slot 1 has nothing left: 3 full steps, D dropped.
    touched = decode_steps(trace, 2)
    assert touched.shape == (3, LAYERS, E) and touched.dtype == bool
    assert _sets(touched) == [[[0, 3], [1, 4]], [[1, 4], [2, 5]], [[2, 5], [3, 6]]]
    assert _sets(decode_steps(trace, 2, steps=2)) == _sets(touched)[:2]
    # batch 1: the sequences one after another, A, B, C, D: 7 steps
    assert [s[0] for s in _sets(decode_steps(trace, 1))] == [[0], [1], [2], [3], [4], [5], [6]]
    with pytest.raises(CapsimError, match="--batch 5"):
        decode_steps(trace, 5)  # 4 sequences with decode tokens
    with pytest.raises(CapsimError, match="--steps"):
        decode_steps(trace, 1, max_bytes=10)  # 7 steps x 2 layers x 8 experts = 112 bytes


# ------------------------------------------------------------------------------- CLI

def _cli(*args):
    from click.testing import CliRunner

    from capsim.cli.main import cli

    return CliRunner().invoke(cli, ["trace", "cache", *map(str, args)])


def test_cli_json_and_plot(tmp_path):
    path = _trace(tmp_path / "t")
    plot = tmp_path / "plots" / "cache.png"
    r = _cli(path, "--batch", 2, "--capacity", "2,1", "--policy", "all", "--json", "--plot", plot)
    assert r.exit_code == 0, r.output + r.stderr
    s = json.loads(r.stdout)
    assert s["steps"] == 3 and s["batch"] == 2 and plot.is_file()
    got = {(x["policy"], x["capacity"]): x for x in s["results"]}
    assert sorted(got) == [(p, c) for p in ("lfu", "lru", "static") for c in (1, 2)]
    # every step touches 2 experts per layer, each expert once: lru and lfu never hit
    assert got["lru", 2]["requests_per_layer"] == [6, 6] and got["lfu", 2]["hit_rate"] == 0.0
    # static: the profile's ties go to the lower ids: layer 0 {0, 1} (steps 0 and 1 hit once each),
    # layer 1 {1, 2}: 2 of 6 per layer; capacity 1: {0} and {1}, 1 of 6
    assert got["static", 2]["hits_per_layer"] == [2, 2] and got["static", 2]["hit_rate"] == pytest.approx(1 / 3)
    assert got["static", 1]["hit_rate"] == pytest.approx(1 / 6)
    human = _cli(path, "--batch", 2, "--capacity", 2, "--policy", "static")
    assert human.exit_code == 0 and "0.333" in human.stdout


@pytest.mark.parametrize("args, needle", [
    (["--capacity", 9], "--capacity 9"),
    (["--capacity", "x"], "--capacity x"),
    (["--capacity", 2, "--policy", "fifo"], "--policy fifo"),
    (["--capacity", 2, "--batch", 5], "--batch 5"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, needle):
    path = _trace(tmp_path / "t")
    r = _cli(path, "--batch", 2, *args)
    assert r.exit_code == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.output
    missing = _cli(tmp_path / "none", "--batch", 1, "--capacity", 1)
    assert missing.exit_code == 2 and "not a capsim trace" in missing.stderr


def _reference(touched, capacity, lfu):
    """The documented rules in plain Python, one layer and one expert at a time (slow, obviously right)."""
    steps, layers, e = touched.shape
    hits = [0] * layers
    for layer in range(layers):
        cache, last, freq = set(), {}, dict.fromkeys(range(e), 0)
        for t in range(steps):
            now = set(np.flatnonzero(touched[t, layer]).tolist())
            hit = now & cache
            hits[layer] += len(hit)
            for x in now:
                last[x], freq[x] = t, freq[x] + 1

            keys = {x: (2 if x in hit else 1 if x in now else 0, freq[x] if lfu else 0, last[x], x)
                    for x in cache | now}
            cache = set(sorted(keys, key=keys.__getitem__, reverse=True)[:capacity])
    return hits


@pytest.mark.parametrize("seed", range(4))
def test_matches_a_plain_python_reference(seed):
    rng = np.random.default_rng(seed)
    touched = rng.random((60, 3, 10)) < rng.uniform(0.1, 0.5)
    for capacity in (0, 1, 3, 6, 10):
        for policy in ("lru", "lfu"):
            assert simulate(touched, capacity, policy).hits.tolist() == _reference(touched, capacity, policy == "lfu")
