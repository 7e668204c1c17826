"""Atomic, durable writes: a full disk, a read-only folder, Ctrl-C or a crash never tear a file.

Every write goes to a unique temp name in the target's own folder (same filesystem, so the final
rename is atomic), is flushed and fsynced, renamed over the target with ``os.replace``, and the
folder is fsynced so that the rename itself survives a power cut. On ANY failure before the
rename (OSError such as ENOSPC or EROFS, KeyboardInterrupt, a bug) the temp file is removed and
the error re-raised unchanged: the previous file is untouched. Only SIGKILL or a power cut can
leave a temp file (``.NAME.*.tmp``) behind, never a torn target.

Folders (the ONNX encoder: model + tokenizer + manifest) are built in a temp folder and swapped
in with one atomic exchange where the OS has one (Linux ``renameat2(RENAME_EXCHANGE)``, macOS
``renamex_np(RENAME_SWAP)``); elsewhere with two renames, the old folder put back if the second
one fails.

Example::

    with atomic_write("me.npz") as f:
        np.savez(f, **arrays)
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

TMP_SUFFIX = ".tmp"  # every temp file and folder ends in this (tests look for leftovers)

# What a user can do about the errors a write meets; the rest are stated as the OS words them.
_FIXES = {
    errno.ENOSPC: "free some disk space and try again",
    errno.EDQUOT: "free some space within your disk quota and try again",
    errno.EROFS: "write to a folder on a writable disk",
    errno.EACCES: "check the folder's permissions, or write somewhere else",
    errno.EPERM: "check the folder's permissions, or write somewhere else",
}


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


@contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    mode: Literal["wb", "w"] = "wb",
    *,
    perms: int | None = None,
    encoding: str = "utf-8",
) -> Iterator[IO[Any]]:
    """An open temp file that replaces ``path`` (fsynced) only if the block completes.

    ``perms``: permission bits for a NEW file (default: what ``open()`` would give); an
    existing file keeps its own.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, str(mode), encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, path, perms)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, perms: int | None = None) -> Iterator[Path]:
    """A temp file name that replaces ``path`` only if the block completes.

    For writers that need a name, not a file object (gguf.GGUFWriter, torch.onnx.export,
    llama.cpp's quantizer). The file is fsynced before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        _commit(tmp, path, perms)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, perms: int | None = None) -> Path:
    """``Path.write_bytes``, atomically and durably."""
    with atomic_write(path, "wb", perms=perms) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, *, perms: int | None = None) -> Path:
    """``Path.write_text`` (UTF-8), atomically and durably."""
    with atomic_write(path, "w", perms=perms) as f:
        f.write(text)
    return Path(path)


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """An empty temp folder next to ``path`` that is swapped in as ``path`` if the block completes.

    Every file in it is fsynced first; an old ``path`` is removed only after the swap.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a cache folder is not
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Swap the complete folder ``new`` in as ``target`` (see the module docstring)."""
    _fsync_tree(new)
    if not target.exists():
        os.rename(new, target)
    elif exchange(new, target):
        _remove(new)  # holds the old folder now
    else:
        old = Path(
            tempfile.mkdtemp(
                prefix=_temp_prefix(target), suffix=".old" + TMP_SUFFIX, dir=target.parent
            )
        )
        os.rmdir(old)  # a unique free name, for the old folder
        os.rename(target, old)
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(old, target)
            raise
        _remove(old)
    fsync_dir(target.parent)


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the OS or filesystem cannot."""
    libc = _libc()
    if libc is None:
        return False
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        rc = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rename_swap = 2
        rc = libc.renamex_np(os.fsencode(a), os.fsencode(b), rename_swap)
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # this filesystem cannot exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


def describe(err: BaseException) -> str:
    """What failed, in words, and what the user can do: 'no space left on device; free ...'."""
    if isinstance(err, OSError) and err.errno is not None:
        what = (err.strerror or os.strerror(err.errno)).lower()
        fix = _FIXES.get(err.errno)
        return f"{what}; {fix}" if fix else what
    return str(err) or type(err).__name__


def write_failed(path: str | os.PathLike[str], err: BaseException, what: str = "file") -> str:
    """The one-line message for a failed atomic write of ``path`` (call it after the failure)."""
    kept = f"the previous {what} is intact" if Path(path).exists() else f"no {what} was written"
    return f"{path}: could not write the {what} ({describe(err)}); {kept}"


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; best effort: not every platform can open a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # the rename is done; only its durability across a power cut is unconfirmed
    finally:
        os.close(fd)


# -- internals -----------------------------------------------------------------------------------
def _commit(tmp: Path, path: Path, perms: int | None) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)  # an existing file keeps its permissions
    except OSError:
        mode = perms if perms is not None else 0o666 & ~_umask()
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            _fsync_file(Path(root) / name)
        fsync_dir(Path(root))


def _remove(path: Path) -> None:
    """Remove a temp file or folder, quietly: the error that got us here is the one to report."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _umask() -> int:
    """The process umask (only readable by setting it; Linux also shows it in /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_LIBC: list[Any] = []


def _libc() -> Any:
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except (OSError, TypeError):  # Windows has no process-wide C library handle
            _LIBC.append(None)
    return _LIBC[0]
