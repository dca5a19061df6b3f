"""The published CPU and hybrid corpus (validation/published/cpu/ and the CPU rows of published_measurements.csv)
and the backends fitted to it (capsim validate --cpu-corpus)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from capsim import engines
from capsim.hardware import db as hwdb
from capsim.validation import corpus, cpu_corpus
from capsim.validation.published import predict_row

REPO = Path(__file__).resolve().parents[1]
ROWS = corpus.load_corpus(REPO / "validation", cpu_corpus.SPEC)
SUPPORTED = [r for r in ROWS if r.scenario is not None]


def test_corpus_size_and_backends():
    # the issue asks for at least 60 published CPU and hybrid results, per backend
    assert len(SUPPORTED) >= 60
    per_engine = Counter(r.scenario["engine"] for r in SUPPORTED)
    assert set(per_engine) <= set(cpu_corpus.ENGINES)
    assert len([e for e, n in per_engine.items() if n >= 3]) >= 6
    assert len({corpus.source_key(r) for r in SUPPORTED}) >= 10


def test_every_unsupported_row_says_why():
    for r in ROWS:
        assert r.scenario is not None or len(str(r.unsupported).strip()) > 20, r.id


@pytest.mark.parametrize("engine", [e for e in cpu_corpus.ENGINES
                                    if sum(r.scenario["engine"] == e for r in SUPPORTED) >= cpu_corpus.SPEC.min_rows(e)])
def test_the_committed_fit_is_the_corpus_and_its_report(engine):
    """CI re-checks the committed fit: each backend profile was fitted to exactly its rows of the corpus, and
    predicting them now gives the in-sample median validation/CPU_ENGINES.md states."""
    mine = [r for r in SUPPORTED if r.scenario["engine"] == engine]
    prof = engines.load(engine)
    assert set(prof.fitted_cases) == {r.id for r in mine}, f"{engine}: refit with capsim validate --cpu-corpus --fit"
    db = hwdb.load()
    med = float(np.median([abs(predict_row(r, db, prof) / r.value_si - 1) for r in mine]))
    report = (REPO / "validation" / "CPU_ENGINES.md").read_text()
    # the row count there is the rows held out (a group too small to leave the rest a fit is not held out)
    stated = re.search(rf"^\| {re.escape(engine)} \| all \| [0-9]+ \| [a-z ]+ \| [0-9.]+% \| [0-9]+% \| .* \| "
                       rf"([0-9.]+)% \|$", report, re.M)
    assert stated, f"{engine}: no 'all' row in validation/CPU_ENGINES.md"
    assert med * 100 == pytest.approx(float(stated.group(1)), abs=0.05)
