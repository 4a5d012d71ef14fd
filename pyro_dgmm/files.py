"""Atomic file output: nothing the library writes is ever left half-written.

Every file is written to a temporary file in the target's own folder, flushed
to disk (``fsync``) and moved over the target with :func:`os.replace`, which
is atomic on POSIX and Windows: a reader (or a process killed mid-write)
sees either the old complete file or the new complete one, never a mix.
A set of files that belong together (the command line's outputs) is written
into a fresh folder that :func:`atomic_folder` then switches into place the
same way.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(folder / "table.csv") as tmp:
    ...     _ = tmp.write_text("a,b\\n1,2\\n")
    >>> (folder / "table.csv").read_text()
    'a,b\\n1,2\\n'
    >>> sorted(p.name for p in folder.iterdir())  # no temporary file left
    ['table.csv']
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import ConfigError


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an
    exception, the file written there replaces ``path`` atomically.

    If the block raises, the temporary file is removed and ``path`` keeps its
    previous content (or stays absent).  The caller writes the temporary path
    with any writer that takes a file name (``DataFrame.to_csv``,
    ``Figure.savefig``, ``torch.save``, ...).
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    # created like open() would (mode 0o666 less the umask; mkstemp's 0o600 would hide outputs from the group)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


# ------------------------------------------------------------ output folders
#: Seconds a new run folder is never taken for a killed run's (its run locks it right after making it).
_GRACE_SECONDS = 1.0


def _owned(name: str) -> re.Pattern:
    """Names of the hidden siblings :func:`atomic_folder` makes for ``name``:
    ``.<name>.run-<hex>`` (a run's folder) and ``.<name>.link-<hex>`` (a
    link about to be moved onto ``name``; same ``<hex>`` as its folder)."""
    return re.compile(rf"\.{re.escape(name)}\.(run|link)-([0-9a-f]{{12}})")


def _sibling(target: Path, kind: str, tag: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{tag}")


def _is_our_link(target: Path) -> bool:
    match = _owned(target.name).fullmatch(os.readlink(target))
    return match is not None and match.group(1) == "run"


def check_folder_target(path: str | os.PathLike, replaceable: Iterable[str] = ()) -> None:
    """Check, before any work, that :func:`atomic_folder` can replace ``path``:
    it is absent, a link made by an earlier :func:`atomic_folder`, or a plain
    folder holding only files named in ``replaceable`` (an older run's
    outputs); and the nearest existing folder above it is a writable folder.

    :raises ConfigError: naming ``path`` and what is in the way (a file, a
        folder with other files, a link made by someone else, no permission).
    """
    target = Path(os.path.abspath(path))
    if not target.name:
        raise ConfigError(f"output folder {path} has no name: pass a folder below {target}")
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"output folder {path} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder {path} cannot be created: no permission to write in {ancestor}")
    if target.is_symlink():
        if not _is_our_link(target):
            raise ConfigError(f"output folder {path} is a symbolic link not made by pyro_dgmm: pass the folder it "
                              "points to, or a new name")
    elif target.exists():
        if not target.is_dir():
            raise ConfigError(f"output folder {path} is a file, not a folder")
        allowed = set(replaceable)
        others = sorted(p.name for p in target.iterdir() if p.name not in allowed or not p.is_file())
        if others:
            shown = ", ".join(others[:5]) + (f" (and {len(others) - 5} more)" if len(others) > 5 else "")
            raise ConfigError(f"output folder {path} holds files that no run wrote ({shown}): the outputs replace "
                              "the folder as a whole, so pass a new or empty folder")


def _lock(folder: Path) -> int | None:
    """Lock ``folder`` for as long as this run writes it (``flock``; the
    system drops the lock when the process ends, killed or not); the open
    descriptor to close at the end, or None where the file system has no locks."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _abandoned(folder: Path) -> bool:
    """Whether ``folder`` is a run folder that no running process holds (its
    run was killed or has ended), so it may be removed."""
    try:
        if time.time() - folder.lstat().st_mtime < _GRACE_SECONDS or not folder.is_dir():
            return False
        fd = _lock(folder)
    except OSError:
        return False
    if fd is None:
        return False
    os.close(fd)
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _remove_leftovers(target: Path) -> None:
    """Remove the hidden siblings of ``target`` that no running process
    holds (left by killed runs), except the folder ``target`` links to."""
    current = os.readlink(target) if target.is_symlink() else None
    pattern = _owned(target.name)
    for entry in target.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match is None or entry.name == current:
            continue
        run = entry if match.group(1) == "run" else _sibling(target, "run", match.group(2))
        # a link is kept only while its run still holds its folder (between making the link and the switch)
        if _abandoned(run) or (entry is not run and (not run.exists() or run.name == current)):
            _remove(entry)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); False where the system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # no renameat2 (not Linux, old C library)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _switch(link: Path, target: Path) -> Path | None:
    """Put ``link`` in ``target``'s place; return what ``target`` held before
    (to remove), or None.  A link (an earlier run's) or nothing is replaced
    with one atomic ``os.replace``; a plain folder (an older pyro_dgmm's
    output) is exchanged atomically where the system can, else moved aside
    first (two renames: only this one-time migration has an instant
    without ``target``)."""
    if target.is_symlink() or not target.exists():
        previous = target.parent / os.readlink(target) if target.is_symlink() else None
        os.replace(link, target)
        return previous
    if _exchange(link, target):
        return link  # now holds the old folder
    aside = _sibling(target, "run", secrets.token_hex(6))
    os.rename(target, aside)
    try:
        os.replace(link, target)
    except BaseException:
        os.rename(aside, target)
        raise
    return aside


