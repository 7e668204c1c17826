"""One way every command line tool ends: exit 0, or one `error:` line and exit 1, never a traceback.

`@cli_main` wraps a `main(argv) -> int`: a `FintsEdgeError` (anything the user can fix) becomes
one line on stderr and exit code 1; Ctrl-C becomes exit code 130 with the tool's own note of
what was kept; an OSError from the user's files (full disk, permissions) is stated with the path.
Bugs (any other exception) still show their traceback: hiding them would hide the fix.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from fints_edge.errors import FintsEdgeError


class Main(Protocol):
    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


def fail(message: str) -> int:
    """Print one `error:` line (newlines folded) and return the exit code for it."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return 1


def cli_main(interrupted: str = "interrupted") -> Callable[[Main], Main]:
    """Decorate a CLI's main; ``interrupted`` is what Ctrl-C prints (say what was kept)."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            try:
                return main(argv)
            except FintsEdgeError as e:
                return fail(str(e))
            except OSError as e:  # disk full, read-only folder, permissions: the user can act
                where = f"{e.filename}: " if e.filename else ""
                return fail(f"{where}{e.strerror or e}")
            except KeyboardInterrupt:
                print(f"\n{interrupted}", file=sys.stderr)
                return 130

        return run

    return wrap
