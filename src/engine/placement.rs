//! Where a model's tensors go: llama.cpp's model parameters built from [`Placement`],
//! checked before llama.cpp sees them (an unknown device or buffer, a malformed pattern
//! or a layer the model lacks is one clear line, not a C++ exception), llama.cpp's fit
//! of layers and context into free memory, and the devices llama.cpp sees.

use std::ffi::CString;
use std::path::Path;
use std::pin::Pin;

use anyhow::{anyhow, bail, Result};
use glm_convert::gguf::GgufHeader;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::model::params::{FitError, LlamaModelParams, LlamaSplitMode};
use llama_cpp_2::{list_llama_ggml_backend_devices, LlamaBackendDeviceType};

use super::options::{GpuLayers, LoadOptions, Placement, SplitMode, TensorOverride, DEFAULT_CTX};

/// Memory llama.cpp's fit leaves free on each device (its own default).
const FIT_MARGIN_BYTES: usize = 1 << 30;

/// llama.cpp's fit swaps the process-wide log callback for its own while it runs, with
/// state on its stack; two fits at once would restore each other's freed state. One at
/// a time.
static FIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(super) fn fit_lock() -> std::sync::MutexGuard<'static, ()> {
    FIT_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One device llama.cpp can use.
#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
    pub description: String,
    pub kind: &'static str,
    pub backend: String,
    pub free_bytes: usize,
    pub total_bytes: usize,
    index: usize,
    is_gpu: bool,
}

/// The devices of this build, as llama.cpp lists them (the CPU included).
pub fn devices() -> Result<Vec<Device>> {
    super::model::backend()?;
    Ok(list_llama_ggml_backend_devices()
        .into_iter()
        .map(|d| {
            let (kind, is_gpu) = match d.device_type {
                LlamaBackendDeviceType::Cpu => ("CPU", false),
                LlamaBackendDeviceType::Gpu => ("GPU", true),
                LlamaBackendDeviceType::IntegratedGpu => ("iGPU", true),
                LlamaBackendDeviceType::Accelerator => ("accelerator", false),
                LlamaBackendDeviceType::Unknown => ("unknown", false),
            };
            Device {
                name: d.name,
                description: d.description,
                kind,
                backend: d.backend,
                free_bytes: d.memory_free,
                total_bytes: d.memory_total,
                index: d.index,
                is_gpu,
            }
        })
        .collect())
}

/// Whether this build sees a GPU; without one, `--gpu-layers` has nothing to place.
pub fn has_gpu() -> Result<bool> {
    Ok(devices()?.iter().any(|d| d.is_gpu))
}

/// Model parameters for llama.cpp, with the override patterns they point into (which
/// must outlive the load).
pub(super) struct ModelParams {
    pub params: Pin<Box<LlamaModelParams>>,
    _patterns: Vec<CString>,
    /// The context size llama.cpp's fit chose, when it ran.
    pub fitted_ctx: Option<u32>,
}

/// Builds and checks the parameters; with `-ngl auto` (and no tensor overrides, which
/// llama.cpp's fit cannot combine with its own) fits layers and context into free memory.
/// Without a context size in `options` the fit chooses the context too.
pub(super) fn model_params(path: &Path, header: &GgufHeader, options: &LoadOptions) -> Result<ModelParams> {
    let placement = &options.placement;
    let overrides = checked_overrides(placement, header)?;
    let mut params = LlamaModelParams::default()
        .with_vocab_only(options.vocab_only)
        .with_use_mmap(options.use_mmap)
        .with_use_mlock(options.use_mlock)
        .with_load_mtp(options.load_mtp)
        .with_main_gpu(placement.main_gpu)
        .with_split_mode(match placement.split_mode {
            SplitMode::None => LlamaSplitMode::None,
            SplitMode::Layer => LlamaSplitMode::Layer,
            SplitMode::Row => LlamaSplitMode::Row,
        });
    if !placement.devices.is_empty() {
        params = params
            .with_devices(&chosen_device_indices(placement)?)
            .map_err(|e| anyhow!("--device: {e}"))?;
    }
    let auto_fit = fits_to_memory(placement, &overrides);
    let fit = auto_fit && !options.vocab_only;
    match placement.gpu_layers {
        GpuLayers::Count(n) => params = params.with_n_gpu_layers(n),
        GpuLayers::All => params = params.with_n_gpu_layers(u32::MAX),
        GpuLayers::Auto if !auto_fit => params = params.with_n_gpu_layers(u32::MAX),
        GpuLayers::Auto => {}
    }
    let mut params = Box::pin(params);
    if !placement.tensor_split.is_empty() {
        params.as_mut().set_tensor_split(&placement.tensor_split);
    }
    let fitted_ctx = if fit {
        Some(fit_to_memory(path, params.as_mut(), header, options.ctx_size)?)
    } else {
        None
    };
    let patterns = overrides
        .iter()
        .map(|o| {
            CString::new(o.pattern.as_str()).map_err(|_| anyhow!("--override-tensor: the pattern holds a NUL byte"))
        })
        .collect::<Result<Vec<_>>>()?;
    for (pattern, o) in patterns.iter().zip(&overrides) {
        let buffer = override_buffer(&o.buffer)?;
        // SAFETY: the buffer type is ggml's, for a device of its registry (or the CPU's),
        // which lives as long as the process.
        unsafe { params.as_mut().add_buft_override(pattern, buffer) };
    }
    Ok(ModelParams {
        params,
        _patterns: patterns,
        fitted_ctx,
    })
}

