"""The disk cache of resolved scenarios: the same scenario back, a new one when any input changes, never an
error from the cache itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from capsim import scenario, scenario_cache
from capsim.hardware import db as hwdb
from capsim.predict import Query, predict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSIM_CACHE_DIR", str(tmp_path / "cache"))
    scenario._CACHE.clear()  # the in-process memo would hide the disk
    yield tmp_path / "cache" / "scenarios"
    scenario._CACHE.clear()


def test_a_cached_scenario_predicts_the_same_without_reading_the_database(cache):
    q = Query(model="mixtral", hardware="dgx-h100", devices=2, batch=8, engine="roofline")  # no ideal-bound twin
    first = predict(q, hwdb.load())
    assert len(list(cache.glob("*.pickle"))) == 1
    scenario._CACHE.clear()
    db = hwdb.load(lazy=True)
    again = predict(q, db)
    assert again == first
    assert not db._loaded  # the cached scenario needed no item of the database


def test_the_key_changes_with_the_database_and_the_question(cache, tmp_path):
    user = tmp_path / "hw"
    user.mkdir()
    q = Query(model="mixtral", hardware="dgx-h100")
    base = scenario_cache.key(q, hwdb.load(), scenario.PER_REQUEST)
    assert scenario_cache.key(q, hwdb.load(), scenario.PER_REQUEST) == base  # stable
    shutil.copy(ROOT / "hardware_db" / "accelerators" / "h100-sxm5-80gb.yaml", user / "h100-sxm5-80gb.yaml")
    assert scenario_cache.key(q, hwdb.load(user), scenario.PER_REQUEST) != base  # another database
    assert scenario_cache.key(Query(model="mixtral", hardware="dgx-h100", tp=4), hwdb.load(),
                              scenario.PER_REQUEST) != base  # another layout
    assert scenario_cache.key(Query(model="mixtral", hardware="dgx-h100", batch=64), hwdb.load(),
                              scenario.PER_REQUEST) == base  # the batch is not part of the scenario


def test_an_unreadable_entry_is_resolved_again_and_the_cache_can_be_off(cache, monkeypatch):
    q = Query(model="olmoe", hardware="h100", engine="roofline")  # one scenario (an engine adds its ideal bound)
    first = predict(q, hwdb.load())
    (entry,) = cache.glob("*.pickle")
    entry.write_bytes(b"not a pickle")
    scenario._CACHE.clear()
    assert predict(q, hwdb.load()) == first
    monkeypatch.setenv("CAPSIM_CACHE", "off")
    shutil.rmtree(cache)
    scenario._CACHE.clear()
    assert predict(q, hwdb.load()) == first
    assert not cache.exists()
