//! llama.cpp's RPC backend: devices of other machines joined to this one's (`--rpc`), and
//! this machine's devices served to others (`glm rpc-server`).
//!
//! ggml's RPC client aborts the process when a server cannot be reached, speaks another
//! protocol version or goes away, and waits without limit for an answer. So glm first
//! connects and says hello itself, with time-outs, which makes the first two one line
//! naming the endpoint; ggml's aborts become one line and exit 1 (see `model::on_abort`);
//! and while an evaluation runs on remote devices, a watchdog ends the process with one
//! line when it takes longer than the time-out.

use std::ffi::{c_char, CStr, CString};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use llama_cpp_sys_2 as sys;

/// The port `glm rpc-server` listens on unless told otherwise (llama.cpp's).
pub const DEFAULT_PORT: u16 = 50052;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

// The protocol's first exchange, from ggml-rpc.cpp in llama-cpp-sys-2's llama.cpp: a
// command byte, its size as a little-endian u64, the request (the connection's
// capabilities, zero for plain TCP); the answer is its size and the server's version
// (major, minor, patch, padding) with its capabilities.
const CMD_HELLO: u8 = 14;
const CONN_CAPS_SIZE: usize = 24;
const HELLO_REPLY_SIZE: usize = 4 + CONN_CAPS_SIZE;
/// The protocol version of the ggml-rpc this glm links; a server with another major
/// version, or a newer minor one, cannot serve it.
pub const PROTOCOL: (u8, u8) = (7, 0);

/// Endpoints whose devices are registered with ggml (each once: registering twice would
/// list its devices twice).
static CONNECTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A `HOST:PORT` endpoint, checked (ggml aborts on one it cannot parse).
pub fn parse_endpoint(text: &str) -> Result<String, String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?}: expected HOST:PORT, e.g. 192.168.1.20:{DEFAULT_PORT}"))?;
    if host.is_empty() || host.contains(':') || host.chars().any(char::is_whitespace) {
        return Err(format!(
            "{text:?}: expected HOST:PORT with a host name or IPv4 address (llama.cpp's RPC takes no IPv6)"
        ));
    }
    match port.parse::<u16>() {
        Ok(1..) => Ok(text.to_owned()),
        _ => Err(format!("{text:?}: the port must be 1..65535")),
    }
}

/// Joins the devices of the RPC servers at `endpoints` to the ones llama.cpp sees; they
/// come first in the device list, as llama.cpp orders them.
pub fn connect(endpoints: &[String]) -> Result<()> {
    super::model::backend()?;
    let mut connected = CONNECTED.lock().unwrap_or_else(|e| e.into_inner());
    for endpoint in endpoints {
        if connected.contains(endpoint) {
            continue;
        }
        say_hello(endpoint)?;
        register(endpoint)?;
        connected.push(endpoint.clone());
    }
    Ok(())
}

