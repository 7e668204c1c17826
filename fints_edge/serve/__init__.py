"""The local OpenAI-compatible server and web app (``python -m fints_edge.serve``).

Layers, bottom up: ``settings`` -> ``auth``, ``http``, ``wire`` (the OpenAI format), ``worker``
(the one engine thread), ``profiles`` (store and builder) -> ``routes`` -> ``app`` -> ``__main__``.
"""

from fints_edge.serve.app import create_app, open_engine
from fints_edge.serve.settings import Settings

__all__ = ["Settings", "create_app", "open_engine"]
