#!/usr/bin/env bash
# Proves that `--features cuda` compiles and links without an NVIDIA GPU, driver or
# system CUDA install: a CUDA 13 toolkit is assembled from NVIDIA's PyPI wheels in a
# private prefix, and glm is built against it for one GPU architecture. Nothing runs on
# a GPU; the build is the test. Last, the binary is started once with the driver stub in
# place of libcuda.so.1: ggml's CUDA backend must report the stub and glm must compute
# logits of a fixture on the CPU.
#
# Installs, only when missing (a second run reuses the prefix and the build):
#   $GLM_CUDA_PREFIX (default $HOME/.cache/glm-cuda13)
#     wheels/            the downloaded wheels (`pip download --no-deps`)
#     root/nvidia/cu13/  the unpacked toolkit: bin/nvcc, nvvm/bin/cicc, include, lib
#     cuda -> root/nvidia/cu13  (CUDA_PATH)
# and fixes what the wheels leave out of a toolkit: the unversioned libcudart.so /
# libcublas.so / libcublasLt.so links that CMake's FindCUDAToolkit looks for, a lib64
# link (nvcc.profile's and llama-cpp-sys-2's library path), and lib/stubs/libcuda.so, a
# driver stub made from the toolkit's own cuda.h: every driver entry point, returning
# CUDA_ERROR_STUB_LIBRARY (what NVIDIA's stubs do; the driver's libcuda.so.1 takes its
# place at run time).
#
# The link: on Linux llama-cpp-sys-2 links cuBLAS statically (libcublas_static.a,
# libcublasLt_static.a, with libculibos.a and libcudart_static.a). The wheels carry only
# the shared cuBLAS, so lib/stubs also gets two empty archives under the static names,
# and the glm binary is linked with -lcublas -lcublasLt instead (`cargo rustc -- -C
# link-arg`): the same symbols, from the shared libraries. Everything else — llama.cpp's
# CMake configuration, every ggml-cuda kernel, the static cudart — is what a machine with
# NVIDIA's full toolkit builds with `cargo build --release --features cuda`.
#
# Environment:
#   GLM_CUDA_ARCH          CMAKE_CUDA_ARCHITECTURES, one of them (default 90: H100/H200)
#   GLM_CUDA_TARGET_DIR    cargo target dir ($HOME/.cache/glm-target-cuda)
#   GLM_CUDA_PREFIX        the private prefix ($HOME/.cache/glm-cuda13)
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=${GLM_CUDA_PREFIX:-$HOME/.cache/glm-cuda13}
target_dir=${GLM_CUDA_TARGET_DIR:-$HOME/.cache/glm-target-cuda}
arch=${GLM_CUDA_ARCH:-90}
# CUDA 13.0 update 2, one release of every component: nvcc (the driver, ptxas,
# fatbinary, nvlink), cicc, the CRT headers, the runtime, CCCL (CUB/Thrust/libcu++),
# culibos and cuBLAS.
wheels=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-culibos==13.0.85
    nvidia-cublas==13.0.2.14
)
cuda=$prefix/cuda

say() { echo "check-cuda: $*" >&2; }
die() { echo "check-cuda: FAIL: $*" >&2; exit 1; }

# --- 1. The toolkit ------------------------------------------------------------------
stamp=$prefix/root/.wheels
if [ "$(cat "$stamp" 2>/dev/null)" != "${wheels[*]}" ] || [ ! -x "$prefix/root/nvidia/cu13/bin/nvcc" ]; then
    command -v python3 >/dev/null 2>&1 || die "python3 (with pip) is needed to fetch the CUDA wheels"
    command -v unzip >/dev/null 2>&1 || die "unzip is needed to unpack the CUDA wheels"
    say "fetching ${wheels[*]} into $prefix"
    mkdir -p "$prefix/wheels"
    rm -f "$prefix"/wheels/*.whl
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$prefix/wheels" \
        "${wheels[@]}" || die "pip download of the CUDA wheels failed"
    rm -rf "$prefix/root"
    mkdir -p "$prefix/root"
    for wheel in "$prefix"/wheels/*.whl; do
        unzip -q -o "$wheel" -d "$prefix/root" -x '*.dist-info/*'
    done
    echo "${wheels[*]}" >"$stamp"
fi
ln -sfn root/nvidia/cu13 "$cuda"
[ -x "$cuda/bin/nvcc" ] && [ -x "$cuda/nvvm/bin/cicc" ] || die "the wheels did not give $cuda/bin/nvcc and nvvm/bin/cicc"
ln -sfn lib "$cuda/lib64"
for lib in cudart cublas cublasLt; do
    ln -sfn "lib$lib.so.13" "$cuda/lib/lib$lib.so"
done
if [ ! -f "$cuda/lib/stubs/libcuda.so" ]; then
    mkdir -p "$cuda/lib/stubs"
    gcc -E -P -x c -I "$cuda/include" "$cuda/include/cuda.h" \
        | python3 -c '
import re, sys
names = sorted(set(re.findall(r"\bCUresult\s+(cu\w+)\s*\(", sys.stdin.read())))
if len(names) < 300:
    sys.exit(f"only {len(names)} driver functions found in cuda.h")
print("/* Every CUDA driver entry point of cuda.h; each returns CUDA_ERROR_STUB_LIBRARY. */")
for name in names:
    print(f"int {name}(void) {{ return 34; }}")
