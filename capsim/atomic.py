"""Atomic file output: write beside the destination, then rename over it, so that a reader (or a crash) never
sees a half-written file and a file the user had stays whole until the new one is complete.

Temporary files are named ``.<name>.<pid>.capsim.tmp``: one left by a process that was killed is removed by the
next write to the same destination. :func:`lock` makes a second capsim process writing the same output wait
for nothing: it is refused with a one-line error naming the process that holds it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


TMP_SUFFIX = ".capsim.tmp"
LOCK_SUFFIX = ".capsim.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(path: Path) -> None:
    """Remove temporary files for ``path`` left by processes that no longer run."""
    for tmp in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
        pid = tmp.name[len(path.name) + 2:-len(TMP_SUFFIX)].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            with suppress(OSError):
                if tmp.is_dir() and not tmp.is_symlink():
                    import shutil

                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()


@contextmanager
def lock(path: str | Path, what: str = "--out"):
    """Hold ``.<name>.capsim.lock`` beside ``path`` while a command writes it; a second process is refused (a
    lock left by a process that no longer runs is taken over)."""
    from capsim.errors import CapsimError

    path = Path(path)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # removed again if left empty
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.parent / f".{path.name}{LOCK_SUFFIX}"
    for _ in range(2):
        try:
            fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                holder = int(f.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and _alive(holder) and holder != os.getpid():
                raise CapsimError(f"{what} {path}: another capsim process (pid {holder}) is writing it; wait for it "
                                  f"to finish or choose another {what}") from None
            with suppress(FileNotFoundError):
                f.unlink()  # a stale lock
    else:
        raise CapsimError(f"{what} {path}: cannot take the lock {f}")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    try:
        yield path
    finally:
        with suppress(FileNotFoundError):
            f.unlink()
        for folder in made:  # innermost first: a run that failed before writing leaves no empty folders behind
            with suppress(OSError):
                folder.rmdir()


def write_with(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` for a temporary file in ``path``'s folder, then rename it to ``path``. The file
    gets an ordinary file's mode (mkstemp makes 0600); on any error the temporary file is removed, and temporary
    files of killed runs for the same ``path`` are removed first."""
    from capsim.errors import CapsimError

    path = Path(path)
    if path.is_symlink():
        raise CapsimError(f"{path}: is a symbolic link; refusing to replace it")
    if path.is_dir():
        raise CapsimError(f"{path}: is a folder; give a file name to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise CapsimError(f"{path}: cannot write there ({err.strerror or err})") from None
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise CapsimError(f"{path}: cannot write it ({err.strerror or err})") from None
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str, fsync: bool = False) -> Path:
    """``text`` as UTF-8; ``fsync``: on disk before the rename (survives a power cut, not only a crash)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())

    return write_with(path, write)


def save_figure(fig, path: str | Path, flag: str = "--plot", **savefig_kw) -> Path:
    """A matplotlib figure, in the format of ``path``'s suffix (png, svg, pdf), stamped as capsim's; an existing
    file that is not a capsim plot is refused (:func:`capsim.outputs.check_replace`)."""
    from capsim import outputs

    fmt = figure_format(path, flag)
    outputs.check_replace(path, "figure", flag)
    meta = {**savefig_kw.pop("metadata", {}), **outputs.figure_metadata(fmt)}
    return write_with(path, lambda tmp: fig.savefig(tmp, format=fmt, metadata=meta, **savefig_kw))


def figure_format(path: str | Path, flag: str = "--plot") -> str:
    """The image format a plot path names (png, svg or pdf); a one-line error for any other suffix."""
    from capsim.errors import CapsimError
    from capsim.outputs import FIGURE_FORMATS

    fmt = Path(path).suffix.lstrip(".").lower()
    if fmt not in FIGURE_FORMATS:
        raise CapsimError(f"{flag} {path}: expected a file name ending in .{', .'.join(FIGURE_FORMATS)}")
    return fmt
