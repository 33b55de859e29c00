//! Several machines through llama.cpp's RPC backend, on loopback: `glm rpc-server`
//! processes on free ports serve their CPU; `--rpc` puts layers on them. Logits and
//! greedy text must match the local run; a server that is gone, never was, or dies
//! mid-answer is one line naming it and a non-zero exit.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// The largest |Δ| between local logits and logits computed on RPC servers. The servers
/// run the same CPU kernels, but a graph split across backends copies activations
/// between them; measured: 0 on this fixture (bit-identical). The bound leaves room for
/// the summation order of a different thread count on the server.
const RPC_LOGIT_TOLERANCE: f32 = 1e-4;

/// A running `glm rpc-server`, killed when dropped.
struct RpcServer {
    child: Child,
    endpoint: String,
}

impl RpcServer {
    fn start() -> RpcServer {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_glm"))
            .args(["rpc-server", "--port", &port.to_string(), "-t", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start glm rpc-server");
        let (ready, started) = mpsc::channel();
        let lines = BufReader::new(child.stderr.take().expect("stderr"));
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if line.contains("serving") {
                    let _ = ready.send(());
                }
            }
        });
        started
            .recv_timeout(Duration::from_secs(60))
            .expect("glm rpc-server did not start");
        let endpoint = format!("127.0.0.1:{port}");
        // ggml's listener comes up just after glm's line.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&endpoint).is_err() {
            assert!(Instant::now() < deadline, "{endpoint} never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        RpcServer { child, endpoint }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

fn glm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glm"))
        .args(args)
        .env("GLM_CACHE_DIR", std::env::temp_dir().join("glm-test-cache"))
        .stdin(Stdio::null())
        .output()
        .expect("glm")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn logits(model: &Path, flags: &[&str]) -> Vec<f32> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("logits.json");
    let model = model.to_str().expect("path");
    let out_arg = out.to_str().expect("path");
    let mut args = vec!["logits", model, "--tokens", "1,2,3,4,5,6,7", "-t", "2", "-o", out_arg];
    args.extend(flags);
    let output = glm(&args);
    assert!(output.status.success(), "{flags:?}: {}", text(&output.stderr));
    floats(&read_json(&out)["logits"][0])
}

fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn greedy_run(model: &Path, flags: &[&str]) -> String {
    let mut args = vec![
        "run",
        model.to_str().expect("path"),
        "-p",
        "Tell me a story",
        "-n",
        "24",
    ];
    args.extend(["--temp", "0", "--no-think", "-t", "2"]);
    args.extend(flags);
    let output = glm(&args);
    assert!(output.status.success(), "{flags:?}: {}", text(&output.stderr));
    text(&output.stdout)
}

#[test]
fn layers_on_one_or_two_servers_give_the_local_logits_and_text() {
    let model = converted("glm4moe-tiny", "q8_0");
    let local = logits(&model, &["-ngl", "0"]);
    let local_text = greedy_run(&model, &[]);
    let one = RpcServer::start();
    let two = RpcServer::start();
    let both = format!("{},{}", one.endpoint, two.endpoint);
    let cases: [(&str, Vec<&str>); 4] = [
        ("all layers on one server", vec!["--rpc", &one.endpoint, "-ngl", "all"]),
        (
            "some layers remote, the rest local",
            vec!["--rpc", &one.endpoint, "-ngl", "2"],
        ),
        (
            "split over two servers",
            vec!["--rpc", &both, "-ngl", "all", "--tensor-split", "1,1"],
        ),
        (
            "two servers and the CPU",
            vec!["--rpc", &both, "-ngl", "3", "--tensor-split", "2,1"],
        ),
    ];
    for (what, flags) in &cases {
        let remote = logits(&model, flags);
        let difference = largest_difference(&remote, &local);
        assert!(difference <= RPC_LOGIT_TOLERANCE, "{what}: |Δlogit| {difference}");
        assert_eq!(greedy_run(&model, flags), local_text, "{what}");
    }
}

#[test]
fn devices_lists_the_servers_devices() {
    let server = RpcServer::start();
    let output = glm(&["devices", "--rpc", &server.endpoint]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert!(
        rows.iter()
            .any(|r| r.starts_with("RPC0 ") && r.contains(&server.endpoint)),
        "{stdout}"
    );
    assert!(rows.iter().any(|r| r.starts_with("CPU")), "{stdout}");
}

#[test]
fn a_server_that_is_not_there_is_one_line() {
    let model = converted("glm4moe-tiny", "q8_0");
    let endpoint = format!("127.0.0.1:{}", free_port());
    let output = glm(&["run", model.to_str().expect("path"), "-p", "hi", "--rpc", &endpoint]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&endpoint) && stderr.contains("cannot connect"),
        "{stderr}"
    );
    let output = glm(&["devices", "--rpc", "localhost"]);
    assert_eq!(output.status.code(), Some(2), "a malformed endpoint is a usage error");
    assert!(text(&output.stderr).contains("HOST:PORT"));
}

/// `glm run` generating without end on the RPC server at `endpoint`, once its first
/// word is out.
struct EndlessRun {
    child: Child,
    answer: BufReader<std::process::ChildStdout>,
}

impl EndlessRun {
    fn start(endpoint: &str, extra: &[&str]) -> EndlessRun {
        let model = converted("glm4moe-tiny", "q8_0");
        let mut child = Command::new(env!("CARGO_BIN_EXE_glm"))
            .args([
                "run",
                model.to_str().expect("path"),
                "-p",
                "go",
                "-n",
                "-1",
                "--ignore-eos",
            ])
            .args(["--no-think", "--rpc", endpoint, "-ngl", "all", "-c", "60000", "-t", "1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("glm run");
        let mut answer = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = Vec::new();
        answer.read_until(b' ', &mut first).expect("some text");
        assert!(!first.is_empty(), "the answer started");
        EndlessRun { child, answer }
    }

    /// Waits (at most a minute: glm must not hang) for the end; the exit code and the
    /// last line of stderr.
    fn end(mut self) -> (Option<i32>, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "glm waits without end");
            std::thread::sleep(Duration::from_millis(50));
        };
        std::io::copy(&mut self.answer, &mut std::io::sink()).expect("drain");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
        assert!(!stderr.contains("backtrace") && !stderr.contains("Aborted"), "{stderr}");
        let last = stderr.trim().lines().last().unwrap_or_default().to_owned();
        (status.code(), last)
    }
}

#[test]
fn a_server_killed_mid_answer_is_one_line_and_exit_1() {
    let mut server = RpcServer::start();
    let run = EndlessRun::start(&server.endpoint, &[]);
    let connections = tcp_peers(run.child.id());
    assert!(
        !connections.is_empty() && connections.iter().all(|peer| *peer == server.endpoint),
        "glm connects only to the servers it was given: {connections:?}"
    );
    server.child.kill().expect("kill the server");
    let (code, last) = run.end();
    assert_eq!(code, Some(1), "{last}");
    assert!(last.starts_with("error: ") && last.contains(&server.endpoint), "{last}");
}

#[test]
fn a_server_that_stops_answering_times_out_with_one_line() {
    let server = RpcServer::start();
    let run = EndlessRun::start(&server.endpoint, &["--rpc-timeout", "2"]);
    // A frozen machine: the connection stays open, nothing answers.
    // SAFETY: signals the server process this test started and still owns.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGSTOP) };
    let (code, last) = run.end();
    // SAFETY: as above; the server is killed when `server` drops.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGCONT) };
    assert_eq!(code, Some(1), "{last}");
    assert!(
        last.contains("took over 2 s") && last.contains(&server.endpoint),
        "{last}"
    );
}

/// The remote ends (`IP:PORT`) of the TCP connections process `pid` holds, from /proc.
fn tcp_peers(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut peers = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && inodes.iter().any(|i| i == fields[9]) {
                peers.push(address(fields[2]));
            }
        }
    }
    peers
}

