"""Execute the notebooks in notebooks/ in place, so that the committed files carry their outputs (plots included).

    .venv/bin/python notebooks/execute.py                      # every notebooks/*.ipynb
    .venv/bin/python notebooks/execute.py validation.ipynb     # some of them
    .venv/bin/python notebooks/execute.py --timeout 120

Each notebook runs with nbclient in a fresh ``python3`` kernel of THIS interpreter (ipykernel's own kernel spec,
whatever other kernels the machine has registered), with notebooks/ as its working directory; a cell error stops
that notebook and the file is left as it was. Outputs are written to a temporary file beside the notebook and
renamed over it, so an interrupted run never leaves a half-written notebook. ``tests/test_notebooks.py`` uses
:func:`execute` the same way on copies.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
CELL_TIMEOUT_S = 60


def kernel_manager() -> AsyncKernelManager:
    """A manager for ipykernel's native ``python3`` kernel run by ``sys.executable``: no kernel spec folder is
    searched, so a ``python3`` spec registered elsewhere (user or system Jupyter folders) cannot take its place."""
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


def execute(nb: nbformat.NotebookNode, cwd: Path = HERE, timeout: int = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` (in place) with ``cwd`` as the working directory; raises on a cell error."""
    client = NotebookClient(nb, km=kernel_manager(), timeout=timeout, kernel_name="python3",
                            record_timing=False, resources={"metadata": {"path": str(cwd)}})
    client.execute()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    return nb


def write_atomic(nb: nbformat.NotebookNode, path: Path) -> None:
    """Write ``nb`` to a temporary file beside ``path`` and rename it over ``path`` (keeping its permissions)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".ipynb", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="notebook files (default: every notebooks/*.ipynb)")
    ap.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds allowed per cell")
    args = ap.parse_args(argv)
    paths = [Path(p) if Path(p).exists() else HERE / p for p in args.notebooks] or sorted(HERE.glob("*.ipynb"))
    failed = 0
    for path in paths:
        t0 = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        try:
            execute(nb, HERE, args.timeout)
        except Exception as err:  # a cell error: report it, keep the file as it was, go on
            failed += 1
            print(f"FAILED {path.name}: {str(err).strip().splitlines()[-1] if str(err).strip() else err!r}",
                  file=sys.stderr)
            continue
        nbformat.validate(nb)
        write_atomic(nb, path)
        size = path.stat().st_size
        print(f"executed {path.name} in {time.perf_counter() - t0:.1f} s ({size / 1e3:.0f} kB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
