#!/usr/bin/env bash
# Builds the cuda binaries that benches/gpu_check.sh runs and packs them, stripped and
# xz-compressed, into gpu/ (git-ignored), for a GPU machine that has no Rust:
#
#   scripts/pack-gpu.sh            # -> gpu/{qseek,throughput,model_reference}.xz
#
# The model test looks for its fixtures at this checkout's path (its build-time
# CARGO_MANIFEST_DIR), recorded in gpu/manifest_dir: gpu_check.sh links it there.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$PWD/target}
scripts/build-cuda.sh --bin qseek --example throughput --test model_reference
mkdir -p gpu
pack() {
    strip -o "gpu/$2" "$1"
    xz -6 -f "gpu/$2"
}
pack "$target/release/qseek" qseek
pack "$target/release/examples/throughput" throughput
test_bin=$(ls -t "$target"/release/deps/model_reference-* | grep -v '\.d$' | head -n 1)
pack "$test_bin" model_reference
echo "$PWD" > gpu/manifest_dir
ls -l gpu
