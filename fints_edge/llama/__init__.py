"""The llama.cpp binding: every use of llama-cpp-python's private API lives in this package,
so an upgrade of llama-cpp-python is this folder's work.

``model`` (open, check, identify a GGUF), ``arch`` (the per-architecture graph-tensor table),
``inject`` (control vector and eval-callback injectors), ``native`` (the C eval filter),
``build_flags`` (llama.cpp's CPU flags), ``doctor`` (does this build decode?), ``context``
(the KV cache, batches and sampler behind llama-cpp-python's public surface).
"""
