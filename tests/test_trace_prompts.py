"""Prompt files for trace collection (capsim.traces.prompts): JSONL and plain text, one-line errors. No torch."""

from __future__ import annotations

import pytest

from capsim.errors import CapsimError
from capsim.traces.prompts import read_prompts


def test_prompt_files(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a b"}\n\n{"text": "c"}\n')
    assert read_prompts(f) == ["a b", "c"]
    f.write_text('{"other": 1}\n')
    with pytest.raises(CapsimError, match=r'p.jsonl:1: expected an object with a non-empty "prompt"'):
        read_prompts(f)
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(CapsimError, match="empty.txt: no prompts"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(CapsimError, match="--prompts .*missing.txt: no such file"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CapsimError, match="bin.txt: unreadable"):
        read_prompts(tmp_path / "bin.txt")
