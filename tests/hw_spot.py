"""Shared by the hardware spot-value tests: the fields they check and how one is read and compared."""

from __future__ import annotations

import pytest

CAP = "memory.capacity_bytes"
BW = "memory.bandwidth_bytes_per_s"
BF16 = "peak_flop_per_s.bf16"
FP16 = "peak_flop_per_s.fp16"


def value(item, field: str):
    """The sourced quantity at a dotted ``field`` of a database item."""
    obj = item
    for part in field.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def check_spot(db, item_id: str, field: str, expected: float, source: str) -> None:
    """The accelerator's ``field`` holds ``expected`` (SI units) and cites ``source``."""
    q = value(db.get(item_id, "accelerator"), field)
    assert q.value == pytest.approx(expected, rel=1e-9)
    assert q.source == source


def problems_in(problems, files) -> list[str]:
    """The database problems that concern any of ``files`` (ids or source-file stems)."""
    return [str(p) for p in problems if any(f in str(p) for f in files)]


def alias_clashes(db, ids) -> list[str]:
    """Names (ids or aliases) that point at two items, one of them in ``ids``."""
    seen: dict[str, str] = {}
    out = []
    for item_id, item in db.items.items():
        for name in (item_id, *item.aliases):
            if name in seen and seen[name] != item_id and {item_id, seen[name]} & set(ids):
                out.append(f"{name!r} names both {seen[name]} and {item_id}")
            seen.setdefault(name, item_id)
    return out


def forecast(*args: str) -> dict:
    """``capsim predict ... --json`` run in process; it must succeed."""
    import json

    from click.testing import CliRunner

    from capsim.cli.main import cli

    r = CliRunner().invoke(cli, ["predict", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)