/// /proc/net/tcp's `0100007F:C354` as `127.0.0.1:50004`.
fn address(hex: &str) -> String {
    let (ip, port) = hex.split_once(':').expect("address");
    let port = u16::from_str_radix(port, 16).expect("port");
    if ip.len() == 8 {
        let ip = u32::from_str_radix(ip, 16).expect("ip").to_le_bytes();
        return format!("{}.{}.{}.{}:{port}", ip[0], ip[1], ip[2], ip[3]);
    }
    format!("[{ip}]:{port}")
}

#[test]
fn the_server_says_what_it_serves_warns_off_loopback_and_stops_on_sigterm() {
    let port = free_port().to_string();
    let mut server = Command::new(env!("CARGO_BIN_EXE_glm"))
        .args(["rpc-server", "--host", "0.0.0.0", "--port", &port, "-t", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start glm rpc-server");
    let mut lines = BufReader::new(server.stderr.take().expect("stderr")).lines();
    let warning = lines.next().expect("a line").expect("text");
    assert!(
        warning.contains("WARNING") && warning.contains("NO authentication"),
        "{warning}"
    );
    let serving = lines.next().expect("a line").expect("text");
    assert!(
        serving.contains("serving CPU (") && serving.contains("GiB free"),
        "{serving}"
    );
    assert!(serving.contains(&format!("0.0.0.0:{port}")), "{serving}");

    let taken = glm(&["rpc-server", "--port", &port]);
    assert_eq!(taken.status.code(), Some(1));
    let stderr = text(&taken.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );

    // SAFETY: signals the child this test started and still owns.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let status = server.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(rest, ["glm rpc-server: stopping"]);

    let unknown = glm(&["rpc-server", "--port", &free_port().to_string(), "-d", "NOPE"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown.stderr).contains("no device \"NOPE\"; the devices are: CPU"),
        "{}",
        text(&unknown.stderr)
    );
}
