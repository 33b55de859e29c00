#!/usr/bin/env bash
# Builds glm with `--features vulkan` and checks it against the CPU build on Mesa's
# software Vulkan driver (lavapipe), so the Vulkan backend is tested without a GPU.
#
# For each tiny fixture checkpoint the CPU glm converts it to an f32 GGUF; the CPU and
# the Vulkan glm then print the logits of every position of each token sequence of the
# fixture's reference.json (and, for the vision fixtures, of its image prompt), and the
# largest |difference| must stay under VK_TOLERANCE (VK_IMAGE_TOLERANCE with an image).
# The Vulkan run must also show, in llama.cpp's log, that the model (and the projector)
# went to the lavapipe device, every layer of it.
#
# Debian 12. Installs, only when missing (a second run reuses everything):
#   * apt: mesa-vulkan-drivers (lavapipe), libvulkan1 (the loader), glslc, python3;
#   * Debian 13's libvulkan-dev and spirv-headers (headers and CMake files, 1.4.309),
#     fetched through a private apt state and unpacked with `dpkg -x` into a private
#     prefix: Debian 12's headers (1.3.239) are too old for this llama.cpp (no
#     vk::LayerSettingEXT). Nothing from Debian 13 is installed system-wide.
#
# Environment:
#   GLM_CPU=path              the CPU glm to compare with (default: `cargo build --release`
#                             in $CARGO_TARGET_DIR, or $HOME/.cache/glm-target)
#   GLM_VULKAN=path           a Vulkan glm already built (skips the build)
#   GLM_VULKAN_TARGET_DIR     cargo target dir of the Vulkan build ($HOME/.cache/glm-target-vulkan)
#   GLM_VULKAN_SDK            the private prefix ($HOME/.cache/glm-vulkan-sdk)
#   GLM_VULKAN_KEEP=dir       keep the GGUFs, logits and logs there (default: a temp dir)
#   VK_TOLERANCE, VK_IMAGE_TOLERANCE   override the tolerances below
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Largest |Δlogit| allowed between the CPU and the lavapipe build, over all positions and
# vocabulary entries of a case. Both builds run f32 weights, an f32 KV cache and no flash
# attention, but ggml-vulkan's matrix multiplication copies operands that are not
# contiguous in memory to f16 first — in attention, the permuted query and key views — so
# the Vulkan logits carry f16 rounding (the CPU build with an f16 KV cache moves them as
# much: 0.025 on glm-tiny). Measured on this llama.cpp (Debian 12, Mesa 22.3.6
# lavapipe, x86-64; BENCHMARKS.md, "Vulkan parity"), at most 0.060 over the token cases
# (logits up to ~21, rows with a standard deviation of ~4.4; 3.2e-3 of the largest logit)
# and 0.157 for a prompt with an image, where the vision projector runs on Vulkan as
# well. The tolerances are about 3x those: room for another driver's or CPU's rounding,
# while a broken kernel, which moves logits by units, still fails.
VK_TOLERANCE=${VK_TOLERANCE:-0.2}
VK_IMAGE_TOLERANCE=${VK_IMAGE_TOLERANCE:-0.5}

sdk=${GLM_VULKAN_SDK:-$HOME/.cache/glm-vulkan-sdk}
vk_target=${GLM_VULKAN_TARGET_DIR:-$HOME/.cache/glm-target-vulkan}
cpu_target=${CARGO_TARGET_DIR:-$HOME/.cache/glm-target}
trixie_pkgs=(libvulkan-dev spirv-headers)

say() { echo "check-vulkan: $*" >&2; }
die() { echo "check-vulkan: FAIL: $*" >&2; exit 1; }

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

# --- 1. System packages: lavapipe, the loader, glslc ---------------------------------
icd=""
find_icd() {
    icd=""
    for f in /usr/share/vulkan/icd.d/lvp_icd.*.json /etc/vulkan/icd.d/lvp_icd.*.json; do
        if [ -f "$f" ]; then icd=$f; return 0; fi
    done
    return 1
}
# (`ldconfig -p` is read whole first: `| grep -q` would end it early, and pipefail
# would take its SIGPIPE for a failure.)
libs() { ldconfig -p 2>/dev/null || true; }
missing=()
find_icd || missing+=(mesa-vulkan-drivers)
command -v glslc >/dev/null 2>&1 || missing+=(glslc)
[[ $(libs) == *'libvulkan.so.1 '* ]] || missing+=(libvulkan1)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    find_icd || die "no lavapipe ICD file (lvp_icd.*.json) after installing mesa-vulkan-drivers"
fi
vk_loader=$(libs | awk '/libvulkan\.so\.1 / && !n++ {print $NF}')
[ -n "$vk_loader" ] || die "libvulkan.so.1 not found"

