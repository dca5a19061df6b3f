"""Where capsim's shipped data is: the hardware database, the validation data (configuration, measured
runs, published results) and the real routing data (traces/routing: traces, fitted routing models, the prior).

An installed wheel carries them as package data (``capsim/_data/hardware_db``, ``capsim/_data/validation``,
found with :mod:`importlib.resources`); a checkout (an editable install) reads the repository's top-level
``hardware_db/``, ``validation/`` and ``traces/routing/`` folders, which the wheel's build maps to those package folders
(pyproject.toml, ``[tool.setuptools]``). The catalogue, the engine profiles and the cost defaults live inside
the package in both cases.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from capsim.errors import CapsimError

NAMES = ("hardware_db", "validation", "routing")
IN_CHECKOUT = {"hardware_db": "hardware_db", "validation": "validation", "routing": "traces/routing"}
CHECKOUT = Path(__file__).resolve().parents[1]  # the repository root when capsim runs from a checkout


def path(name: str) -> Path:
    """The folder of shipped data ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise ValueError(f"unknown data folder {name!r}")
    packaged = resources.files("capsim").joinpath("_data", name)
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = CHECKOUT / IN_CHECKOUT[name]
    if checkout.is_dir():
        return checkout
    raise CapsimError(f"capsim's {name} data is missing from this installation (looked in {packaged} and "
                      f"{checkout}); reinstall capsim")
