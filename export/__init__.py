"""The offline half of fints-edge (torch): models, signal extraction, profiles, ONNX/GGUF export.

May import ``fints_edge`` (the profile schema lives there); ``fints_edge`` never imports this.
"""
