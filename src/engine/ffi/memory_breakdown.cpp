// Two things glm needs from llama.cpp that only its C++ API offers. llama.cpp reports how
// much memory a context plans per buffer type (weights, KV cache, compute buffers) only
// through a C++ function returning a std::map; this shim turns that map into a plain
// array Rust can read. And its common library's logger can only be quieted by a C++
// function.
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

// llama.cpp's common library (its fit) logs through a logger of its own that writes to
// stderr from a worker thread, past glm's log capture; common/log.h of the same version.
void common_log_set_verbosity_thold(int verbosity);

extern "C" {

// Silences the common library's logger; glm reports failures from llama.cpp's own log.
void glm_silence_common_log(void) {
    common_log_set_verbosity_thold(-1);
}

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