# --- 2. Debian 13 Vulkan and SPIR-V headers in a private prefix -----------------------
# Layout of $sdk/prefix (what VULKAN_SDK and CMAKE_PREFIX_PATH point at):
#   include/        -> the unpacked usr/include (vulkan/, vk_video/, spirv/)
#   share/cmake/    -> the packages' CMake configs (SPIRV-HeadersConfig.cmake, …)
#   lib/libvulkan.so -> the system loader, libvulkan.so.1 (the link-time name)
if [ ! -f "$sdk/prefix/include/vulkan/vulkan.hpp" ] \
    || [ ! -f "$sdk/prefix/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake" ]; then
    say "fetching Debian 13 ${trixie_pkgs[*]} into $sdk"
    apt_dir=$sdk/apt
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -f "$keyring" ] || die "$keyring missing (package debian-archive-keyring)"
    echo "deb [signed-by=$keyring] http://deb.debian.org/debian trixie main" >"$apt_dir/sources.list"
    # A private apt state: the system's sources and package database are not touched.
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
        -o Dir::State::status=/dev/null -o APT::Sandbox::User=root -qq)
    apt-get "${apt_opts[@]}" update
    (cd "$apt_dir/debs" && rm -f ./*.deb && apt-get "${apt_opts[@]}" download "${trixie_pkgs[@]}")
    rm -rf "$sdk/root" "$sdk/prefix"
    for deb in "$apt_dir"/debs/*.deb; do dpkg -x "$deb" "$sdk/root"; done
    mkdir -p "$sdk/prefix/lib"
    ln -s ../root/usr/include "$sdk/prefix/include"
    ln -s ../root/usr/share "$sdk/prefix/share"
fi
# Re-pointed every run: the loader's path is the system's, not the prefix's.
ln -sfn "$vk_loader" "$sdk/prefix/lib/libvulkan.so"
vk_hdr_version=$(awk '/^#define VK_HEADER_VERSION / {print $3}' "$sdk/prefix/include/vulkan/vulkan_core.h")
say "Vulkan headers 1.x.$vk_hdr_version in $sdk/prefix, loader $vk_loader, ICD $icd"

# --- 3. Build ------------------------------------------------------------------------
# Release, like the CPU build it is compared with and like what ships. llama.cpp's CMake
# build type follows cargo's profile (Release, or RelWithDebInfo for a debug build), so a
# debug Vulkan build would differ from the release CPU build in more than the backend.
# GGML_* variables are forwarded to llama.cpp's CMake and fingerprinted by cargo, so the
# run-time GGML_VK_VISIBLE_DEVICES must not reach the build (it would force a rebuild).
build_env=(env -u GGML_VK_VISIBLE_DEVICES
    VULKAN_SDK="$sdk/prefix"
    CMAKE_PREFIX_PATH="$sdk/prefix${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
    CPLUS_INCLUDE_PATH="$sdk/prefix/include${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}"
    C_INCLUDE_PATH="$sdk/prefix/include${C_INCLUDE_PATH:+:$C_INCLUDE_PATH}"
    CARGO_TARGET_DIR="$vk_target")
if [ -n "${GLM_VULKAN:-}" ]; then
    glm_vk=$GLM_VULKAN
    [ -x "$glm_vk" ] || die "GLM_VULKAN=$glm_vk is not an executable"
else
    t0=$(date +%s)
    say "building --release --features vulkan in $vk_target"
    "${build_env[@]}" nice -n 19 cargo build --release --features vulkan --bin glm
    say "vulkan build: $(($(date +%s) - t0)) s"
    glm_vk=$vk_target/release/glm
fi

if [ -n "${GLM_CPU:-}" ]; then
    glm_cpu=$GLM_CPU
    [ -x "$glm_cpu" ] || die "GLM_CPU=$glm_cpu is not an executable"
else
    t0=$(date +%s)
    say "building the CPU glm (--release) in $cpu_target"
    env -u GGML_VK_VISIBLE_DEVICES CARGO_TARGET_DIR="$cpu_target" \
        nice -n 19 cargo build --release --bin glm
    say "cpu build: $(($(date +%s) - t0)) s"
    glm_cpu=$cpu_target/release/glm
fi

# --- 4. Parity -----------------------------------------------------------------------
if [ -n "${GLM_VULKAN_KEEP:-}" ]; then
    work=$GLM_VULKAN_KEEP
    mkdir -p "$work"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi
fixtures=$root/tests/fixtures/models
models=(glm-tiny glm4-tiny glm4moe-tiny glm4moe-air-tiny glm47flash-tiny glm41v-tiny glm45v-tiny)
vision=" glm41v-tiny glm45v-tiny "
# The Vulkan runs: lavapipe only (VK_ICD_FILENAMES), shown to ggml, which otherwise skips
# devices of type CPU when it picks its devices; llama.cpp's log on stderr.
vk_env=(env VK_ICD_FILENAMES="$icd" GGML_VK_VISIBLE_DEVICES=0 GLM_LLAMA_LOG=1)
exact=(--cache-type f32 --flash-attn off)
manifest=$work/cases.tsv
: >"$manifest"

# The last line of a glm error log that is glm's own, not llama.cpp's.
reason() { grep -v -E '^(llama|load|print_info|ggml|clip|mtmd|\.)' "$1" | tail -n1; }

# One logits run of each build; $1 = case name, $2 = its tolerance, the rest = `glm
# logits` arguments.
both() {
    local name=$1 tolerance=$2 off
    shift 2
    "$glm_cpu" logits "$@" "${exact[@]}" -o "$work/$name.cpu.json" --force \
        2>"$work/$name.cpu.log" || die "$name: the CPU glm failed: $(reason "$work/$name.cpu.log")"
    "${vk_env[@]}" "$glm_vk" logits "$@" "${exact[@]}" -o "$work/$name.vk.json" --force \
        2>"$work/$name.vk.log" || die "$name: the Vulkan glm failed: $(reason "$work/$name.vk.log")"
    # The model must have gone to lavapipe, every layer of it, and so must the projector.
    grep -q 'using device Vulkan0 (llvmpipe' "$work/$name.vk.log" \
        || die "$name: llama.cpp did not use the lavapipe device (log: $work/$name.vk.log)"
    case "$*" in *--image*)
        grep -q 'CLIP using Vulkan0 backend' "$work/$name.vk.log" \
            || die "$name: the vision projector did not run on Vulkan (log: $work/$name.vk.log)"
        ;;
    esac
    off=$(grep -o -m1 'offloaded [0-9]*/[0-9]* layers to GPU' "$work/$name.vk.log" || true)
    [ -n "$off" ] && [ "$(echo "$off" | awk -F'[ /]' '{print ($2 == $3)}')" = 1 ] \
        || die "$name: not every layer was offloaded (${off:-no offload line in $work/$name.vk.log})"
    printf '%s\t%s\t%s\t%s\n' "$name" "$tolerance" "$work/$name.cpu.json" "$work/$name.vk.json" \
        >>"$manifest"
}

