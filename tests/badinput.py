"""The harness of the bad-input suite (tests/test_bad_*.py): run one capsim command on bad input and check
that it is refused the way a user must see it.

Every case asserts: exit code 2; stderr is exactly one line ``capsim: error: ...`` that contains the input's
name (the flag, file or field); nothing on stdout; no Python traceback; no file in the test's folder (the
working directory, where defaults would land) created, removed, changed or moved.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import yaml
from click.testing import CliRunner

from capsim.cli.main import cli

HANG_S = 120  # a refusal that takes longer is a hang (the slowest legitimate check loads a small model: ~5 s)
NOT_UTF8 = b"id: caf\xe9\nkind: accelerator\n\xff\xfe\n"  # Latin-1 bytes: not UTF-8


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path below ``root`` with its type, size, modification time and (files) contents."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            st = p.lstat()
            body = p.read_bytes() if p.is_file() and not p.is_symlink() and st.st_size < 1 << 20 else None
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, body)
    return out


def refused(args: list[str], root: Path, needle: str, env: dict[str, str] | None = None) -> str:
    """Run ``capsim ARGS`` in ``root`` and check the refusal; returns the error line."""
    before = snapshot(root)
    cwd = os.getcwd()
    os.chdir(root)

    def hang(*_):
        raise TimeoutError(f"capsim {args} still running after {HANG_S} s: a bad input must be refused at once")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_S)
    try:
        r = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        os.chdir(cwd)
    shown = f"args {args}: exit {r.exit_code}, stdout {r.stdout[-300:]!r}, stderr {r.stderr[-600:]!r}, {r.exception!r}"
    assert r.exit_code == 2, shown
    assert r.exception is None or isinstance(r.exception, SystemExit), shown
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsim: error: "), shown
    assert "Traceback" not in r.output, shown
    assert needle.lower() in lines[0].lower(), f"{needle!r} not named: {shown}"
    assert r.stdout == "", shown
    assert snapshot(root) == before, f"files changed: {shown}"
    return lines[0]


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_yaml(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
