"""Export into a staging directory beside the target and switch over only when complete.

A crash or `kill -9` at any point leaves the target as it was (the previous export, still usable) or as the
new export, never a mix and never nothing: the new export is written to `.NAME.partial-PID` next to NAME,
then the two directories are exchanged in one rename (Linux renameat2 RENAME_EXCHANGE; elsewhere two
renames, with the previous export kept as `.NAME.previous` until the second lands). A lock file next to
the target, removed when the export ends, makes a second concurrent export fail at once instead of mixing
files. Engines and the model folder of the previous export are carried over (hard links) so an unchanged
model is neither re-created nor its engines rebuilt.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from dbunet.errors import ExportError
from dbunet.manifest import MANIFEST

CARRY_OVER = ("model", "engines")  # reusable by the new export; everything else is written anew
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically; False where the system cannot (not Linux, old kernel, some FS)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(ctypes.get_errno(), f"exchanging {a} and {b}: {os.strerror(ctypes.get_errno())}")


def _link_tree(src: Path, dst: Path) -> None:
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


def _current_directory() -> Path | None:
    try:
        return Path.cwd().resolve()
    except FileNotFoundError:  # run from a directory already deleted: nothing to protect
        return None


def check_target(out: Path) -> None:
    """Refuse, before any work, a target that cannot become an artifacts directory."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a directory; give a directory for the artifacts")
    here = _current_directory()
    if here is not None and out.resolve() in (here, *here.parents):
        # the switch replaces the directory itself: a shell in it would be left in a deleted one, its `ls` empty
        raise ExportError(f"--out {out} is or holds the current directory, and an export replaces its directory "
                          "whole: run from outside it (e.g. `cd ..`) and name it there")
    if out.is_dir() and not (out / MANIFEST).exists():
        held = sorted(p.name for p in out.iterdir())
        if held:  # an export replaces the whole directory: never one that holds something else
            listed = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            raise ExportError(f"--out {out} holds {listed} but no {MANIFEST}: it is not an artifacts directory, and "
                              "an export replaces its whole directory; give a new or empty one, or an earlier export")
    ancestor = out.parent
    while not ancestor.exists():  # the nearest existing folder decides: it must be a writable directory
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExportError(f"--out {out}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ExportError(f"--out {out}: {ancestor} is not writable")


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Yield an empty staging directory; when the block succeeds, it becomes `out`."""
    out = Path(out)
    check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _export_lock(out):
        for stale in out.parent.glob(f".{out.name}.partial-*"):  # left by an export that was killed
            shutil.rmtree(stale, ignore_errors=True)
        previous = out.parent / f".{out.name}.previous"
        if previous.is_dir() and not out.exists():  # a switch that stopped between its two renames
            previous.rename(out)
        shutil.rmtree(previous, ignore_errors=True)
        stage = out.parent / f".{out.name}.partial-{os.getpid()}"
        stage.mkdir()
        try:
            for name in CARRY_OVER:
                if (out / name).is_dir():
                    _link_tree(out / name, stage / name)
            yield stage
            switch(stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def _export_lock(out: Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside `out` (a second export fails at once) and remove it when done.

    Removing a lock file races an export that opened it just before and locks it just after: that export would
    hold a file nobody else can open while a third creates a new one. So the file is removed while still held,
    and a lock counts only if its file is still the one at the path; otherwise it is taken again."""
    path = out.parent / f".{out.name}.lock"
    while True:
        lock = open(path, "a+")  # noqa: SIM115 (held for the whole export)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ExportError(f"another dbunet-export is writing {out} right now; wait for it to finish") from None
        if _same_file(path, lock):
            break
        lock.close()  # the previous holder removed it meanwhile
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # a lock file left behind is harmless: the next export takes it
            path.unlink()
        lock.close()


def _same_file(path: Path, handle) -> bool:
    try:
        return os.path.samestat(path.stat(), os.fstat(handle.fileno()))
    except FileNotFoundError:
        return False


def switch(stage: Path, out: Path) -> None:
    """Make the complete `stage` the target: old-or-new at `out` at every instant (see the module doc)."""
    if not out.exists():
        stage.rename(out)
        return
    if _exchange(stage, out):
        return  # stage now holds the previous export; the caller removes it
    previous = out.parent / f".{out.name}.previous"
    out.rename(previous)
    stage.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
