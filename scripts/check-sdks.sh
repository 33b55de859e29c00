#!/usr/bin/env bash
# Runs the official `openai` and `anthropic` Python SDKs (from PyPI) against `glm serve`
# on the bundled tiny checkpoint, and checks that every route answers exactly what
# `glm run` answers for the same prompt under greedy sampling. Run by hand (it needs
# PyPI); .ci/run runs it when GLM_CHECK_SDKS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/glm-target}"
venv="${GLM_SDK_VENV:-$HOME/.cache/glm-sdk-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade openai anthropic

cargo build --release --quiet
glm="$CARGO_TARGET_DIR/release/glm"
work="$(mktemp -d)"
server=""
cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

model="$work/tiny-Q8_0.gguf"
"$glm" convert tests/fixtures/models/glm4moe-tiny --quant q8_0 -o "$model" >/dev/null
prompt="Hello, who are you?"
tokens=16
expected="$("$glm" run "$model" -p "$prompt" --temp 0 -n "$tokens" --no-think --no-mtp 2>/dev/null)"

"$glm" serve "$model" --alias tiny --port 0 --parallel 2 2>"$work/serve.log" &
server=$!
for _ in $(seq 1 100); do
    grep -q "listening on" "$work/serve.log" 2>/dev/null && break
    sleep 0.2
done
url="$(grep -o 'http://[0-9.]*:[0-9]*' "$work/serve.log" | head -n 1)"
if [ -z "$url" ]; then
    echo "glm serve did not start:" >&2
    cat "$work/serve.log" >&2
    exit 1
fi
"$venv/bin/python" scripts/sdk_check.py --base-url "$url" --model tiny \
    --prompt "$prompt" --max-tokens "$tokens" --expected "$expected"
