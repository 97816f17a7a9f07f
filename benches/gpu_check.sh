#!/usr/bin/env bash
# Every GPU check and measurement of the GPU issue, in one call on a GPU machine that
# has CUDA, PyTorch and transformers but no Rust. The binaries come from
# `scripts/pack-gpu.sh` (built elsewhere), carried in gpu/:
#
#   bash benches/gpu_check.sh [gpu/]      # report on stdout; files under $OUT (or /tmp)
#
# 1. the model reference tests on the GPU (f32 parity with transformers, every device);
# 2. model only, batch 64, full ViT-g with random weights, qseek vs transformers in the
#    same run (benches/compare_pytorch.py --device cuda): images/s, texts/s, ITM pairs/s,
#    ITM one image x many texts/s; f32 and bf16 (vision model) policies;
# 3. `qseek index --device cuda --dtype bf16 --batch 64` end to end on 2 048 JPEGs
#    (1024x768): images/s, to compare with qseek's own model-only rate;
# 4. a Flickr30K-sized eval (1 000 images x 5 000 captions, k_test 128, synthetic photos
#    and captions) end to end, timed.
# Each step has its own time limit and failures do not stop the later steps.
#
# A dry run elsewhere (checks the script, measures nothing): DEVICE=cpu
# MODEL=tests/fixtures/models/tiny N_INDEX=16 N_EVAL=8 BATCH=4 with a CPU build packed
# into the folder.
set -uo pipefail
cd "$(dirname "$0")/.."
pack=$(cd "${1:-gpu}" && pwd)
out=${OUT:-/tmp/qseek-gpu}
device=${DEVICE:-cuda}
n_index=${N_INDEX:-2048}
n_eval=${N_EVAL:-1000}
batch=${BATCH:-64}
mkdir -p "$out"
work=$(mktemp -d)
log() { printf '\n== %s (%s)\n' "$*" "$(date -u +%T)"; }

# CUDA 13 runtime libraries: PyTorch's wheels carry them.
libs=$(python3 - <<'PY'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for lib in glob.glob(os.path.join(sp, "nvidia", "**", "lib"), recursive=True):
        dirs.add(lib)
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
for b in qseek throughput model_reference; do
    xz -dc "$pack/$b.xz" > "$work/$b" && chmod +x "$work/$b"
done
manifest_dir=$(cat "$pack/manifest_dir")
if [ "$manifest_dir" != "$PWD" ] && [ ! -e "$manifest_dir" ]; then
    mkdir -p "$(dirname "$manifest_dir")" && ln -s "$PWD" "$manifest_dir"
fi

log "1. model reference tests (CPU and CUDA)"
timeout 300 "$work/model_reference" --test-threads 1 2>&1 | tail -n 15

full=${MODEL:-$work/full}
if [ ! -e "$full/config.json" ]; then
    log "full ViT-g checkpoint, random weights"
    timeout 600 python3 tests/fixtures/make_fixtures.py --full "$full" 2>&1 | tail -n 2
fi

log "2. model only, batch $batch, qseek vs transformers on the same device"
for dtype in f32 bf16; do
    timeout 600 python3 benches/compare_pytorch.py --model "$full" --device "$device" --exe "$work/throughput" \
        --dtype "$dtype" --batch "$batch" --images $((4 * batch)) --texts $((16 * batch)) \
        --pairs $((16 * batch)) --reps 3 --threads 8 --json \
        2>&1 | tee "$out/compare_$dtype.txt" | tail -n 16
done

log "3. qseek index end to end, $n_index JPEGs 1024x768, --dtype bf16 --batch $batch"
python3 benches/synthetic_photos.py --out "$work/photos" --count "$n_index" --size 1024x768
start=$(date +%s.%N)
timeout 600 "$work/qseek" index "$work/photos" -m "$full" --index "$work/index" \
    --device "$device" --dtype bf16 --batch "$batch" --json -q > "$out/index.json"
echo "index exit $?: $n_index photos in $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s"
tail -n 1 "$out/index.json" | head -c 600; echo

log "4. Flickr30K-sized eval: $n_eval images x 5 captions, k_test 128"
python3 benches/synthetic_photos.py --out "$work/eval" --count "$n_eval" --size 500x375 \
    --annotations "$work/eval.json" --captions 5
start=$(date +%s)
timeout 600 "$work/qseek" eval --annotations "$work/eval.json" --images "$work/eval" -m "$full" \
    --cache "$work/eval_cache" --device "$device" --batch $((2 * batch)) --k-test 128 --json -q \
    > "$out/eval.json"
echo "eval exit $?, $(( $(date +%s) - start )) s end to end"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ('images','texts','itm_pairs','seconds')})" "$out/eval.json"
rm -rf "$work"
