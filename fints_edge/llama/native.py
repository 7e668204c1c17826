"""The optional C eval filter (``c_src/eval_filter.c``): exact mode without Python in every node.

llama.cpp asks the eval callback about each graph node; answered in Python that costs decode
speed (``make bench``: ``exact_python`` against ``exact``). The filter answers in C from a list of tensor names and calls Python only for those.
It is compiled once by ``python -m fints_edge.llama.native build`` (``make setup`` runs it) into the
cache folder, keyed by its source, and loaded with ctypes. Without a C compiler everything still
works: the injector answers in Python. ``FINTS_EDGE_NATIVE=0`` turns the filter off.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fints_edge._cli import cli_main
from fints_edge._paths import cache_dir
from fints_edge.errors import FintsEdgeError

SOURCE = Path(__file__).with_name("c_src") / "eval_filter.c"
ABI = 1  # fe_filter_abi() of the source this module speaks to
MAX_NAMES = 128  # FE_MAX_NAMES
NAME_LEN = 64  # FE_NAME_LEN (GGML_MAX_NAME)
DISABLE_ENV = "FINTS_EDGE_NATIVE"
log = logging.getLogger("fints_edge")


class Filter(ctypes.Structure):
    """Mirror of ``fe_filter``: the Python callback, ggml_get_name, and the names to stop at."""

    _fields_ = [
        ("python", ctypes.c_void_p),
        ("get_name", ctypes.c_void_p),
        ("n_names", ctypes.c_int),
        ("names", (ctypes.c_char * NAME_LEN) * MAX_NAMES),
    ]

    def set_names(self, names: Sequence[bytes]) -> None:
        """Stop at these tensors; more than fit -> ask Python about every tensor (still correct)."""
        if len(names) > MAX_NAMES or any(len(n) >= NAME_LEN for n in names):
            self.n_names = -1
            return
        for i, name in enumerate(names):
            self.names[i].value = name
        self.n_names = len(names)


def library_path() -> Path:
    """Where the filter for this source and machine is (or would be) built."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return cache_dir() / "native" / f"eval_filter-{digest}-{platform.machine()}.so"


def _compiler() -> list[str]:
    """$CC if set; else Python's own compiler, or the usual names (Termux: clang as cc)."""
    env = os.environ.get("CC")
    choices = [env] if env else [sysconfig.get_config_var("CC") or "", "cc", "gcc", "clang"]
    for cc in choices:
        cmd = shlex.split(cc)
        if cmd and shutil.which(cmd[0]):
            return cmd
    raise FintsEdgeError(
        f"no C compiler ({', '.join(c for c in choices if c)}) found: the exact mode stays on its "
        "Python filter (slower decode: `make bench`, exact_python); install a C compiler (e.g. `apt install gcc`, "
        "Termux: `pkg install clang`) or set CC"
    )


def build() -> Path:
    """Compile the filter into the cache folder (atomically); a no-op when a loadable one is
    already there (one that fails to load is compiled again, in its place)."""
    out = library_path()
    if out.is_file() and _open_library(out)[0] is not None:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        partial = Path(tmp) / out.name
        cmd = [*_compiler(), "-O2", "-shared", "-fPIC", str(SOURCE), "-o", str(partial)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise FintsEdgeError(
                f"compiling {SOURCE.name} failed ({last}); see `{shlex.join(cmd)}`"
            )
        os.replace(partial, out)
    return out


_BUILD_CMD = "`python -m fints_edge.llama.native build`"
# Why load() last gave None: "off", "not built", or a sentence on a built filter that failed to
# load; None after a successful load. Read by status().
_why_not: str | None = None


def _open_library(path: Path) -> tuple[ctypes.CDLL | None, str | None]:
    """(the library, None) or (None, why the file at ``path`` cannot serve as the filter)."""
    try:
        lib = ctypes.CDLL(str(path))
        abi = lib.fe_filter_abi()
    except OSError as e:  # not a shared object, wrong machine, missing dependency
        return None, f"built but failed to load ({e}); run {_BUILD_CMD} to rebuild it"
    except AttributeError:
        return None, (
            f"built but failed to load ({path} has no fe_filter_abi); run {_BUILD_CMD} to "
            "rebuild it"
        )
    if abi != ABI:
        return None, (
            f"built but for ABI {abi} while this fints-edge speaks ABI {ABI} ({path}); run "
            f"{_BUILD_CMD} to rebuild it"
        )
    return lib, None


@functools.cache
def load() -> ctypes.CDLL | None:
    """The built filter, or None: turned off, not built, or built but failing to load (from
    another machine or ABI, or damaged); :func:`status` says which, and a built filter that
    fails to load is logged once."""
    global _why_not
    if os.environ.get(DISABLE_ENV, "1") == "0":
        _why_not = "off"
        return None
    path = library_path()
    if not path.is_file():
        _why_not = "not built"
        return None
    lib, _why_not = _open_library(path)
    if lib is None:
        log.warning("exact-mode C filter: %s; the Python filter is in use", _why_not)
        return None
    lib.fe_filter_eval.restype = ctypes.c_bool
    lib.fe_filter_eval.argtypes = [ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p]
    return lib


def status() -> str:
    """One line for the doctor."""
    if load() is not None:
        return f"exact-mode C filter: built ({library_path().name})"
    if _why_not == "off":
        return f"exact-mode C filter: off ({DISABLE_ENV}=0)"
    if _why_not == "not built":
        return f"exact-mode C filter: not built ({_BUILD_CMD}); Python filter in use"
    return f"exact-mode C filter: {_why_not}; Python filter in use"


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fints_edge.llama.native",
        description="Build the optional C eval filter that speeds up the exact steering mode.",
    )
    p.add_argument("action", choices=["build", "status"])
    p.add_argument(
        "--optional",
        action="store_true",
        help="without a C compiler, print a note and exit 0 (the Python filter stays in use)",
    )
    args = p.parse_args(argv)
    if args.action == "build":
        try:
            print(f"exact-mode C filter: built {build()}")
        except FintsEdgeError as e:
            if not args.optional:
                raise
            print(f"note: {e}")
        return 0
    print(status())
    return 0


if __name__ == "__main__":
    sys.exit(main())
