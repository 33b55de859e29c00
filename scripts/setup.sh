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
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "setup: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