/// The endpoints connected so far, for messages.
pub fn connected() -> Vec<String> {
    CONNECTED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// As [`connected`], for a fatal error: never waits (ggml may abort inside `connect`,
/// which holds the lock).
pub(super) fn connected_now() -> Vec<String> {
    CONNECTED.try_lock().map(|list| list.clone()).unwrap_or_default()
}

/// Connects with a time-out and checks the server's protocol version.
fn say_hello(endpoint: &str) -> Result<()> {
    let addresses: Vec<_> = endpoint
        .to_socket_addrs()
        .with_context(|| format!("RPC server {endpoint}: cannot resolve the host"))?
        .collect();
    let mut last_error = None;
    let mut stream = None;
    for address in &addresses {
        match TcpStream::connect_timeout(address, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| {
        let why = last_error.map_or("no address".to_owned(), |e| e.to_string());
        anyhow!("RPC server {endpoint}: cannot connect ({why}); is `glm rpc-server` running there, and the port open?")
    })?;
    stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
    stream.set_write_timeout(Some(HELLO_TIMEOUT))?;
    let mut request = vec![CMD_HELLO];
    request.extend((CONN_CAPS_SIZE as u64).to_le_bytes());
    request.extend([0u8; CONN_CAPS_SIZE]);
    let mut size = [0u8; 8];
    let mut reply = [0u8; HELLO_REPLY_SIZE];
    let exchanged = stream
        .write_all(&request)
        .and_then(|()| stream.read_exact(&mut size))
        .and_then(|()| {
            if u64::from_le_bytes(size) != HELLO_REPLY_SIZE as u64 {
                return Err(std::io::Error::other("unexpected answer size"));
            }
            stream.read_exact(&mut reply)
        });
    if let Err(e) = exchanged {
        bail!(
            "RPC server {endpoint}: no valid answer to the handshake ({e}): not a glm rpc-server or llama.cpp rpc-server of protocol {}.{}",
            PROTOCOL.0,
            PROTOCOL.1
        );
    }
    let (major, minor, patch) = (reply[0], reply[1], reply[2]);
    if major != PROTOCOL.0 || minor > PROTOCOL.1 {
        bail!(
            "RPC server {endpoint} speaks protocol {major}.{minor}.{patch}; this glm speaks {}.{}: run the same glm version on every machine",
            PROTOCOL.0,
            PROTOCOL.1
        );
    }
    Ok(())
}

/// The RPC backend's registry (absent from a build without `GGML_RPC`).
fn rpc_registry() -> Result<sys::ggml_backend_reg_t> {
    // SAFETY: looks a name up in ggml's backend registry, which the backend started.
    let registry = unsafe { sys::ggml_backend_reg_by_name(c"RPC".as_ptr()) };
    if registry.is_null() {
        bail!("this glm was built without llama.cpp's RPC backend");
    }
    Ok(registry)
}

/// A function of the RPC backend, looked up by name as llama.cpp's own tools do.
fn rpc_function(name: &CStr) -> Result<*mut std::ffi::c_void> {
    let registry = rpc_registry()?;
    // SAFETY: `registry` is the RPC backend's; the name is a NUL-terminated string.
    let function = unsafe { sys::ggml_backend_reg_get_proc_address(registry, name.as_ptr()) };
    if function.is_null() {
        bail!("llama.cpp's RPC backend lacks {}", name.to_string_lossy());
    }
    Ok(function)
}

type AddServer = unsafe extern "C" fn(*const c_char) -> sys::ggml_backend_reg_t;
type StartServer = unsafe extern "C" fn(*const c_char, *const c_char, usize, usize, *mut sys::ggml_backend_dev_t);

fn register(endpoint: &str) -> Result<()> {
    let add_server = rpc_function(c"ggml_backend_rpc_add_server")?;
    let text = CString::new(endpoint).context("endpoint")?;
    // SAFETY: the pointer is ggml's `ggml_backend_rpc_add_server`, whose C signature
    // `AddServer` repeats (ggml-rpc.h). The endpoint parses (`parse_endpoint`) and the
    // server answered the handshake, so ggml's connect does not abort.
    let server = unsafe {
        let add_server: AddServer = std::mem::transmute(add_server);
        add_server(text.as_ptr())
    };
    if server.is_null() {
        bail!("RPC server {endpoint}: it offers no devices");
    }
    // SAFETY: `server` is a registry ggml made for the endpoint, registered once (see
    // `CONNECTED`).
    unsafe { sys::ggml_backend_register(server) };
    Ok(())
}

/// Serves `devices` at `endpoint` until the process ends; returns only when ggml could
/// not start (its reason is on stderr).
pub fn serve(endpoint: &str, cache_dir: Option<&std::path::Path>, threads: usize, devices: &[String]) -> Result<()> {
    super::model::backend()?;
    let start_server = rpc_function(c"ggml_backend_rpc_start_server")?;
    let mut chosen = Vec::with_capacity(devices.len());
    for name in devices {
        let text = CString::new(name.as_str()).context("device name")?;
        // SAFETY: a lookup by NUL-terminated name in ggml's device registry.
        let device = unsafe { sys::ggml_backend_dev_by_name(text.as_ptr()) };
        if device.is_null() {
            bail!("no device {name}");
        }
        chosen.push(device);
    }
    let endpoint = CString::new(endpoint).context("endpoint")?;
    let cache = cache_dir
        .map(|dir| CString::new(dir.to_string_lossy().into_owned()).context("cache folder"))
        .transpose()?;
    // SAFETY: the pointer is ggml's `ggml_backend_rpc_start_server` (signature as in
    // ggml-rpc.h); every pointer passed lives until it returns, the devices are ggml's
    // own, and there is at least one.
    unsafe {
        let start_server: StartServer = std::mem::transmute(start_server);
        start_server(
            endpoint.as_ptr(),
            cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            threads,
            chosen.len(),
            chosen.as_mut_ptr(),
        );
    }
    bail!("the RPC server stopped")
}

/// Ends a serving process at once with status 0: the server's thread is inside ggml,
/// whose static destructors must not run under it.
pub fn end_serving() -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit(2) ends the process without running destructors or atexit handlers.
    unsafe { libc::_exit(0) }
}

/// Whether evaluations may wait on remote devices, and for how long.
static WATCHED: AtomicBool = AtomicBool::new(false);
static TIMEOUT_SECS: AtomicU64 = AtomicU64::new(300);
/// Milliseconds since `EPOCH` when the evaluation under way began; 0 when none runs.
static CALL_STARTED: AtomicU64 = AtomicU64::new(0);
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Starts the watchdog: an evaluation that takes longer than `timeout` ends the process
/// with one line (a remote machine that vanished without closing its connection would
/// otherwise be waited for without end).
pub fn watch_evaluations(timeout: Duration) {
    TIMEOUT_SECS.store(timeout.as_secs().max(1), Ordering::Relaxed);
    if WATCHED.swap(true, Ordering::SeqCst) {
        return;
    }
    EPOCH.get_or_init(Instant::now);
    let _ = std::thread::Builder::new()
        .name("glm-rpc-watchdog".to_owned())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_millis(500));
            let started = CALL_STARTED.load(Ordering::SeqCst);
            let limit = TIMEOUT_SECS.load(Ordering::Relaxed) * 1000;
            if started != 0 && now_millis().saturating_sub(started) > limit {
                super::model::exit_with(&format!(
                    "an evaluation on the RPC servers ({}) took over {} s; one stopped answering (--rpc-timeout)",
                    connected_now().join(", "),
                    limit / 1000
                ));
            }
        });
}