/// Whether llama.cpp's fit places layers and context: with `-ngl auto`, unless tensor
/// overrides or a split (which it cannot combine with its own) say where things go; then
/// every layer is offloaded as `-ngl all`.
pub(super) fn fits_to_memory(placement: &Placement, overrides: &[TensorOverride]) -> bool {
    placement.gpu_layers == GpuLayers::Auto && overrides.is_empty() && placement.tensor_split.is_empty()
}

/// The buffer type an override names (checked by `check_buffer`): the CPU's, or the
/// default one of a device (`CUDA0`, `RPC0`, …).
pub(super) fn override_buffer(buffer: &str) -> Result<llama_cpp_sys_2::ggml_backend_buffer_type_t> {
    if buffer.eq_ignore_ascii_case("CPU") {
        // SAFETY: the CPU buffer type is a static of ggml's CPU backend.
        return Ok(unsafe { llama_cpp_sys_2::ggml_backend_cpu_buffer_type() });
    }
    let device = devices()?
        .into_iter()
        .find(|d| d.is_gpu && d.name.eq_ignore_ascii_case(buffer))
        .ok_or_else(|| anyhow!("--override-tensor ...={buffer}: no such device"))?;
    // SAFETY: the index was listed by ggml's device registry just before; a device's
    // buffer type lives as long as the device.
    Ok(unsafe { llama_cpp_sys_2::ggml_backend_dev_buffer_type(llama_cpp_sys_2::ggml_backend_dev_get(device.index)) })
}

/// The tensor overrides of `placement` (the user's and the experts kept on the CPU),
/// after checking the whole placement against the model and the devices.
pub(super) fn checked_overrides(placement: &Placement, header: &GgufHeader) -> Result<Vec<TensorOverride>> {
    let overrides = placement.all_overrides();
    check_placement(placement, header, &devices()?, &overrides)?;
    Ok(overrides)
}

/// llama.cpp's indices of the GPUs `--device` names (checked to exist).
fn chosen_device_indices(placement: &Placement) -> Result<Vec<usize>> {
    let devices = devices()?;
    Ok(placement
        .devices
        .iter()
        .filter_map(|name| devices.iter().find(|d| d.is_gpu && d.name.eq_ignore_ascii_case(name)))
        .map(|d| d.index)
        .collect())
}

/// The GPUs `--device` names, as llama.cpp's device handles (empty: all).
pub(super) fn chosen_devices(placement: &Placement) -> Result<Vec<llama_cpp_sys_2::ggml_backend_dev_t>> {
    Ok(chosen_device_indices(placement)?
        .into_iter()
        // SAFETY: each index was listed by ggml's device registry just before.
        .map(|index| unsafe { llama_cpp_sys_2::ggml_backend_dev_get(index) })
        .collect())
}

/// llama.cpp's fit: the most GPU layers and (when `ctx_size` is 0) the largest context,
/// up to the training context and at least [`DEFAULT_CTX`], that fit in free memory.
fn fit_to_memory(path: &Path, params: Pin<&mut LlamaModelParams>, header: &GgufHeader, ctx_size: u32) -> Result<u32> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("{}: the path holds a NUL byte", path.display()))?;
    let mut cparams = LlamaContextParams::default().with_n_ctx(std::num::NonZeroU32::new(ctx_size));
    let mut margins = vec![FIT_MARGIN_BYTES; llama_cpp_2::max_devices().max(1)];
    let trained = training_context(header).unwrap_or(DEFAULT_CTX);
    let _one_fit = fit_lock();
    super::log::start_capture();
    let fitted = params.fit_params(
        &c_path,
        &mut cparams,
        &mut margins,
        DEFAULT_CTX.min(trained),
        llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR,
    );
    match fitted {
        Ok(fitted) => Ok(fitted.n_ctx),
        // As llama.cpp's tools do: no placement fits, so load as asked and let the load
        // say what is short.
        Err(FitError::Failure) => {
            eprintln!(
                "note: {}: no placement fits in free memory; loading every layer on the GPU",
                path.display()
            );
            Ok(if ctx_size > 0 {
                ctx_size
            } else {
                DEFAULT_CTX.min(trained)
            })
        }
        Err(e) => Err(super::model::refusal(
            format!("{}: llama.cpp cannot load this file", path.display()),
            e,
        )),
    }
}

