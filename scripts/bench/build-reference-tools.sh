#!/usr/bin/env bash
# Builds the reference tools (llama-bench, llama-completion, llama-server, llama-quantize,
# llama-imatrix) from the same llama.cpp source that glm links, with the same build
# options, for BENCHMARKS.md and the imatrix reference of the tests.
#
# The llama-cpp-sys-2 crate vendors llama.cpp without the sources of its tools/; the PyPI
# sdist of llama-cpp-python 0.3.36 has them. This script copies the crate's tree to a
# scratch folder outside the repository, puts the sdist's tools/llama-bench,
# tools/completion, tools/quantize, tools/imatrix, tools/mtmd, tools/server and tools/ui
# sources in (the server without its web UI), replaces tools/CMakeLists.txt (which names
# tools that are not there) by one that adds only those, and builds with CMake. Nothing of
# llama.cpp is written into this repository.
#
# Build options: the same as llama-cpp-sys-2's build.rs uses for glm. When glm's release
# build exists, the values are read from its CMakeCache.txt; otherwise the defaults below
# apply, which are what build.rs gives on x86-64 Linux without RUSTFLAGS:
#   CMAKE_BUILD_TYPE=Release (-O3 -DNDEBUG), BUILD_SHARED_LIBS=OFF (static libs),
#   GGML_NATIVE=OFF (build.rs sets it OFF unless -C target-cpu=native), which leaves
#   ggml's x86 defaults SSE4.2/AVX/AVX2/BMI2/FMA/F16C ON and AVX-512/AVX-VNNI OFF,
#   GGML_OPENMP=ON (glm enables the crate's `openmp` feature), GGML_LLAMAFILE=ON,
#   GGML_CPU_REPACK=ON, GGML_BLAS=OFF, LLAMA_CURL=OFF,
#   C/C++ flags "-ffunction-sections -fdata-sections -fPIC -m64 -march=x86-64" (cmake-rs).
# Only build options are taken; the compiler is the system's c++, as for glm.
#
# usage: scripts/bench/build-reference-tools.sh [--jobs N]
# environment:
#   GLM_BENCH_HOME     cache folder [default: ~/.cache/glm-bench]
#   LLAMA_SYS_DIR      the crate's llama.cpp folder [default: found in ~/.cargo/registry]
#   GLM_TARGET_DIR     glm's cargo target folder, for its CMakeCache.txt
#                      [default: $CARGO_TARGET_DIR or ~/.cache/glm-target]
# Prints the paths of the built tools at the end. A second run reuses what is built.
set -euo pipefail

die() { echo "build-reference-tools: $*" >&2; exit 1; }

jobs=2
while [ $# -gt 0 ]; do
    case $1 in
        --jobs|-j) jobs=${2:?--jobs needs a number}; shift 2 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

root=$(cd "$(dirname "$0")/../.." && pwd)
bench_home=${GLM_BENCH_HOME:-$HOME/.cache/glm-bench}
sdist_version=0.3.36
tools=(llama-bench completion quantize imatrix mtmd server ui)
targets=(llama-bench llama-completion llama-server llama-quantize llama-imatrix)

command -v cmake >/dev/null || die "cmake is missing (scripts/setup.sh installs it)"
command -v c++ >/dev/null || die "a C++ compiler is missing (scripts/setup.sh installs it)"

