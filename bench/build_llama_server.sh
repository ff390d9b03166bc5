#!/usr/bin/env bash
# Build llama.cpp's own llama-server from the llama-cpp-python sdist on PyPI (the only
# place this machine can fetch llama.cpp's source from), for bench/teacher.py: unlike
# llama_cpp.server it decodes concurrent requests in one batch. Session 3 built it with
# these flags in 48 minutes at nice 19 beside a busy teacher server.
#   [JOBS=1 nice -n 19] bash bench/build_llama_server.sh     # -> ~/.cache/divconq/llama.cpp/build/bin/llama-server
set -euo pipefail
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
DEST=${DIVCONQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/divconq}/llama.cpp
mkdir -p "$DEST"
python -m pip download "llama-cpp-python==$VERSION" --no-binary :all: --no-deps -d "$DEST" -q
tar xzf "$DEST/llama_cpp_python-$VERSION.tar.gz" -C "$DEST"
# Built in place: the binary finds its shared libraries next to it, in build/bin.
cmake -S "$DEST/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$DEST/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
cmake --build "$DEST/build" --target llama-server -j "${JOBS:-$(nproc)}"
"$DEST/build/bin/llama-server" --version
echo "built $DEST/build/bin/llama-server"