fn now_millis() -> u64 {
    EPOCH.get().map_or(0, |epoch| epoch.elapsed().as_millis() as u64 + 1)
}

/// Marks an evaluation under way for the watchdog, until dropped.
pub struct Watch(bool);

pub fn watch() -> Watch {
    let on = WATCHED.load(Ordering::Relaxed);
    if on {
        CALL_STARTED.store(now_millis(), Ordering::SeqCst);
    }
    Watch(on)
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.0 {
            CALL_STARTED.store(0, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_host_and_port() {
        assert_eq!(parse_endpoint("10.0.0.2:50052").unwrap(), "10.0.0.2:50052");
        assert_eq!(parse_endpoint("gpu-box:1").unwrap(), "gpu-box:1");
        for bad in [
            "10.0.0.2",
            ":50052",
            "host:0",
            "host:65536",
            "host:port",
            "[::1]:50052",
            "a b:1",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_closed_port_is_one_line_naming_the_endpoint() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        drop(listener);
        let error = say_hello(&endpoint).unwrap_err().to_string();
        assert!(error.contains(&endpoint) && error.contains("cannot connect"), "{error}");
    }

    /// What `say_hello` says of a fake server that reads the hello and answers `reply`.
    fn hello_to_fake_server(reply: Vec<u8>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let server = std::thread::spawn(move || {
            let (mut client, _) = listener.accept().unwrap();
            let mut hello = [0u8; 1 + 8 + CONN_CAPS_SIZE];
            client.read_exact(&mut hello).unwrap();
            assert_eq!(hello[0], CMD_HELLO);
            client.write_all(&reply).unwrap();
        });
        let error = say_hello(&endpoint).unwrap_err().to_string();
        server.join().unwrap();
        assert!(error.contains(&endpoint), "{error}");
        error
    }

    #[test]
    fn a_server_of_another_protocol_is_refused_by_version() {
        let mut reply = (HELLO_REPLY_SIZE as u64).to_le_bytes().to_vec();
        reply.extend([3, 0, 0, 0]);
        reply.extend([0u8; CONN_CAPS_SIZE]);
        let error = hello_to_fake_server(reply);
        assert!(error.contains("protocol 3.0.0"), "{error}");
    }

    #[test]
    fn something_else_on_the_port_is_not_a_server() {
        let error = hello_to_fake_server(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec());
        assert!(error.contains("no valid answer"), "{error}");
    }
}
