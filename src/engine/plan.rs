//! The memory plan of a model: what llama.cpp would put on each device (weights, KV
//! cache, compute buffers) for given placement and context options. llama.cpp plans
//! the load and the context without allocating either (its `no_alloc` mode, which its
//! own fit uses) and reports the sizes per buffer type.
//!
//! llama-cpp-2 gives no access to the raw model and context this needs, nor to the
//! report (a C++ map), so this module calls llama.cpp's C API directly and reads the
//! report through a small C++ shim (`ffi/memory_breakdown.cpp`).

use std::ffi::{c_char, CStr, CString};
use std::fmt;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use llama_cpp_sys_2 as sys;

use super::log;
use super::model::backend;
use super::options::{ContextOptions, GpuLayers, LoadOptions, SplitMode};
use super::placement;

/// Memory of one device, in bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceMemory {
    pub device: String,
    pub weights: u64,
    pub kv_cache: u64,
    pub compute: u64,
}

impl DeviceMemory {
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.compute
    }
}

#[derive(Debug, Clone)]
pub struct MemoryPlan {
    pub n_ctx: u32,
    /// Layers on GPUs, of the layers that can go there.
    pub gpu_layers: u32,
    pub offloadable_layers: u32,
    pub devices: Vec<DeviceMemory>,
    pub overrides: Vec<String>,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct BufferMemory {
    buffer_type: sys::ggml_backend_buffer_type_t,
    model: usize,
    context: usize,
    compute: usize,
}

extern "C" {
    fn glm_memory_breakdown(ctx: *const sys::llama_context, out: *mut BufferMemory, capacity: usize) -> usize;
}

/// Frees a raw model or context however planning ends.
struct Owned<T> {
    ptr: *mut T,
    free: unsafe extern "C" fn(*mut T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr` came non-null from the llama.cpp call that `free` undoes, and is
        // freed once, here.
        unsafe { (self.free)(self.ptr) }
    }
}

/// Plans `path` with `load` and `context` without allocating weights or cache.
pub fn plan(path: &Path, load: &LoadOptions, context: &ContextOptions) -> Result<MemoryPlan> {
    let header = glm_convert::gguf::read_model_header(path)?;
    glm_convert::gguf::check::check_model(&header).map_err(|message| anyhow!("{}: {message}", path.display()))?;
    backend()?;
    let overrides = placement::checked_overrides(&load.placement, &header)?;
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("{}: the path holds a NUL byte", path.display()))?;
    let patterns = overrides
        .iter()
        .map(|o| CString::new(o.pattern.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow!("--override-tensor: the pattern holds a NUL byte"))?;
    let mut devices = placement::chosen_devices(&load.placement)?;
    devices.push(std::ptr::null_mut());

    // SAFETY: plain-data default parameters from llama.cpp.
    let mut mparams = unsafe { sys::llama_model_default_params() };
    mparams.main_gpu = load.placement.main_gpu;
    mparams.split_mode = match load.placement.split_mode {
        SplitMode::None => sys::LLAMA_SPLIT_MODE_NONE,
        SplitMode::Layer => sys::LLAMA_SPLIT_MODE_LAYER,
        SplitMode::Row => sys::LLAMA_SPLIT_MODE_ROW,
    };
    mparams.load_mtp = load.load_mtp;
    if devices.len() > 1 {
        mparams.devices = devices.as_mut_ptr();
    }
    mparams.n_gpu_layers = match load.placement.gpu_layers {
        GpuLayers::Count(n) => i32::try_from(n).unwrap_or(i32::MAX),
        GpuLayers::All => i32::MAX,
        GpuLayers::Auto if placement::fits_to_memory(&load.placement, &overrides) => -1,
        GpuLayers::Auto => i32::MAX,
    };
    let mut cparams = raw_context_params(context, load.ctx_size);

    // The fit writes its split and expert overrides into these; they must outlive the
    // model load.
    // SAFETY: plain getters.
    let (max_devices, max_overrides) = unsafe { (sys::llama_max_devices(), sys::llama_max_tensor_buft_overrides()) };
    let mut split = vec![0f32; max_devices.max(1)];
    let empty_override = sys::llama_model_tensor_buft_override {
        pattern: std::ptr::null(),
        buft: std::ptr::null_mut(),
    };
    let mut fitted_overrides = vec![empty_override; max_overrides + 1];
    let mut user_overrides = Vec::with_capacity(patterns.len() + 1);
    for (pattern, o) in patterns.iter().zip(&overrides) {
        user_overrides.push(sys::llama_model_tensor_buft_override {
            pattern: pattern.as_ptr(),
            buft: placement::override_buffer(&o.buffer)?,
        });
    }
    user_overrides.push(empty_override);
    for (slot, share) in split.iter_mut().zip(&load.placement.tensor_split) {
        *slot = *share;
    }
    if !load.placement.tensor_split.is_empty() {
        mparams.tensor_split = split.as_ptr();
    }

    if mparams.n_gpu_layers == -1 {
        let mut margins = vec![1usize << 30; max_devices.max(1)];
        let trained = placement::training_context(&header).unwrap_or(super::DEFAULT_CTX);
        let _one_fit = placement::fit_lock();
        log::start_capture();
        // SAFETY: every pointer is valid for the call: the path is NUL-terminated, the
        // params are initialised, and the split, override and margin buffers have the
        // lengths llama.cpp's fit writes (max devices, max overrides + 1 terminator).
        let status = unsafe {
            sys::llama_rs_fit_params(
                c_path.as_ptr(),
                &raw mut mparams,
                &raw mut cparams,
                split.as_mut_ptr(),
                fitted_overrides.as_mut_ptr(),
                margins.as_mut_ptr(),
                super::DEFAULT_CTX.min(trained),
                std::ptr::null(),
                sys::GGML_LOG_LEVEL_ERROR,
            )
        };
        if status != 0 {
            bail!(
                "{}: llama.cpp could not fit the model into free memory{}",
                path.display(),
                because()
            );
        }
        mparams.tensor_split = split.as_ptr();
        mparams.tensor_buft_overrides = fitted_overrides.as_ptr();
    } else if !patterns.is_empty() {
        mparams.tensor_buft_overrides = user_overrides.as_ptr();
    }
    if cparams.n_ctx == 0 {
        cparams.n_ctx = super::DEFAULT_CTX.min(placement::training_context(&header).unwrap_or(super::DEFAULT_CTX));
    }
    mparams.no_alloc = true;
    mparams.load_mode = sys::LLAMA_LOAD_MODE_NONE;

    log::start_capture();
    // SAFETY: the path is NUL-terminated and every pointer in `mparams` points into
    // buffers that live to the end of this function.
    let model = unsafe { sys::llama_model_load_from_file(c_path.as_ptr(), mparams) };
    if model.is_null() {
        bail!("{}: llama.cpp cannot plan this file{}", path.display(), because());
    }
    let model = Owned {
        ptr: model,
        free: sys::llama_model_free,
    };
    // SAFETY: `model` is a live model; the parameters are initialised plain data.
    let ctx = unsafe { sys::llama_init_from_model(model.ptr, cparams) };
    if ctx.is_null() {
        bail!(
            "cannot plan a llama.cpp context of {} tokens{}",
            cparams.n_ctx,
            because()
        );
    }
    let ctx = Owned {
        ptr: ctx,
        free: sys::llama_free,
    };
    let devices = breakdown(ctx.ptr)?;
    // SAFETY: `model` is live.
    let (n_layer, n_nextn) = unsafe {
        (
            sys::llama_model_n_layer(model.ptr),
            sys::llama_model_n_layer_nextn(model.ptr),
        )
    };
    let offloadable = (n_layer.max(0) as u32) + u32::from(load.load_mtp) * (n_nextn.max(0) as u32) + 1;
    let overrides = match mparams.tensor_buft_overrides.is_null() {
        true => Vec::new(),
        false => read_overrides(mparams.tensor_buft_overrides),
    };
    Ok(MemoryPlan {
        n_ctx: cparams.n_ctx,
        gpu_layers: if devices.iter().any(|d| d.device != "CPU") {
            (mparams.n_gpu_layers.max(0) as u32).min(offloadable)
        } else {
            0
        },
        offloadable_layers: offloadable,
        devices,
        overrides,
    })
}

/// llama.cpp's reason for the last failure, as `: reason`, or nothing.
fn because() -> String {
    log::reason().map(|r| format!(": {r}")).unwrap_or_default()
}

/// llama.cpp's context parameters, raw.
fn raw_context_params(options: &ContextOptions, n_ctx: u32) -> sys::llama_context_params {
    // SAFETY: plain-data default parameters from llama.cpp.
    let mut cparams = unsafe { sys::llama_context_default_params() };
    cparams.n_ctx = if options.ctx_size > 0 { options.ctx_size } else { n_ctx };
    let limit = if cparams.n_ctx > 0 { cparams.n_ctx } else { u32::MAX };
    cparams.n_batch = options.batch_size.clamp(1, limit);
    cparams.n_ubatch = options.ubatch_size.clamp(1, cparams.n_batch);
    cparams.n_threads = options.threads;
    cparams.n_threads_batch = options.threads_batch;
    cparams.type_k = options.cache_type_k.llama_type().into();
    cparams.type_v = options.cache_type_v.llama_type().into();
    cparams.flash_attn_type = options.flash_attention.llama_policy();
    cparams
}

/// The plan per device, from llama.cpp's report per buffer type.
fn breakdown(ctx: *const sys::llama_context) -> Result<Vec<DeviceMemory>> {
    const CAPACITY: usize = 64;
    let mut entries = [BufferMemory {
        buffer_type: std::ptr::null_mut(),
        model: 0,
        context: 0,
        compute: 0,
    }; CAPACITY];
    // SAFETY: `ctx` is a live context; `entries` holds `CAPACITY` elements.
    let count = unsafe { glm_memory_breakdown(ctx, entries.as_mut_ptr(), CAPACITY) };
    if count == usize::MAX {
        bail!("llama.cpp could not report the planned memory");
    }
    let mut devices: Vec<DeviceMemory> = Vec::new();
    for entry in &entries[..count.min(CAPACITY)] {
        let device = device_of(entry.buffer_type);
        let index = match devices.iter().position(|d| d.device == device) {
            Some(i) => i,
            None => {
                devices.push(DeviceMemory {
                    device,
                    ..Default::default()
                });
                devices.len() - 1
            }
        };
        let d = &mut devices[index];
        d.weights += entry.model as u64;
        d.kv_cache += entry.context as u64;
        d.compute += entry.compute as u64;
    }
    // The CPU first, then the GPUs in llama.cpp's order.
    devices.sort_by_key(|d| d.device != "CPU");
    Ok(devices)
}

/// The device whose memory a buffer type uses: host buffer types are the CPU's.
fn device_of(buffer_type: sys::ggml_backend_buffer_type_t) -> String {
    // SAFETY: the buffer type came from llama.cpp's own report and lives as long as its
    // backend, which is never unloaded.
    unsafe {
        if buffer_type.is_null() || sys::ggml_backend_buft_is_host(buffer_type) {
            return "CPU".to_owned();
        }
        let device = sys::ggml_backend_buft_get_device(buffer_type);
        if device.is_null() {
            return c_text(sys::ggml_backend_buft_name(buffer_type));
        }
        c_text(sys::ggml_backend_dev_name(device))
    }
}

/// `pattern=BUFFER` of each override in a null-terminated list.
fn read_overrides(mut entry: *const sys::llama_model_tensor_buft_override) -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: the list ends with an entry whose pattern is null; patterns are
    // NUL-terminated strings and buffer types llama.cpp statics.
    unsafe {
        while !(*entry).pattern.is_null() && out.len() < 4096 {
            let buffer = if (*entry).buft.is_null() {
                "?".to_owned()
            } else {
                c_text(sys::ggml_backend_buft_name((*entry).buft))
            };
            out.push(format!("{}={buffer}", c_text((*entry).pattern)));
            entry = entry.add(1);
        }
    }
    out
}

/// # Safety
/// `text` is null or a NUL-terminated string.
unsafe fn c_text(text: *const c_char) -> String {
    if text.is_null() {
        return String::new();
    }
    // SAFETY: per this function's contract.
    unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
}

const MIB: f64 = 1024.0 * 1024.0;

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "context: {} tokens", self.n_ctx)?;
        writeln!(f, "GPU layers: {} of {}", self.gpu_layers, self.offloadable_layers)?;
        for o in &self.overrides {
            writeln!(f, "override: {o}")?;
        }
        writeln!(
            f,
            "{:<10} {:>13} {:>13} {:>13} {:>13}",
            "device", "weights", "KV cache", "compute", "total"
        )?;
        for d in &self.devices {
            writeln!(
                f,
                "{:<10} {:>9.2} MiB {:>9.2} MiB {:>9.2} MiB {:>9.2} MiB",
                d.device,
                d.weights as f64 / MIB,
                d.kv_cache as f64 / MIB,
                d.compute as f64 / MIB,
                d.total() as f64 / MIB
            )?;
        }
        Ok(())
    }
}
