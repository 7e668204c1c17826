"""The server's settings: everything the app needs, at the bottom of ``fints_edge.serve``.

The CLI (``fints_edge.serve.__main__``) fills it from flags; tests build it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fints_edge.calibrate import DEFAULT_BUDGET_S
from fints_edge.config import DEFAULTS, EngineConfig


@dataclass(frozen=True)
class Settings:
    """Everything the app needs; the CLI fills it from flags, tests build it directly."""

    model: Path
    profiles_dir: Path
    encoder_dir: Path
    aggregator_path: Path
    token: str | None  # None = no authentication (--no-auth)
    # every request's knobs unless its "fints" object says otherwise (fints_edge.config)
    engine: EngineConfig = DEFAULTS
    # the knobs of ``engine`` the operator's flags named: they win over the model's row and a
    # profile's calibration, as the chat's flags do (fints_edge.model_defaults)
    operator_knobs: frozenset[str] = frozenset()
    max_tokens_limit: int = 512  # the most a request may ask for
    max_waiting: int = 4  # requests waiting behind the running one; more get 503
    max_body: int = 1 << 20  # bytes, JSON requests
    max_upload: int = 16 << 20  # bytes, history uploads
    max_input_chars: int = 8000
    default_user: str | None = None
    model_id: str = field(default="")
    # a build with calibration (POST /v1/profiles calibrate=1) tries settings this long at most
    # (None: every setting of the grid, as ``learn --calibrate``)
    calibration_budget_s: float | None = DEFAULT_BUDGET_S

    def __post_init__(self) -> None:
        if not self.model_id:
            object.__setattr__(self, "model_id", Path(self.model).stem)

    def redact(self, message: str) -> str:
        """No absolute server paths in answers: the profiles folder shows as ``profiles/``."""
        return message.replace(str(self.profiles_dir) + "/", "profiles/")
