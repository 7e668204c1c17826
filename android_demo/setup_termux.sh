#!/usr/bin/env bash
# Termux (Android): install the fints-edge runtime next to this script, in ./venv.
# Run inside Termux from the unpacked bundle (not from /sdcard: it cannot hold executables):
#     bash setup_termux.sh && ./run_server.sh
# NOT RUN ON A DEVICE by the project: see README.md, "What was tested".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${PREFIX:-}" ] || [ ! -d "${PREFIX}/bin" ] || ! command -v pkg >/dev/null; then
  echo "error: this is for Termux (no 'pkg' here); on Debian use setup_debian_proot.sh" >&2
  exit 1
fi

# numpy and onnxruntime come from Termux's own repository: pip's wheels are built for glibc
# (manylinux) and do not install on Android's bionic libc. clang + cmake + ninja compile
# llama.cpp (llama-cpp-python) and hnswlib; rust builds tokenizers if no wheel fits.
pkg update -y
pkg install -y python python-pip python-numpy python-onnxruntime clang cmake ninja rust binutils
# A Termux package for tokenizers saves a long Rust build where the repository has one.
pkg install -y python-tokenizers 2>/dev/null && have_tok=tokenizers || have_tok=""

# The venv sees Termux's numpy/onnxruntime (system site packages) and holds everything else.
python -m venv --system-site-packages "$here/venv"
# llama.cpp on aarch64 keeps its ARM defaults (NEON, dotprod where the CPU has it).
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-4}"
# Termux's Python is newer than the 3.11 the project pins and tests: the runtime is plain
# Python 3.11+ code, so the pin is relaxed here (and only here).
FINTS_SKIP="numpy onnxruntime $have_tok" FINTS_PIP_ARGS="--ignore-requires-python" \
  PYTHON="$here/venv/bin/python" "$here/install_runtime.sh"
echo
echo "set up. Start the server:  $here/run_server.sh"
echo "then open http://127.0.0.1:8000/ in Chrome (the link with #token=... signs the app in)"
