"""One error type for everything a user can fix; the CLIs print it as one line."""


class FintsEdgeError(Exception):
    """A problem with the user's files, flags or input, stated with the fix."""


class ProfileError(FintsEdgeError):
    """A profile file is missing, corrupt, from another format version, or for another model."""


class HistoryError(FintsEdgeError):
    """A history JSONL file is unreadable, empty, or has a bad line."""


class NoUsableItems(FintsEdgeError):
    """Every history item lacked a contrast (its negative equals the output): nothing to learn."""
