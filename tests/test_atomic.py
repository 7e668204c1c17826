"""fints_edge._atomic under faults: a full disk, a read-only folder, Ctrl-C, SIGINT to a CLI.

Tests run as root, for whom chmod stops nothing, so the faults are injected where the OS would
report them (the write, fsync, creating the temp file, the rename) with the errno it would use.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fints_edge import _atomic
from fints_edge._atomic import atomic_dir, atomic_path, atomic_write, replace_dir, write_text
from fints_edge.errors import ProfileError
from fints_edge.profile import Profile
from tests._factories import profile

ROOT = Path(__file__).resolve().parents[1]


class _Disk:
    """Wraps the file _atomic writes to; fails the write once ``budget`` bytes went through."""

    def __init__(self, f, budget: int, error: BaseException) -> None:
        self._f, self._left, self._error = f, budget, error

    def write(self, data) -> int:
        if len(data) > self._left:
            self._f.write(bytes(data)[: self._left])  # the disk took part of it
            self._left = 0
            raise self._error
        self._left -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _fail_writes_after(monkeypatch, budget: int, error: BaseException) -> None:
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: _Disk(real(*a, **k), budget, error))


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _raise(error: BaseException):
    def fail(*_args, **_kwargs):
        raise error

    return fail


@pytest.fixture
def old(tmp_path) -> tuple[Path, bytes]:
    path = profile(n=3, seed=1).save(tmp_path / "me.npz")
    return path, path.read_bytes()


# (what breaks, how, the words the user must see)
FAULTS = {
    "disk full mid-write": (
        lambda mp: _fail_writes_after(mp, 2000, _enospc()),
        "no space left on device; free some disk space",
    ),
    "disk full at fsync": (
        lambda mp: mp.setattr(os, "fsync", _raise(_enospc())),
        "no space left on device",
    ),
    "read-only folder (temp file refused)": (
        lambda mp: mp.setattr(
            _atomic.tempfile,
            "mkstemp",
            _raise(OSError(errno.EROFS, os.strerror(errno.EROFS), "x")),
        ),
        "read-only file system; write to a folder on a writable disk",
    ),
    "no permission (temp file refused)": (
        lambda mp: mp.setattr(
            _atomic.tempfile,
            "mkstemp",
            _raise(PermissionError(errno.EACCES, os.strerror(errno.EACCES), "x")),
        ),
        "permission denied; check the folder's permissions",
    ),
    "read-only at the rename": (
        lambda mp: mp.setattr(
            os, "replace", _raise(OSError(errno.EROFS, os.strerror(errno.EROFS)))
        ),
        "read-only file system",
    ),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failed_profile_save_keeps_the_old_file_and_says_why(tmp_path, old, monkeypatch, fault):
    path, before = old
    inject, words = FAULTS[fault]
    inject(monkeypatch)
    with pytest.raises(ProfileError) as e:
        profile(n=9, seed=2).save(path)
    monkeypatch.undo()
    message = str(e.value)
    assert message.startswith(f"{path}: could not write the profile (")
    assert words in message and message.endswith("the previous profile is intact")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["me.npz"]  # no temp file left behind
    assert Profile.load(path).n_items == 3


def test_a_failed_first_save_says_nothing_was_written(tmp_path, monkeypatch):
    _fail_writes_after(monkeypatch, 100, _enospc())
    with pytest.raises(ProfileError, match="no profile was written"):
        profile().save(tmp_path / "me.npz")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["mid-write", "at fsync", "at the rename"])
def test_ctrl_c_during_save_keeps_the_old_file(tmp_path, old, monkeypatch, where):
    path, before = old
    if where == "mid-write":
        _fail_writes_after(monkeypatch, 2000, KeyboardInterrupt())
    else:
        monkeypatch.setattr(os, "fsync" if where == "at fsync" else "replace",
                            _raise(KeyboardInterrupt()))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):  # not wrapped: the CLI says "interrupted", exit 130
        profile(n=9, seed=2).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["me.npz"]


def test_atomic_write_is_durable_and_keeps_permissions(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "a.txt"
    write_text(path, "one")
    assert len(synced) == 2  # the file, then its folder (the rename)
    assert path.read_text() == "one"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_atomic._umask()
    path.chmod(0o640)
    with atomic_write(path, "w", perms=0o600) as f:
        f.write("two")
    assert path.read_text() == "two" and stat.S_IMODE(path.stat().st_mode) == 0o640
    new = profile().save(tmp_path / "new.npz")
    assert stat.S_IMODE(new.stat().st_mode) == 0o600  # a profile holds the user's history
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "new.npz"]


def test_atomic_path_replaces_only_when_the_block_completes(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("converter crashed")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.gguf"]
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["m.gguf"]


def _folder(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _contents(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("can_exchange", [True, False])
def test_atomic_dir_swaps_a_whole_folder(tmp_path, monkeypatch, can_exchange):
    if not can_exchange:
        monkeypatch.setattr(_atomic, "exchange", lambda _a, _b: False)
    target = _folder(tmp_path / "encoder", {"model.onnx": "old", "stale.txt": "x"})
    with atomic_dir(target) as tmp:
        (tmp / "model.onnx").write_text("new")
        (tmp / "encoder.json").write_text("{}")
    assert _contents(target) == {"encoder.json": "{}", "model.onnx": "new"}
    assert os.listdir(tmp_path) == ["encoder"]
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "model.onnx").write_text("half")
        raise KeyboardInterrupt
    assert _contents(target) == {"encoder.json": "{}", "model.onnx": "new"}
    assert os.listdir(tmp_path) == ["encoder"]


def test_the_os_exchange_is_used_where_it_exists(tmp_path):
    a = _folder(tmp_path / "a", {"f": "a"})
    b = _folder(tmp_path / "b", {"f": "b"})
    if not _atomic.exchange(a, b):
        pytest.skip("this filesystem has no atomic exchange; the two-rename path is tested above")
    assert (a / "f").read_text() == "b" and (b / "f").read_text() == "a"


def test_replace_dir_puts_the_old_folder_back_if_the_second_rename_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(_atomic, "exchange", lambda _a, _b: False)
    target = _folder(tmp_path / "encoder", {"model.onnx": "old"})
    new = _folder(tmp_path / "new", {"model.onnx": "new"})
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space"):
        replace_dir(new, target)
    monkeypatch.undo()
    assert _contents(target) == {"model.onnx": "old"}
    assert sorted(os.listdir(tmp_path)) == ["encoder", "new"]


def test_sigint_during_a_profile_write_by_the_learn_cli(tmp_path):
    """Ctrl-C (a real SIGINT) while `python -m fints_edge.learn --forget` is inside Profile.save:
    exit 130, the old profile byte-identical, no temp file left."""
    path = profile(n=4, seed=3).save(tmp_path / "me.npz")
    before = path.read_bytes()
    # np.savez is slowed down (not replaced): it writes part of the zip, says so, then waits for
    # the signal, so that the SIGINT lands inside the write every time.
    script = textwrap.dedent(
        """
        import runpy, signal, sys, time
        # a shell's background job starts with SIGINT ignored; a user's Ctrl-C is not
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import numpy as np
        real = np.savez
        def slow(f, **arrays):
            f.write(b"PK partial zip")
            f.flush()
            print("inside save", file=sys.stderr, flush=True)
            time.sleep(30)
            real(f, **arrays)
        np.savez = slow
        sys.argv = ["python -m fints_edge.learn", "--profile", sys.argv[1], "--forget", "0"]
        runpy.run_module("fints_edge.learn", run_name="__main__")
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().strip() == "inside save"
        assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # mid-write indeed
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["me.npz"]
    assert Profile.load(path).n_items == 4


def test_write_failed_names_the_path_and_the_fix(tmp_path):
    target = tmp_path / "x.onnx"
    err = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert _atomic.write_failed(target, err, "aggregator") == (
        f"{target}: could not write the aggregator (disk quota exceeded; free some space within "
        "your disk quota and try again); no aggregator was written"
    )
    target.write_bytes(b"")
    odd = OSError(errno.EIO, os.strerror(errno.EIO))
    message = _atomic.write_failed(target, odd)
    assert message.endswith("(input/output error); the previous file is intact")
