"""Learning on the device: history items become steering signals without torch.

``pairs`` (contrast pairs) -> ``extract`` (signals read through the eval callback) -> ``learner``
(items -> profile) -> ``cli`` (``python -m fints_edge.learn``); ``recipe`` declares what a new
profile stores (layers, sites, reading, layout, opening signals), for the CLI and the server.
"""

from fints_edge.learn.cli import main
from fints_edge.learn.learner import Learned, Learner
from fints_edge.learn.recipe import Recipe, extractor_for, new_extractor

__all__ = ["Learned", "Learner", "Recipe", "extractor_for", "main", "new_extractor"]
