"""fints_edge.llama.native.load: "not built" and "built but failed to load (why)" are told apart,
and a build over a broken library replaces it. (The filter's parity: tests/test_native.py.)"""

from __future__ import annotations

import logging
import shutil
import subprocess

import pytest

from fints_edge.llama import native

HAS_CC = bool(shutil.which("cc") or shutil.which("gcc"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private, empty cache folder; load()'s cache is cleared before and after."""
    monkeypatch.setenv("FINTS_EDGE_CACHE", str(tmp_path))
    monkeypatch.delenv(native.DISABLE_ENV, raising=False)
    native.load.cache_clear()
    yield tmp_path
    native.load.cache_clear()


def test_no_library_is_not_built():
    assert not native.library_path().exists()
    assert native.load() is None
    assert native.status() == (
        "exact-mode C filter: not built (`python -m fints_edge.llama.native build`); "
        "Python filter in use"
    )


def test_a_damaged_library_is_built_but_failed_to_load_with_the_reason(caplog):
    path = native.library_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x7fELF but not really a shared object")
    with caplog.at_level(logging.WARNING, logger="fints_edge"):
        assert native.load() is None
    line = native.status()
    assert line.startswith("exact-mode C filter: built but failed to load (")
    assert str(path) in line and "native build` to rebuild it" in line and "not built" not in line
    assert "\n" not in line
    assert "built but failed to load" in caplog.text  # said once, where the filter was wanted


def _compile(src: str, out) -> None:
    c = out.with_suffix(".c")
    c.write_text(src)
    subprocess.run(["cc" if shutil.which("cc") else "gcc", "-shared", "-fPIC", str(c), "-o",
                    str(out)], check=True)  # fmt: skip


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_a_library_of_another_abi_says_so():
    path = native.library_path()
    path.parent.mkdir(parents=True)
    _compile("int fe_filter_abi(void) { return 99; }\n", path)
    assert native.load() is None
    assert native.status().startswith(
        f"exact-mode C filter: built but for ABI 99 while this fints-edge speaks ABI {native.ABI}"
    )


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_build_replaces_a_library_that_fails_to_load():
    path = native.library_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    assert native.build() == path
    native.load.cache_clear()
    assert native.load() is not None
    assert native.status() == f"exact-mode C filter: built ({path.name})"
