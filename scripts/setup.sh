#!/usr/bin/env bash
# Installs what building llama.cpp needs (cmake, a C++ compiler, libclang for bindgen)
# when it is missing. Debian/Ubuntu; elsewhere install the equivalents by hand.
set -euo pipefail
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# grep reads the whole list (not -q): under pipefail an early exit would make ldconfig
# die of SIGPIPE and the check report libclang missing.
if ! ldconfig -p 2>/dev/null | grep 'libclang[-.0-9]*\.so' >/dev/null; then
    missing+=(libclang-dev)
fi
# A build folder whose llama.cpp was compiled before glm switched on llama.cpp's RPC
# backend keeps that build (see build.rs): rebuild llama.cpp there, once.
target="${CARGO_TARGET_DIR:-target}"
for lib in "$target"/*/build/llama-cpp-sys-2-*/out/lib*; do
    if [ -e "$lib/libggml-base.a" ] && [ ! -e "$lib/libggml-rpc.a" ]; then
        # $target/<profile>/build/llama-cpp-sys-2-*/out/lib: `cargo clean -p` cleans one
        # profile at a time.
        profile="$(basename "$(dirname "$(dirname "$(dirname "$(dirname "$lib")")")")")"
        case "$profile" in
            debug) flags=() ;;
            release) flags=(--release) ;;
            *) flags=(--profile "$profile") ;;
        esac
        echo "setup: rebuilding llama.cpp ($profile) once, with its RPC backend" >&2
        cargo clean -p llama-cpp-sys-2 "${flags[@]}" >/dev/null 2>&1 || true
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "setup: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