' >"$prefix/libcuda-stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so" "$prefix/libcuda-stub.c"
fi
for lib in cublas_static cublasLt_static; do
    [ -f "$cuda/lib/stubs/lib$lib.a" ] || ar rc "$cuda/lib/stubs/lib$lib.a"
done
nvcc_version=$("$cuda/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
say "CUDA $nvcc_version in $cuda, CMAKE_CUDA_ARCHITECTURES=$arch"

# The toolkit on its own: one kernel compiled and linked for the architecture.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '%s\n' '__global__ void twice(float *x) { x[threadIdx.x] *= 2.0f; }' \
    'int main() { float *d; cudaMalloc(&d, 64); twice<<<1, 16>>>(d); return (int) cudaDeviceSynchronize(); }' \
    >"$probe/probe.cu"
"$cuda/bin/nvcc" -arch="sm_$arch" "$probe/probe.cu" -o "$probe/probe" \
    || die "nvcc cannot compile a kernel for sm_$arch"

# --- 2. glm --features cuda --------------------------------------------------------------
# CUDA_PATH: llama-cpp-sys-2's build script; CUDAToolkit_ROOT, CUDACXX: llama.cpp's CMake
# (find_package(CUDAToolkit), enable_language(CUDA)); CMAKE_* variables are forwarded to
# CMake as -D. CUDA_LIBRARY_PATH: toolkit roots whose lib64 and lib64/stubs the build
# script gives rustc as search paths (cudart_static, culibos, the cuBLAS stand-ins,
# libcuda).
build_env=(env
    CUDA_PATH="$cuda" CUDAToolkit_ROOT="$cuda" CUDACXX="$cuda/bin/nvcc"
    PATH="$cuda/bin:$PATH"
    CMAKE_CUDA_ARCHITECTURES="$arch"
    CUDA_LIBRARY_PATH="$cuda"
    CARGO_TARGET_DIR="$target_dir")
link_args=(-C "link-arg=-L$cuda/lib" -C link-arg=-lcublas -C link-arg=-lcublasLt)
# CMAKE_* variables reach CMake but are not among what cargo watches, and CMake is not
# configured again over an existing build: another architecture needs a clean llama.cpp.
arch_stamp=$target_dir/.glm-cuda-arch
if [ -f "$arch_stamp" ] && [ "$(cat "$arch_stamp")" != "$arch" ]; then
    say "architecture changed from $(cat "$arch_stamp") to $arch: rebuilding llama.cpp"
    CARGO_TARGET_DIR="$target_dir" cargo clean --release -p llama-cpp-sys-2
fi
mkdir -p "$target_dir"
echo "$arch" >"$arch_stamp"
t0=$(date +%s)
say "building --release --features cuda in $target_dir"
"${build_env[@]}" nice -n 19 cargo rustc --release --features cuda --bin glm -- "${link_args[@]}" \
    || die "cargo build --features cuda failed"
say "cuda build: $(($(date +%s) - t0)) s"

# --- 3. What was built ---------------------------------------------------------------------
glm=$target_dir/release/glm
[ -x "$glm" ] || die "no $glm"
needed=$(readelf -d "$glm" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')
# (libcublasLt.so.13 comes in as libcublas.so.13's own dependency.)
for lib in libcublas.so.13 libcuda.so.1; do
    [[ " $needed" == *" $lib "* ]] || die "$glm does not link $lib (it links: $needed)"
done
# (grep -c, not -q: -q stops reading early, and pipefail takes the writer's SIGPIPE for
# a failure.)
readelf -S -W "$glm" | grep -c '\.nv_fatbin' >/dev/null || die "$glm holds no CUDA device code (.nv_fatbin)"
nm -C "$glm" | grep -c 'ggml_backend_cuda_reg' >/dev/null || die "$glm has no ggml CUDA backend"

# Started without a GPU: the stub stands in for the driver (as libcuda.so.1, in a temp
# folder), CUDA initialisation fails with the stub's error, and glm runs on the CPU.
ln -s "$cuda/lib/stubs/libcuda.so" "$probe/libcuda.so.1"
fixture=tests/fixtures/models/glm-tiny
tokens=$(python3 -c 'import json, sys; print(",".join(map(str, json.load(open(sys.argv[1]))["logits"][0]["tokens"])))' \
    "$fixture/reference.json")
run_env=(env LD_LIBRARY_PATH="$cuda/lib:$probe${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" GLM_LLAMA_LOG=1)
"${run_env[@]}" "$glm" convert "$fixture" --quant f32 -o "$probe/glm-tiny.gguf" >/dev/null 2>"$probe/convert.log" \
    || die "the CUDA glm cannot convert $fixture: $(tail -n1 "$probe/convert.log")"
"${run_env[@]}" "$glm" logits "$probe/glm-tiny.gguf" --tokens "$tokens" -o "$probe/logits.json" 2>"$probe/run.log" \
    || die "the CUDA glm without a GPU failed: $(grep -v '^[a-z_]*: ' "$probe/run.log" | tail -n1)"
grep -q 'ggml_cuda_init: failed to initialize CUDA: CUDA driver is a stub library' "$probe/run.log" \
    || die "ggml's CUDA backend did not report the driver stub (log: $(grep -m1 -i cuda "$probe/run.log"))"
say "OK: $glm links $needed; device code for sm_$arch; without a GPU it runs on the CPU"
