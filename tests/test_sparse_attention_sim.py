"""DeepSeek-V3.2's sparse attention in the simulator (issue 24): the attention attends to its indexer's top-k keys
per query while the cache keeps every token (plus one index key per token and layer), and the indexer scores every
(query, key) pair of full causal attention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capsim.model.spec import spec_from_config
from capsim.precision import PRECISIONS
from capsim.sim.memory import kv_bytes_per_token
from capsim.sim.ops import work_costs
from capsim.sim.ops.base import Work
from capsim.sim.shape import shape_of
from capsim.sim.span import chunk_pairs_per_layer, decode_keys_per_layer

CONFIG = Path(__file__).parents[1] / "capsim" / "catalogue" / "configs" / "deepseek-ai__DeepSeek-V3.2-Exp.json"


@pytest.fixture(scope="module")
def shape():
    spec = spec_from_config(json.loads(CONFIG.read_text()), "deepseek-v3.2-exp")
    return shape_of(spec, PRECISIONS["fp8"])


def test_the_kept_keys_count_like_a_window_and_the_cache_keeps_everything(shape):
    # config: 61 layers, index_topk 2048, index_n_heads 64, index_head_dim 128
    assert shape.windows == ((2048, 61),) and shape.cache_windows == ((0, 61),)
    assert (shape.sparse_topk, shape.indexer_heads, shape.indexer_dim) == (2048, 64, 128)
    # a decode step at context 10,000 (position 10,001) attends to 2,048 kept keys, and its indexer scores 10,001
    assert float(decode_keys_per_layer(shape.windows, 61, 10_000, 2)) == 2048
    assert float(decode_keys_per_layer(shape.cache_windows, 61, 10_000, 2)) == 10_001
    # per token and layer the cache holds the 576-wide MLA latent (512 + 64 rope) and the 128-wide index key
    assert float(kv_bytes_per_token(shape, 1.0)) == (576 + 128) * 61


def test_the_indexer_scores_every_pair_and_reads_every_index_key(shape):
    # one sequence, one decode token at context 10,000: attention over 2,048 kept keys; the indexer over 10,001
    sparse = float(chunk_pairs_per_layer(shape.windows, 61, 10_000, 1))
    dense = float(chunk_pairs_per_layer(shape.cache_windows, 61, 10_000, 1))
    assert (sparse, dense) == (2048, 10_001)
    with_indexer = work_costs(shape, Work(1, 1, sparse, sparse, True, dense), kv_bytes_per_element=1.0)
    no_indexer = work_costs(shape, Work(1, 1, sparse, sparse, True, sparse), kv_bytes_per_element=1.0)
    a, b = with_indexer.ops["attn_scores"], no_indexer.ops["attn_scores"]
    # indexer FLOPs: 2 x 64 heads x 128 x (10,001 - 2,048) more pairs x 61 layers
    assert float(a.flops - b.flops) == pytest.approx(2 * 64 * 128 * (10_001 - 2048) * 61)
    # index keys read: 128 elements x 1 byte x (10,001 - 2,048) more keys x 61 layers
    assert float(a.kv_bytes - b.kv_bytes) == pytest.approx(128 * (10_001 - 2048) * 61)
