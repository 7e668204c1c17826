"""fints-edge: per-request personal steering (Fints) for llama.cpp models, on device, no torch.

Only numpy-level modules are imported here; llama_cpp and onnxruntime load where they are used.
"""

from fints_edge.config import EngineConfig
from fints_edge.errors import FintsEdgeError, HistoryError, ProfileError
from fints_edge.history import HistoryItem, read_history
from fints_edge.layers import SITES, AttnReading, Site, cvec_row, hf_layer_of_row
from fints_edge.plan import Plan, Planner, Steering
from fints_edge.profile import FORMAT_VERSION, ModelIdentity, Profile

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "SITES",
    "AttnReading",
    "EngineConfig",
    "FintsEdgeError",
    "HistoryError",
    "HistoryItem",
    "ModelIdentity",
    "Plan",
    "Planner",
    "Profile",
    "ProfileError",
    "Site",
    "Steering",
    "__version__",
    "cvec_row",
    "hf_layer_of_row",
    "read_history",
]
