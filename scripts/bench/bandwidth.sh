#!/usr/bin/env bash
# Measures the machine's memory read bandwidth (scripts/bench/bandwidth.c: THREADS threads
# summing a SIZE_MIB buffer, best of PASSES) and prints "<GB/s> GB/s read (...)".
# The buffer must be several times the last-level cache (lscpu); 2048 MiB by default.
# usage: scripts/bench/bandwidth.sh [THREADS=2] [SIZE_MIB=2048] [PASSES=10]
# environment: GLM_BENCH_HOME (where the binary is built) [default: ~/.cache/glm-bench]
set -euo pipefail
threads=${1:-2}; mib=${2:-2048}; passes=${3:-10}
here=$(cd "$(dirname "$0")" && pwd)
bin=${GLM_BENCH_HOME:-$HOME/.cache/glm-bench}/bin/bandwidth
if [ ! -x "$bin" ] || [ "$here/bandwidth.c" -nt "$bin" ]; then
    command -v cc >/dev/null || { echo "bandwidth: a C compiler is missing" >&2; exit 1; }
    mkdir -p "$(dirname "$bin")"
    cc -O3 -march=native -fopenmp "$here/bandwidth.c" -o "$bin" \
        || { echo "bandwidth: compiling $here/bandwidth.c failed" >&2; exit 1; }
fi
OMP_PROC_BIND=close OMP_PLACES=cores "$bin" "$mib" "$passes" "$threads"