@contextmanager
def atomic_folder(path: str | os.PathLike, replaceable: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a new empty folder beside ``path``; when the block ends without
    an exception, ``path`` switches to it in one atomic step, so that at
    every instant ``path`` shows either the previous complete set of files
    or the new complete set, never a mix (even if the process is killed).

    The folders are hidden siblings ``.<name>.run-<hex>`` and ``path`` is a
    relative symbolic link to the current one, replaced with
    :func:`os.replace`; every file is fsynced before the switch.  A run
    holds a lock (``flock``) on its folder while it writes; the previous
    run's folder is removed after the switch, and folders no running
    process holds (left by killed runs) at the start of the next run.
    ``path`` may also be a plain folder holding only ``replaceable`` files
    (written by an older version): it is swapped out the same way (see
    :func:`_switch`).  If the block raises, its folder is removed and
    ``path`` is untouched.  Needs symbolic links (POSIX).  Two runs writing
    the same ``path`` at once each leave a complete folder; the last to
    finish wins.

        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "outputs"
        >>> with atomic_folder(out) as folder:
        ...     _ = (folder / "a.txt").write_text("first run")
        >>> with atomic_folder(out) as folder:
        ...     _ = (folder / "a.txt").write_text("second run")
        >>> (out / "a.txt").read_text(), out.is_symlink()
        ('second run', True)
        >>> len(list(out.parent.iterdir()))  # the link and the current folder
        2

    :param replaceable: file names an older plain folder at ``path`` may
        hold (see :func:`check_folder_target`).
    :raises ConfigError: ``path`` cannot be replaced (before the block runs).
    """
    target = Path(os.path.abspath(path))
    check_folder_target(target, replaceable)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    tag = secrets.token_hex(6)
    work, link = _sibling(target, "run", tag), _sibling(target, "link", tag)
    work.mkdir()
    lock = _lock(work)
    try:
        yield work
        for file in work.rglob("*"):
            if file.is_file() and not file.is_symlink():
                _fsync_file(file)
        _fsync_folder(work)
        os.symlink(work.name, link)
        previous = _switch(link, target)
    except BaseException:
        if not (target.is_symlink() and os.readlink(target) == work.name):  # the switch did not happen
            link.unlink(missing_ok=True)
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    _fsync_folder(target.parent)
    if previous is not None:
        _remove(previous)