# --- the crate's llama.cpp ------------------------------------------------------------
sys_version=$(awk '/^name = "llama-cpp-sys-2"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$root/Cargo.lock")
[ -n "$sys_version" ] || die "no llama-cpp-sys-2 in $root/Cargo.lock"
if [ -z "${LLAMA_SYS_DIR:-}" ]; then
    for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-"$sys_version"/llama.cpp; do
        [ -d "$d" ] && LLAMA_SYS_DIR=$d
    done
fi
[ -d "${LLAMA_SYS_DIR:-}" ] || die "llama-cpp-sys-2 $sys_version sources not found; run \`cargo fetch\` or set LLAMA_SYS_DIR"

# --- the sdist --------------------------------------------------------------------------
sdist_dir=$bench_home/sdist
sdist_tree=$sdist_dir/llama_cpp_python-$sdist_version
if [ ! -f "$sdist_tree/vendor/llama.cpp/scripts/ui-assets.cmake" ]; then
    mkdir -p "$sdist_dir"
    tarball=$sdist_dir/llama_cpp_python-$sdist_version.tar.gz
    if [ ! -f "$tarball" ]; then
        echo "downloading the llama-cpp-python $sdist_version sdist from PyPI" >&2
        python3 -m pip download --quiet --no-deps --no-binary :all: \
            "llama-cpp-python==$sdist_version" -d "$sdist_dir" \
            || die "pip download of llama-cpp-python==$sdist_version failed"
    fi
    [ -f "$tarball" ] || die "pip did not write $tarball"
    tar -xzf "$tarball" -C "$sdist_dir" \
        "llama_cpp_python-$sdist_version/vendor/llama.cpp/tools" \
        "llama_cpp_python-$sdist_version/vendor/llama.cpp/scripts/ui-assets.cmake" \
        || die "could not extract the tools from $tarball"
fi
sdist_tools=$sdist_tree/vendor/llama.cpp/tools

# --- the scratch tree -------------------------------------------------------------------
src=$bench_home/llama.cpp
stamp="llama-cpp-sys-2 $sys_version + llama-cpp-python $sdist_version tools: ${tools[*]}"
if [ "$(cat "$src/.glm-bench-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "copying $LLAMA_SYS_DIR to $src" >&2
    rm -rf "$src"
    mkdir -p "$src"
    cp -a "$LLAMA_SYS_DIR"/. "$src"/
    for t in "${tools[@]}"; do
        [ -f "$sdist_tools/$t/CMakeLists.txt" ] || die "the sdist has no tools/$t"
        rm -rf "${src:?}/tools/$t"
        cp -a "$sdist_tools/$t" "$src/tools/$t"
    done
    # llama-server's UI target runs this script at build time (with the UI off it writes
    # an empty asset table); the crate's sources leave it out.
    mkdir -p "$src/scripts"
    cp "$sdist_tree/vendor/llama.cpp/scripts/ui-assets.cmake" "$src/scripts/"
    # The sdist's server is a little newer than the crate's common library: it opens its
    # MCP config with `fs_open_ifstream`, which that library does not have yet. A plain
    # std::ifstream does the same for the benchmark (no MCP config is given).
    sed -i 's/std::ifstream f = fs_open_ifstream(params.mcp_servers_config, std::ios::in);/std::ifstream f(params.mcp_servers_config, std::ios::in);/' \
        "$src/tools/server/server-mcp.cpp"
    grep -q 'fs_open_ifstream' "$src/tools/server/server-mcp.cpp" \
        && die "tools/server/server-mcp.cpp changed; update the patch in $0"
    # The crate's tools/CMakeLists.txt adds every tool, most of them absent here.
    {
        echo "# written by glm's scripts/bench/build-reference-tools.sh"
        echo "find_package(Threads REQUIRED)"
        echo "llama_add_compile_flags()"
        for t in "${tools[@]}"; do echo "add_subdirectory($t)"; done
    } > "$src/tools/CMakeLists.txt"
    echo "$stamp" > "$src/.glm-bench-stamp"
fi

# --- build options: glm's, from its CMakeCache.txt when it exists ---------------------------
target_dir=${GLM_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/glm-target}}
glm_cache=$(ls -t "$target_dir"/release/build/llama-cpp-sys-2-*/out/build/CMakeCache.txt 2>/dev/null | head -n1 || true)
copied_keys='^(BUILD_SHARED_LIBS|CMAKE_BUILD_TYPE|CMAKE_C_FLAGS|CMAKE_CXX_FLAGS|CMAKE_C_FLAGS_RELEASE|CMAKE_CXX_FLAGS_RELEASE|GGML_(NATIVE|SSE42|AVX|AVX2|AVX_VNNI|AVX512|AVX512_VBMI|AVX512_VNNI|AVX512_BF16|AMX_TILE|AMX_INT8|AMX_BF16|BMI2|FMA|F16C|OPENMP|LLAMAFILE|CPU_REPACK|CPU_KLEIDIAI|BLAS|LTO)):'
options=()
if [ -n "$glm_cache" ]; then
    echo "build options from glm's $glm_cache" >&2
    while IFS= read -r line; do
        key=${line%%:*}; value=${line#*=}
        options+=("-D$key=$value")
    done < <(grep -E "$copied_keys" "$glm_cache")
else
    echo "glm's release build not found under $target_dir; using build.rs's defaults" >&2
    flags="-ffunction-sections -fdata-sections -fPIC -m64 -march=x86-64"
    options=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
        -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON
        -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF
        -DGGML_OPENMP=ON -DGGML_LLAMAFILE=ON -DGGML_CPU_REPACK=ON -DGGML_BLAS=OFF
        "-DCMAKE_C_FLAGS=$flags" "-DCMAKE_CXX_FLAGS=$flags")
fi
options+=(-DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_MTMD=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF)

build=$src/build
printf '%s\n' "${options[@]}" > "$build.options.new"
if ! cmp -s "$build.options.new" "$build.options" 2>/dev/null || [ ! -f "$build/CMakeCache.txt" ]; then
    echo "configuring $build" >&2
    rm -rf "$build"
    # SOURCE_DATE_EPOCH would switch ggml's x86 defaults off; every option is explicit
    # above anyway, but keep the configure step independent of it.
    env -u SOURCE_DATE_EPOCH nice -n 19 cmake -S "$src" -B "$build" "${options[@]}" >"$src/configure.log" 2>&1 \
        || die "cmake configure failed; see $src/configure.log"
    mv "$build.options.new" "$build.options"
else
    rm -f "$build.options.new"
fi

echo "building ${targets[*]} with $jobs jobs (log: $src/build.log)" >&2
nice -n 19 cmake --build "$build" --target "${targets[@]}" -j "$jobs" >"$src/build.log" 2>&1 \
    || { tail -n 40 "$src/build.log" >&2; die "build failed; see $src/build.log"; }

for t in "${targets[@]}"; do
    [ -x "$build/bin/$t" ] || die "$build/bin/$t was not built"
    echo "$build/bin/$t"
done
