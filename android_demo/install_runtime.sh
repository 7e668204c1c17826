#!/usr/bin/env bash
# Install the fints-edge runtime (no torch) into the Python at $PYTHON (default: python3).
#
# Every package is installed with --no-deps from requirements-runtime.txt (pinned, the whole
# runtime), then the project's own wheel. FINTS_SKIP="numpy onnxruntime" leaves out packages the
# system already provides (Termux: pip's wheels for those do not install on Android).
# pip's own settings apply (PIP_FIND_LINKS, PIP_INDEX_URL, ...), e.g. to reuse a built
# llama-cpp-python wheel: PIP_FIND_LINKS=/path/to/wheels ./install_runtime.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"
skip=" ${FINTS_SKIP:-} "
reqs="$(mktemp)"
trap 'rm -f "$reqs"' EXIT
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  name="${line%%==*}"
  case "$skip" in
    *" $name "*) echo "skipping $name (the system provides it)" ;;
    *) echo "$line" >> "$reqs" ;;
  esac
done < "$here/requirements-runtime.txt"

"$PY" -m pip install --no-deps ${FINTS_PIP_ARGS:-} -r "$reqs"
"$PY" -m pip install --no-deps ${FINTS_PIP_ARGS:-} "$here"/wheels/fints_edge-*.whl
# The runtime must import without torch (it is never installed here).
"$PY" - <<'PY'
import sys
sys.modules["torch"] = None
import hnswlib, llama_cpp, numpy, onnxruntime, starlette, tokenizers, uvicorn  # noqa: F401
import fints_edge.engine, fints_edge.learn, fints_edge.serve  # noqa: F401
print("fints-edge runtime OK: llama-cpp-python", llama_cpp.__version__, "onnxruntime", onnxruntime.__version__)
PY
# The exact mode's C eval filter (about 8% faster steered decode); without clang, a note only.
"$PY" -m fints_edge.llama.native build --optional
