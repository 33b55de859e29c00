//! Compiles the one C++ shim glm needs (see src/engine/ffi/memory_breakdown.cpp), and
//! checks that llama.cpp was built with its RPC backend.
fn main() {
    let shim = "src/engine/ffi/memory_breakdown.cpp";
    println!("cargo:rerun-if-changed={shim}");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file(shim)
        .compile("glm_memory_breakdown");
    check_rpc_backend();
}

/// `.cargo/config.toml` switches llama.cpp's RPC backend on (`GGML_RPC`), but a build
/// folder whose llama.cpp was compiled before that keeps it: llama-cpp-sys-2 only asks to
/// be rebuilt for GGML_* variables it saw. Say how to fix that rather than fail at run time.
fn check_rpc_backend() {
    println!("cargo:rerun-if-env-changed=GGML_RPC");
    let wanted = std::env::var("GGML_RPC").is_ok_and(|v| v.eq_ignore_ascii_case("on"));
    let Ok(cmake_dir) = std::env::var("DEP_LLAMA_GGML_CMAKE_DIR") else {
        return;
    };
    let Some(lib_dir) = std::path::Path::new(&cmake_dir).parent() else {
        return;
    };
    let built = [
        "libggml-rpc.a",
        "ggml-rpc.lib",
        "libggml-rpc.so",
        "libggml-rpc.dylib",
        "ggml-rpc.dll",
    ]
    .iter()
    .any(|name| lib_dir.join(name).exists());
    if wanted && !built {
        let profile = match std::env::var("PROFILE").as_deref() {
            Ok("release") => " --release",
            _ => "",
        };
        panic!(
            "llama.cpp in this build folder was compiled without its RPC backend (before glm switched GGML_RPC on); rebuild it once with `cargo clean -p llama-cpp-sys-2{profile}` (or run scripts/setup.sh)"
        );
    }
}
