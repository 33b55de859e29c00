#!/usr/bin/env bash
# One-pass `glm convert --quant q4_k_m` against llama.cpp's two-step path
# (convert_hf_to_gguf.py --outtype bf16, then llama-quantize Q4_K_M) on the same random
# ~1B-parameter GLM-4 checkpoint, in the same run. Prints wall time and peak memory of
# each step and the ratios. See BENCHMARKS.md for how to prepare the inputs.
#
# usage: benches/convert_q4_k_m.sh LLAMA_CPP_DIR PYTHON WORK_DIR
#   LLAMA_CPP_DIR  vendor/llama.cpp of the llama-cpp-python 0.3.36 sdist, with
#                  build/bin/llama-quantize built
#   PYTHON         a Python with torch, transformers, safetensors, numpy (tests/fixtures/requirements.txt)
#   WORK_DIR       scratch space (about 6 GB)
set -euo pipefail
llama_cpp=$(realpath "$1"); python=$2; work=$(realpath -m "$3")
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$work"
checkpoint="$work/glm4-1b"
if [ ! -f "$checkpoint/config.json" ]; then
    "$python" "$root/tests/fixtures/generate.py" --big "$checkpoint" --layers 24 --hidden 2048 --intermediate 5632 --max-shard-mb 2000
fi
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
glm="${CARGO_TARGET_DIR:-$root/target}/release/glm"
quantize="$llama_cpp/build/bin/llama-quantize"
threads=$(nproc)

# measure NAME COMMAND...: runs it under /usr/bin/time, records seconds and peak KiB.
measure() {
    local name=$1; shift
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    /usr/bin/time -f "%e %M" -o "$work/$name.time" "$@" > "$work/$name.log" 2>&1
    read -r secs kib < "$work/$name.time"
    printf '%-28s %8.1f s %9.0f MiB\n' "$name" "$secs" "$((kib / 1024))"
    eval "${name//-/_}_secs=$secs; ${name//-/_}_kib=$kib"
}

echo "checkpoint: $(du -sh "$checkpoint" | cut -f1), $threads threads"
measure glm-convert "$glm" convert "$checkpoint" --quant q4_k_m -o "$work/glm-Q4_K_M.gguf" --force
measure hf-to-bf16 "$python" "$root/benches/hf_convert_bf16.py" "$llama_cpp" "$checkpoint" "$work/bf16.gguf"
measure llama-quantize "$quantize" "$work/bf16.gguf" "$work/llama-Q4_K_M.gguf" Q4_K_M "$threads"
rm -f "$work/bf16.gguf"

awk -v g="$glm_convert_secs" -v a="$hf_to_bf16_secs" -v b="$llama_quantize_secs" \
    -v gm="$glm_convert_kib" -v am="$hf_to_bf16_kib" -v bm="$llama_quantize_kib" 'BEGIN {
    two_step = a + b; peak = (am > bm) ? am : bm
    printf "wall time ratio (glm / two-step): %.2f  (%.1f s vs %.1f s)\n", g / two_step, g, two_step
    printf "peak memory ratio (glm / two-step): %.2f  (%.0f MiB vs %.0f MiB)\n", gm / peak, gm / 1024, peak / 1024
}'
