//! llama.cpp's, ggml's and libmtmd's log, kept instead of printed: when llama.cpp refuses
//! a model, a projector or a context, its own error line says why, and glm shows that
//! line instead of a bare failure. With `GLM_LLAMA_LOG` set the log also goes to stderr.
//!
//! llama-cpp-2 can forward these logs to `tracing`, but then getting one call's error
//! line back needs a tracing subscriber as well; a small callback of our own is simpler.

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use llama_cpp_sys_2::{ggml_log_level, GGML_LOG_LEVEL_CONT, GGML_LOG_LEVEL_ERROR};

/// Error lines since the last [`start_capture`], at most this many.
const KEPT_LINES: usize = 32;
const KEPT_LINE_BYTES: usize = 1024;

static ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LAST_LEVEL: AtomicU32 = AtomicU32::new(0);
static ECHO: AtomicBool = AtomicBool::new(false);

/// Routes all three logs to [`capture`]; call once, after the backend is initialised.
pub fn install() {
    if std::env::var_os("GLM_LLAMA_LOG").is_some() {
        ECHO.store(true, Ordering::SeqCst);
    }
    // SAFETY: `capture` matches ggml's log callback signature, needs no user data, and
    // stays valid for the life of the process. ggml's is set last because setting
    // llama.cpp's also sets ggml's.
    unsafe {
        llama_cpp_sys_2::llama_log_set(Some(capture), std::ptr::null_mut());
        llama_cpp_sys_2::mtmd_helper_log_set(Some(capture), std::ptr::null_mut());
        llama_cpp_sys_2::ggml_log_set(Some(capture), std::ptr::null_mut());
    }
}

/// Also prints llama.cpp's log to stderr (`-v`).
pub fn show_llama_log() {
    ECHO.store(true, Ordering::SeqCst);
}

/// Forgets earlier error lines; call before a llama.cpp call whose failure is explained.
pub fn start_capture() {
    errors().clear();
}

/// The first error line llama.cpp logged since [`start_capture`] (the first is the most
/// specific: later ones only report that loading failed), without its function prefix.
pub fn reason() -> Option<String> {
    errors().first().map(|line| strip_function(line).to_owned())
}

fn errors() -> std::sync::MutexGuard<'static, Vec<String>> {
    ERRORS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `llama_model_load: error loading model: X` → `error loading model: X`.
fn strip_function(line: &str) -> &str {
    match line.split_once(": ") {
        Some((head, rest)) if !head.is_empty() && head.chars().all(|c| c.is_alphanumeric() || c == '_') => rest,
        _ => line,
    }
}

/// The log callback. It must not panic: a panic cannot unwind into C.
unsafe extern "C" fn capture(level: ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: ggml passes a NUL-terminated string that is valid for this call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if ECHO.load(Ordering::Relaxed) {
        eprint!("{text}");
    }
    let level = if level == GGML_LOG_LEVEL_CONT {
        LAST_LEVEL.load(Ordering::Relaxed)
    } else {
        LAST_LEVEL.store(level, Ordering::Relaxed);
        level
    };
    if level != GGML_LOG_LEVEL_ERROR {
        return;
    }
    let line = text.trim();
    if line.is_empty() {
        return;
    }
    let mut errors = errors();
    if errors.len() < KEPT_LINES {
        errors.push(line[..line.floor_char_boundary(KEPT_LINE_BYTES)].to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_prefixes_are_dropped() {
        assert_eq!(
            strip_function("llama_model_load: error loading model: missing tensor 'x'"),
            "error loading model: missing tensor 'x'"
        );
        assert_eq!(strip_function("plain text: here"), "plain text: here");
    }
}
