#!/usr/bin/env bash
# Runs one fuzz target the way FUZZING.md's figures were taken:
#   fuzz/run.sh TARGET [SECONDS] [extra cargo-fuzz flags, e.g. --sanitizer none]
# One libFuzzer process; its dictionary when there is one; the final stats printed.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET [SECONDS] [cargo fuzz flags]}
seconds=${2:-600}
shift $(( $# < 2 ? $# : 2 ))
dict=()
[[ -f dicts/$target.dict ]] && dict=(-dict="dicts/$target.dict")
exec cargo +nightly fuzz run "$@" "$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "${dict[@]}"
