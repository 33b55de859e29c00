//! Compiles the one C++ shim glm needs (see src/engine/ffi/memory_breakdown.cpp).
fn main() {
    let shim = "src/engine/ffi/memory_breakdown.cpp";
    println!("cargo:rerun-if-changed={shim}");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file(shim)
        .compile("glm_memory_breakdown");
}
