#!/usr/bin/env bash
# The Debian userland inside Termux (proot-distro): glibc, so the desktop install works as is
# (manylinux aarch64 wheels for numpy, onnxruntime, tokenizers). Also works on any Debian 12.
#
# In Termux, once:
#     pkg install proot-distro && proot-distro install debian
#     proot-distro login debian --bind "$HOME/android-bundle:/root/android-bundle"
# then inside Debian:
#     cd /root/android-bundle && bash setup_debian_proot.sh && ./run_server.sh
# The server on 127.0.0.1 inside proot is the phone's 127.0.0.1: Chrome reaches it.
# NOT RUN ON A DEVICE by the project: see README.md, "What was tested".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if ! command -v apt-get >/dev/null; then
  echo "error: no apt-get: run this inside 'proot-distro login debian' (or on Debian)" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
# python3 is 3.11 on Debian 12 (bookworm), the version the project is tested with.
# build-essential + cmake compile llama.cpp (llama-cpp-python) and hnswlib.
if [ -z "${FINTS_NO_APT:-}" ]; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
    build-essential cmake ca-certificates
fi
PY="${PYTHON:-python3}"
"$PY" -m venv "$here/venv"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-4}"
PYTHON="$here/venv/bin/python" "$here/install_runtime.sh"
echo
echo "set up. Start the server:  $here/run_server.sh"
