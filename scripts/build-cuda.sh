#!/usr/bin/env bash
# Builds qseek with CUDA (`cargo build --release --features cuda`) on a machine without
# a system CUDA toolkit, from PyPI's CUDA 13.0 packages (pinned below).
#
#   scripts/build-cuda.sh [extra cargo args...]     # -> target/release/qseek
#
# Why each step:
# - nvcc, its headers (crt, cccl) and nvvm compile candle's kernels to PTX. nvvm must be
#   the toolkit's own 13.0 (the unpinned nvidia-cuda-nvcc pulls nvvm 13.5, whose PTX ISA
#   9.5 ptxas 13.0 and the 580 drivers refuse).
# - candle 0.11 links libcudart, libcublas(Lt), libcurand and libnvrtc dynamically: the
#   wheels ship them as lib*.so.N only, so the linker gets lib*.so symlinks.
# - libcuda is the driver's, not the toolkit's: the link needs a stub exporting the
#   driver API (soname libcuda.so.1), made here from cudarc's own bindings. At run time
#   the real driver's libcuda.so.1 is used.
#
# Runs on NVIDIA drivers >= 580 (CUDA 13.0; the GPU machines here run 580). At run time
# LD_LIBRARY_PATH must reach libcudart.so.13, libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10 and libnvrtc.so.13: this toolkit's lib folder (printed at the end),
# or the nvidia/*/lib folders of a PyTorch install of CUDA 13.
#
# With a normal CUDA toolkit installed (nvcc on PATH), plain
# `cargo build --release --features cuda` works and this script is not needed.
#
# Environment: QSEEK_CUDA_DIR (where the toolkit goes, default .cuda/ here),
# CUDA_COMPUTE_CAP (default 90: H100/H200; 80 for A100, 89 for L4/L40).
set -euo pipefail
cd "$(dirname "$0")/.."
tk=${QSEEK_CUDA_DIR:-$PWD/.cuda}
packages=(
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
    nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
)
stamp="$tk/.installed"
if [ "$(cat "$stamp" 2>/dev/null)" != "${packages[*]}" ]; then
    echo "build-cuda: installing CUDA 13.0 from PyPI into $tk" >&2
    rm -rf "$tk/pkgs"
    python3 -m pip install --quiet --no-deps --target "$tk/pkgs" "${packages[@]}"
    echo "${packages[*]}" > "$stamp"
fi
cuda="$tk/pkgs/nvidia/cu13"
[ -x "$cuda/bin/nvcc" ] || { echo "build-cuda: no nvcc in $cuda/bin" >&2; exit 1; }

for lib in cudart cublas cublasLt curand nvrtc; do
    so=$(cd "$cuda/lib" && ls "lib$lib.so."* | grep -E "^lib$lib\.so\.[0-9]+$" | head -n 1)
    ln -sf "$so" "$cuda/lib/lib$lib.so"
done

# The driver stub: every cu* function cudarc declares, as an empty symbol.
cudarc=$(cargo metadata --format-version 1 --features cuda 2>/dev/null |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
mkdir -p "$cuda/lib/stubs"
grep -oE '^\s+pub fn cu[A-Za-z0-9_]+\(|^\s+fn cu[A-Za-z0-9_]+\(' "$(dirname "$cudarc")/src/driver/sys/mod.rs" |
    sed -E 's/^\s+(pub )?fn //; s/\($//' | sort -u |
    awk '{ print "void " $1 "(void) {}" }' > "$cuda/lib/stubs/libcuda_stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so" "$cuda/lib/stubs/libcuda_stub.c"

export CUDA_HOME="$cuda" PATH="$cuda/bin:$PATH" CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
cargo build --release --features cuda "$@"
echo "build-cuda: built into ${CARGO_TARGET_DIR:-target}/release; at run time: LD_LIBRARY_PATH=$cuda/lib" >&2
