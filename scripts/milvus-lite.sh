#!/usr/bin/env bash
# Installs milvus-lite 2.5.1 (Milvus's C++ engine as one server binary, from PyPI) into
# DIR (default target/milvus-lite) and prints the folder holding the `milvus` binary and
# its libraries: tests/engine.rs reads it from QSEEK_MILVUS_LITE.
#   export QSEEK_MILVUS_LITE=$(scripts/milvus-lite.sh)
# 2.5.1, not 3.x: 3.x reimplements the server in Python; 2.4-2.5 run Milvus's own engine.
set -euo pipefail
dir=${1:-target/milvus-lite}
# A venv where python3-venv is installed; else pip's --target (Debian without python3-venv).
if [ -x "$dir/venv/bin/python" ] || python3 -m venv "$dir/venv" >&2 2>/dev/null; then
    "$dir/venv/bin/pip" install -q --no-deps milvus-lite==2.5.1 >&2
    lib=$(ls -d "$dir"/venv/lib/python3*/site-packages/milvus_lite/lib | head -n 1)
else
    rm -rf "$dir/venv"
    python3 -m pip install -q --no-deps --target "$dir/site" milvus-lite==2.5.1 >&2
    lib="$dir/site/milvus_lite/lib"
fi
test -x "$lib/milvus"
cd "$lib" && pwd
