"""The wheel's contents as pyproject.toml declares them: every code package, every data file capsim reads.
(`make wheel-test` builds and installs the wheel itself; this checks the declaration without building.)"""

import fnmatch
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_code_package_is_listed():
    found = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in (ROOT / "capsim").rglob("__init__.py")}
    listed = {p for p in CONFIG["packages"] if not p.startswith("capsim._data")}
    assert found == listed


def _covered(package_dir: Path, patterns: list[str], file: Path) -> bool:
    rel = file.relative_to(package_dir).as_posix()
    return any(fnmatch.fnmatch(rel, p) or (p.startswith("**/") and fnmatch.fnmatch(rel, p[3:])) for p in patterns)


def test_every_data_file_capsim_reads_is_package_data():
    data = CONFIG["package-data"]
    for f in (ROOT / "capsim").rglob("*"):
        if f.is_file() and f.suffix in (".yaml", ".json") and "__pycache__" not in f.parts:
            pkg = f.parent
            while not (pkg / "__init__.py").exists():
                pkg = pkg.parent
            name = pkg.relative_to(ROOT).as_posix().replace("/", ".")
            assert _covered(pkg, data.get(name, []), f), f
    for name, folder in CONFIG["package-dir"].items():
        for f in (ROOT / folder).rglob("*.yaml"):
            if folder == "hardware_db" or f.name == "config.yaml" or "hardware" in f.parts or "published" in f.parts:
                assert _covered(ROOT / folder, data[name], f), f
    for f in (ROOT / "validation" / "measured").rglob("*.json"):
        assert _covered(ROOT / "validation", data["capsim._data.validation"], f), f
