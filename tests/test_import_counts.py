"""Importers of published routing counts (capsim.traces.import_counts) on tiny hand-made inputs laid out like
the real sources, and the committed fitted files (the source data is not in CI)."""

from __future__ import annotations

import math
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from capsim.errors import CapsimError
from capsim.traces import fitted
from capsim.traces import import_counts as ic

FITTED = Path(__file__).resolve().parents[1] / "traces" / "routing" / "fitted"
APACHE = "                                 Apache License\n                           Version 2.0, January 2004\n"


def _counter(d: dict[int, int]) -> Counter:
    return Counter({np.int64(e): n for e, n in d.items()})  # the real pickles key by numpy.int64


def _olmoe_repo(root: Path, model: str, domains: dict[str, list[dict[int, int]]]) -> Path:
    folder = root / ic.COUNTS_DIR.format(model=model)
    folder.mkdir(parents=True, exist_ok=True)
    (root / "LICENSE").write_text(APACHE)
    for name, layers in domains.items():
        (folder / f"{name}.pkl").write_bytes(pickle.dumps([_counter(x) for x in layers]))
    return root


def _question(counts: list[int]) -> np.ndarray:
    """(32, 8) float32 shares of one question whose every layer has these top-2 selection counts."""
    c = np.zeros(8)
    c[: len(counts)] = counts
    return np.tile(c / c.sum(), (32, 1)).astype(np.float32)


def _vis_repo(root: Path, subjects: dict[str, list[list[int]]]) -> Path:
    (root / ic.FRAC_DIR).mkdir(parents=True, exist_ok=True)
    (root / "LICENSE").write_text(APACHE)
    for name, questions in subjects.items():
        np.save(root / ic.FRAC_DIR / f"{name}.npy", np.stack([_question(q) for q in questions]))
    return root