/// `<arch>.context_length` of the file.
pub(super) fn training_context(header: &GgufHeader) -> Option<u32> {
    arch_integer(header, "context_length").and_then(|n| u32::try_from(n).ok())
}

fn block_count(header: &GgufHeader) -> Option<u64> {
    arch_integer(header, "block_count").and_then(|n| u64::try_from(n).ok())
}

/// `<arch>.<key>` as an integer.
pub(super) fn arch_integer(header: &GgufHeader, key: &str) -> Option<i128> {
    let arch = header.architecture()?;
    header.get(&format!("{arch}.{key}"))?.as_integer()
}

/// Refuses what llama.cpp would throw on, or silently ignore, before it loads anything.
fn check_placement(
    placement: &Placement,
    header: &GgufHeader,
    devices: &[Device],
    overrides: &[TensorOverride],
) -> Result<()> {
    let gpus: Vec<&Device> = devices.iter().filter(|d| d.is_gpu).collect();
    for name in &placement.devices {
        match devices.iter().find(|d| d.name.eq_ignore_ascii_case(name)) {
            Some(d) if d.is_gpu => {}
            Some(_) => bail!("--device {name}: not a GPU; the CPU is always used, leave it out of the list"),
            None => bail!(
                "--device {name}: no such device (`glm devices` lists them: {})",
                names(devices)
            ),
        }
    }
    if placement.main_gpu < 0 || (placement.main_gpu > 0 && placement.main_gpu as usize >= gpus.len()) {
        bail!(
            "--main-gpu {}: this machine has {} GPU(s)",
            placement.main_gpu,
            gpus.len()
        );
    }
    if !placement.tensor_split.is_empty() {
        check_tensor_split(&placement.tensor_split, gpus.len())?;
    }
    let layers = block_count(header).unwrap_or(0);
    if u64::from(placement.n_cpu_moe) > layers {
        bail!(
            "--n-cpu-moe {}: the model has only {layers} layers",
            placement.n_cpu_moe
        );
    }
    for o in overrides {
        regex::Regex::new(&o.pattern).map_err(|e| {
            anyhow!(
                "--override-tensor {}: not a valid regular expression: {}",
                o.pattern,
                first_line(&e.to_string())
            )
        })?;
        check_buffer(&o.buffer, devices)?;
    }
    Ok(())
}

/// Shares for `--tensor-split`: one per GPU at most, none negative, not all zero.
fn check_tensor_split(split: &[f32], gpus: usize) -> Result<()> {
    if split.iter().any(|s| !s.is_finite() || *s < 0.0) || split.iter().sum::<f32>() <= 0.0 {
        bail!("--tensor-split: shares must be non-negative numbers, not all zero");
    }
    if split.len() > gpus.max(1) {
        bail!(
            "--tensor-split: {} shares for {gpus} GPU(s) (RPC servers' devices count)",
            split.len()
        );
    }
    Ok(())
}

/// A buffer name of `--override-tensor`: the CPU's, or a device's (`CUDA0`, `Vulkan0`,
/// `RPC0`).
fn check_buffer(buffer: &str, devices: &[Device]) -> Result<()> {
    if buffer.eq_ignore_ascii_case("CPU") || devices.iter().any(|d| d.is_gpu && d.name.eq_ignore_ascii_case(buffer)) {
        return Ok(());
    }
    let mut known = vec!["CPU".to_owned()];
    known.extend(devices.iter().filter(|d| d.is_gpu).map(|d| d.name.clone()));
    bail!(
        "--override-tensor ...={buffer}: unknown buffer (known: {})",
        known.join(", ")
    )
}

fn names(devices: &[Device]) -> String {
    devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses `REGEX=BUFFER` (the last `=` separates them: a pattern may hold `=`).
pub fn parse_override(text: &str) -> Result<TensorOverride, String> {
    let (pattern, buffer) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("{text:?}: expected REGEX=BUFFER, e.g. exps=CPU"))?;
    if pattern.is_empty() || buffer.is_empty() {
        return Err(format!("{text:?}: expected REGEX=BUFFER, e.g. exps=CPU"));
    }
    Ok(TensorOverride {
        pattern: pattern.to_owned(),
        buffer: buffer.to_owned(),
    })
}
