// llama.cpp reports how much memory a context plans per buffer type (weights, KV
// cache, compute buffers) only through a C++ function returning a std::map; its C API
// has no equivalent. This shim turns that map into a plain array Rust can read.
// The declarations below restate llama.cpp's src/llama-ext.h of the pinned version
// (llama-cpp-sys-2 =0.1.161), which is not an installed header.

#include <cstddef>
#include <cstdint>
#include <map>

struct ggml_backend_buffer_type;
typedef ggml_backend_buffer_type * ggml_backend_buffer_type_t;
struct llama_context;

struct llama_memory_breakdown_data {
    size_t model   = 0;
    size_t context = 0;
    size_t compute = 0;
};

using llama_memory_breakdown = std::map<ggml_backend_buffer_type_t, llama_memory_breakdown_data>;

llama_memory_breakdown llama_get_memory_breakdown(const struct llama_context * ctx);

extern "C" {

struct glm_buffer_memory {
    ggml_backend_buffer_type_t buffer_type;
    size_t model;
    size_t context;
    size_t compute;
};

// Writes up to `capacity` entries to `out`; returns how many buffer types there are, or
// SIZE_MAX when llama.cpp threw (no exception crosses into Rust).
size_t glm_memory_breakdown(const struct llama_context * ctx, struct glm_buffer_memory * out, size_t capacity) {
    try {
        const llama_memory_breakdown breakdown = llama_get_memory_breakdown(ctx);
        size_t i = 0;
        for (const auto & entry : breakdown) {
            if (i < capacity) {
                out[i] = { entry.first, entry.second.model, entry.second.context, entry.second.compute };
            }
            i++;
        }
        return i;
    } catch (...) {
        return SIZE_MAX;
    }
}

}