def test_olmoe_counts_sum_domains_exactly(tmp_path):
    # Mixtral layout (E=8, top-2), layers 0, 7, 15. Domain a, layer 0: {0: 3, 1: 1} = 4 selections = 2 tokens;
    # domain b, layer 0: {1: 2, 2: 2} = 2 tokens. Summed: {0: 3, 1: 3, 2: 2} / 8 -> [0.375, 0.375, 0.25].
    a = [{0: 3, 1: 1}, {5: 4}, {6: 2, 7: 2}]
    b = [{1: 2, 2: 2}, {5: 4}, {7: 4}]
    root = _olmoe_repo(tmp_path / "allenai+OLMoE", "mistral", {"a": a, "b": b})
    m = ic.olmoe_counts(root, "mistral")
    assert (m.model_id, m.num_experts, m.top_k, m.moe_layers) == (ic.MIXTRAL_ID, 8, 2, 32)
    assert sorted(m.popularity) == [0, 7, 15]
    np.testing.assert_allclose(m.popularity[0], [0.375, 0.375, 0.25, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(m.popularity[7], [0, 0, 0, 0, 0, 1, 0, 0])  # 8 of 8 selections on expert 5
    np.testing.assert_allclose(m.popularity[15], [0, 0, 0, 0, 0, 0, 0.25, 0.75])  # {6: 2, 7: 6} / 8
    assert m.sequence_concentration is None
    assert m.meta["popularity_tokens"] == 4  # (4 + 4) selections / top-2
    # per-domain shares kept: domain a layer 0 = [3, 1] / 4 = [0.75, 0.25]
    assert m.meta["domains_used"]["a"]["popularity"]["0"][:2] == [0.75, 0.25]
    assert m.meta["domains_used"]["a"]["tokens"] == 2
    src = m.meta["sources"][0]
    assert (src["repository"], src["licence"]) == ("allenai/OLMoE", "Apache-2.0")
    assert src["path"] == "scripts/routing_output/mistral/expert_counts"


def test_olmoe_counts_skips_lfs_pointer_and_rejects_bad_pickles(tmp_path):
    root = _olmoe_repo(tmp_path / "allenai+OLMoE", "olmoe", {"a": [{0: 8}, {1: 8}, {2: 8}]})
    folder = root / ic.COUNTS_DIR.format(model="olmoe")
    (folder / "lfs.pkl").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    m = ic.olmoe_counts(root, "olmoe")
    assert list(m.meta["domains_used"]) == ["a"] and any("lfs.pkl" in c for c in m.meta["caveats"])
    assert m.popularity[0][0] == 1.0 and m.num_experts == 64 and m.top_k == 8 and m.moe_layers == 16
    (folder / "evil.pkl").write_bytes(pickle.dumps([Counter(), print]))  # builtins.print: not allowed
    with pytest.raises(CapsimError, match="evil.pkl"):
        ic.olmoe_counts(root, "olmoe")
    (folder / "evil.pkl").write_bytes(pickle.dumps([_counter({0: 8}), _counter({0: 16}), _counter({0: 8})]))
    with pytest.raises(CapsimError, match="selections"):  # layers disagree on the number of tokens
        ic.olmoe_counts(root, "olmoe")


def test_question_tokens_recovers_denominator(monkeypatch):
    # counts [3, 2, 1] of 2 n = 6 selections -> shares [1/2, 1/3, 1/6]; 2 n * 1/6 integral first at n = 3.
    frac = np.array([[[3 / 6, 2 / 6, 1 / 6]], [[0.5, 0.5, 0.0]]], dtype=np.float32)
    np.testing.assert_array_equal(ic.question_tokens(frac, 2), [3, 1])  # [1/2, 1/2]: n = 1 already fits
    monkeypatch.setattr(ic, "MAX_QUESTION_TOKENS", 5)
    with pytest.raises(CapsimError, match="question 0"):  # [1/7, 6/7] needs 2 n a multiple of 7: n = 7 > 5
        ic.question_tokens(np.array([[[1 / 7, 6 / 7]]], dtype=np.float32), 2)


def test_mixtral_frac_vecs_counts_and_concentration(tmp_path):
    # Question A: counts [5, 3] (n = 4 tokens, shares [5/8, 3/8]); question B: [0, 0, 5, 3] (n = 4), every layer.
    root = _vis_repo(tmp_path / "ajtejankar+mixtral-vis-moe", {"s1": [[5, 3]], "s2": [[0, 0, 5, 3]]})
    m = ic.mixtral_frac_vecs(root)
    assert m.meta["popularity_tokens"] == 8 and sorted(m.popularity) == list(range(32))
    # pooled counts [5, 3, 5, 3] / 16
    np.testing.assert_allclose(m.popularity[31], [5 / 16, 3 / 16, 5 / 16, 3 / 16, 0, 0, 0, 0])
    # fit_concentration: Var_s (ddof 1, two rows) = diff^2 / 2 -> spread = (25 + 9 + 25 + 9) / 128 = 17/32;
    # g = 1 - 68/256 = 47/64; r = 34/47; mean 1/n = 1/8; c = (1 - r) / (r - 1/8) = 104/225.
    assert m.sequence_concentration == pytest.approx(104 / 225, rel=1e-12)
    fit = m.meta["sequence_concentration_fit"]
    assert fit["sequences"] == 2 and fit["median"] == round(104 / 225, 1)
    assert m.meta["domains_used"]["mmlu_subjects"]["s1"] == {"questions": 1, "tokens": 4}
    assert m.meta["sources"][0]["repository"] == "ajtejankar/mixtral-vis-moe"


def test_combine_takes_each_layer_from_the_larger_source(tmp_path):
    vis = _vis_repo(tmp_path / "ajtejankar+mixtral-vis-moe", {"s1": [[5, 3]], "s2": [[0, 0, 5, 3]]})
    olmoe = _olmoe_repo(tmp_path / "allenai+OLMoE", "mistral", {"a": [{0: 20}, {1: 20}, {2: 20}]})
    small, large = ic.mixtral_frac_vecs(vis), ic.olmoe_counts(olmoe, "mistral")  # 8 vs 10 tokens
    m = ic.combine(small, large)
    np.testing.assert_allclose(m.popularity[0], np.eye(8)[0])  # layers 0, 7, 15 from the 10-token source
    np.testing.assert_allclose(m.popularity[1], small.popularity[1])  # the rest from the only one counting it
    assert m.sequence_concentration == small.sequence_concentration  # c from the source that has one
    assert m.meta["domains_used"]["popularity_from"]["allenai/OLMoE"] == [0, 7, 15]
    assert len(m.meta["sources"]) == 3 and m.meta["popularity_tokens"] == 10


def test_decode_activated_exact():
    # E = 4, k = 2, uniform: pi = 1/2 each; B = 2: 4 (1 - (1/2)^2) = 3 distinct experts.
    uni = fitted.RoutingModel("x", 4, 2, 1, "fitted", {0: np.full(4, 0.25)}, None)
    assert ic.decode_activated(uni, (2,)) == {2: pytest.approx(3.0)} and ic.uniform_activated(4, 2, (2,)) == {2: 3.0}
    # k = 1, p = [1/2, 1/2, 0, 0]: B = 2 -> 2 (1 - 1/4) = 1.5
    skew = fitted.RoutingModel("x", 4, 1, 1, "fitted", {0: np.array([0.5, 0.5, 0, 0])}, None)
    assert ic.decode_activated(skew, (1, 2)) == {1: pytest.approx(1.0), 2: pytest.approx(1.5)}


def test_main_writes_loadable_files(tmp_path):
    vis = _vis_repo(tmp_path / "ajtejankar+mixtral-vis-moe", {"s1": [[5, 3]], "s2": [[0, 0, 5, 3]]})
    olmoe = _olmoe_repo(tmp_path / "allenai+OLMoE", "olmoe", {"a": [{0: 8}, {1: 8}, {2: 8}]})
    _olmoe_repo(olmoe, "mistral", {"a": [{0: 2}, {1: 2}, {2: 2}]})
    assert ic.main(["--olmoe", str(olmoe), "--mixtral-vis", str(vis), "--out", str(tmp_path / "out")]) == 0
    assert fitted.load(tmp_path / "out" / "olmoe-1b-7b.json").model_id == ic.OLMOE_ID
    assert fitted.load(tmp_path / "out" / "mixtral-8x7b.json").sequence_concentration == pytest.approx(104 / 225)


@pytest.mark.parametrize(("name", "model_id", "e", "k", "layers", "counted"), [
    ("olmoe-1b-7b", ic.OLMOE_ID, 64, 8, 16, [0, 7, 15]),
    ("mixtral-8x7b", ic.MIXTRAL_ID, 8, 2, 32, list(range(32))),
])
def test_committed_files(name, model_id, e, k, layers, counted):
    m = fitted.load(FITTED / f"{name}.json")
    assert (m.model_id, m.num_experts, m.top_k, m.moe_layers) == (model_id, e, k, layers)
    ic.check_catalogue(m)  # E, k, layers agree with capsim/catalogue/configs
    assert sorted(m.popularity) == counted
    for p in m.popularity.values():
        assert p.shape == (e,) and abs(p.sum() - 1) < 1e-9 and p.min() >= 0
    if name == "mixtral-8x7b":
        assert math.isfinite(m.sequence_concentration) and m.sequence_concentration > 0
        assert m.meta["sequence_concentration_fit"]["sequences"] > 1
    else:
        assert m.sequence_concentration is None
    assert m.meta["popularity_tokens"] > 0 and m.meta["caveats"]
    for src in m.meta["sources"]:
        assert set(src) == {"title", "url", "repository", "commit", "path", "licence"}
        assert src["licence"] == "Apache-2.0" and len(src["commit"]) == 40 and src["url"].startswith("https://")
