//! `glm rpc-server`: this machine's devices served over llama.cpp's RPC protocol to glm
//! (`--rpc`) on other machines, until Ctrl-C or SIGTERM.

use std::net::{IpAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::RpcServerArgs;
use crate::engine::Device;

pub fn run(args: &RpcServerArgs) -> Result<()> {
    let endpoint = crate::engine::rpc::parse_endpoint(&format!("{}:{}", args.host, args.port))
        .map_err(|e| anyhow::anyhow!("--host/--port: {e}"))?;
    // ggml binds by itself and says only "Failed to create server socket"; binding here
    // first makes a port in use or a foreign address one line.
    let probe =
        TcpListener::bind((args.host.as_str(), args.port)).with_context(|| format!("cannot listen on {endpoint}"))?;
    let address = probe.local_addr().context("reading the listening address")?;
    drop(probe);
    let chosen = chosen_devices(&args.devices)?;
    let memory = memory_of(&chosen);
    let devices: Vec<String> = chosen.into_iter().map(|d| d.name).collect();
    let cache = args.cache.as_ref().map(|dir| cache_dir(dir.as_ref())).transpose()?;
    let threads = args.threads.unwrap_or_else(super::physical_cores) as usize;
    warn_if_exposed(address.ip());
    eprintln!(
        "glm rpc-server: serving {memory} on {endpoint} (protocol {}.{}){}; Ctrl-C stops it",
        crate::engine::rpc::PROTOCOL.0,
        crate::engine::rpc::PROTOCOL.1,
        cache
            .as_ref()
            .map_or(String::new(), |c| format!(", weights cached in {}", c.display()))
    );
    crate::signals::claim_termination();
    let server = std::thread::Builder::new()
        .name("glm-rpc-server".to_owned())
        .spawn(move || crate::engine::rpc::serve(&endpoint, cache.as_deref(), threads, &devices))
        .context("starting the server thread")?;
    while !crate::signals::interrupted() {
        if server.is_finished() {
            return match server.join() {
                Ok(Err(e)) => Err(e),
                _ => bail!("the RPC server stopped"),
            };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("glm rpc-server: stopping");
    crate::engine::rpc::end_serving()
}

/// The devices asked for, checked by name; else the GPUs, else the CPU (as llama.cpp's
/// rpc-server chooses).
fn chosen_devices(asked: &[String]) -> Result<Vec<Device>> {
    let devices = crate::engine::devices()?;
    if asked.is_empty() {
        let gpus: Vec<Device> = devices
            .iter()
            .filter(|d| d.kind == "GPU" || d.kind == "iGPU")
            .cloned()
            .collect();
        if !gpus.is_empty() {
            return Ok(gpus);
        }
        return match devices.into_iter().find(|d| d.kind == "CPU") {
            Some(cpu) => Ok(vec![cpu]),
            None => bail!("llama.cpp sees no device to serve"),
        };
    }
    asked
        .iter()
        .map(|name| {
            devices.iter().find(|d| &d.name == name).cloned().ok_or_else(|| {
                let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
                anyhow::anyhow!("--device: no device {name:?}; the devices are: {}", names.join(", "))
            })
        })
        .collect()
}

/// "CPU (23.5 GiB free of 23.5 GiB)" for each device.
fn memory_of(devices: &[Device]) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    devices
        .iter()
        .map(|d| {
            format!(
                "{} ({:.1} GiB free of {:.1} GiB)",
                d.name,
                d.free_bytes as f64 / GIB,
                d.total_bytes as f64 / GIB
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The weights cache: the folder given, or for `--cache` alone glm's cache folder's
/// `rpc`; made if missing.
fn cache_dir(asked: Option<&PathBuf>) -> Result<PathBuf> {
    let dir = match asked {
        Some(dir) => dir.clone(),
        None => crate::model_source::cache_dir()?.join("rpc"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot make the cache folder", dir.display()))?;
    if !dir.is_dir() {
        bail!("{}: not a folder", dir.display());
    }
    Ok(dir)
}

fn warn_if_exposed(ip: IpAddr) {
    if ip.is_loopback() {
        return;
    }
    eprintln!(
        "glm rpc-server: WARNING: listening on {ip}, reachable from other machines. The RPC protocol has NO authentication and NO encryption: anyone who reaches this port can use this machine's devices, read what they hold and send it crafted data. Listen only on a private network you trust, behind a firewall that admits only your glm machines."
    );
}