for model in "${models[@]}"; do
    gguf=$work/$model-F32.gguf
    convert=(--quant f32 -o "$gguf" --force)
    case $vision in *" $model "*) convert+=(--mmproj-type f32) ;; esac
    "$glm_cpu" convert "$fixtures/$model" "${convert[@]}" >/dev/null 2>"$work/$model.convert.log" \
        || die "$model: convert failed: $(tail -n1 "$work/$model.convert.log")"
    # Every token case of the fixture's reference, logits of all positions.
    python3 - "$fixtures/$model/reference.json" >"$work/$model.cases" <<'EOF'
import json, sys
for case in json.load(open(sys.argv[1]))["logits"]:
    print(case["name"], ",".join(str(t) for t in case["tokens"]))
EOF
    while read -r case tokens; do
        both "$model.$case" "$VK_TOLERANCE" "$gguf" --tokens "$tokens" --all
    done <"$work/$model.cases"
    # Vision fixtures: also the reference's prompt with its image (the projector on Vulkan).
    case $vision in *" $model "*)
        text=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["image"]["messages"][0]["content"][1]["text"])' \
            "$fixtures/$model/reference.json")
        both "$model.image" "$VK_IMAGE_TOLERANCE" "$gguf" --prompt "$text" --no-think --image "$fixtures/$model/image.png"
        ;;
    esac
done

# Largest |Δlogit| per case against its tolerance. (Top-1 tokens are only counted: the
# tolerance bounds every logit, so the top-1 can change only where the CPU's top two are
# closer than twice the tolerance, and all-positions rows have near ties.)
python3 - "$manifest" <<'EOF'
import json, sys
failures, total_rows, flips = [], 0, 0
print(f"{'case':<36} {'rows':>4} {'max|logit|':>10} {'max|Δ|':>9} {'rel':>8} {'tolerance':>9}")
for line in open(sys.argv[1]):
    name, tolerance, cpu_file, vk_file = line.rstrip("\n").split("\t")
    tolerance = float(tolerance)
    cpu, vk = json.load(open(cpu_file)), json.load(open(vk_file))
    if cpu["tokens"] != vk["tokens"]:
        failures.append(f"{name}: the two builds evaluated different tokens")
        continue
    if [len(r) for r in cpu["logits"]] != [len(r) for r in vk["logits"]]:
        failures.append(f"{name}: logits of different shapes")
        continue
    diff = scale = 0.0
    for a, b in zip(cpu["logits"], vk["logits"]):
        diff = max(diff, max(abs(x - y) for x, y in zip(a, b)))
        scale = max(scale, max(abs(x) for x in a))
        flips += a.index(max(a)) != b.index(max(b))
        total_rows += 1
    print(f"{name:<36} {len(cpu['logits']):>4} {scale:>10.4f} {diff:>9.3e} {diff / scale:>8.2e} {tolerance:>9}")
    if not diff <= tolerance:
        failures.append(f"{name}: max |Δlogit| {diff:.3e} > tolerance {tolerance}")
print(f"top-1 token differs in {flips} of {total_rows} rows")
if failures:
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    print(f"check-vulkan: FAIL: {failures[0]}{more}", file=sys.stderr)
    sys.exit(1)
EOF
say "OK: $(wc -l <"$manifest") cases on lavapipe within tolerance of the CPU build"
