//! A Hugging Face Hub lookalike for tests: serves repositories defined in the test from
//! memory on `127.0.0.1`, speaking the part of the Hub's HTTP interface glm uses, with
//! knobs for the failures a real network brings (tokens, cut connections, corrupt files,
//! hostile answers) and a log of what was asked.
//!
//! ```ignore
//! let server = HubServer::start(vec![RepoSpec::fixture("zai-org/GLM-Tiny", "glm-tiny")]);
//! // HF_ENDPOINT=server.endpoint() glm run zai-org/GLM-Tiny ...
//! ```
//!
//! Routes, as on huggingface.co:
//! - `GET /api/models/{org}/{name}/revision/{rev}`: `{"sha", "siblings": [{"rfilename",
//!   "size", "blobId", "lfs": {"sha256", "size"}}]}`; `rev` is `main` or the commit.
//! - `GET`/`HEAD /{org}/{name}/resolve/{rev}/{path}`: small files directly (`ETag` = git
//!   blob sha1); LFS files (`.safetensors`, `.gguf`, `.bin`) by a 302 to `/cdn/{sha256}`
//!   with `X-Linked-Etag` (sha256) and `X-Linked-Size`. Both carry `X-Repo-Commit`.
//! - `GET /cdn/{sha256}`: the bytes, no token needed (the real CDN takes signed URLs).
//! - `Range: bytes=N-` gives 206 with `Content-Range`.
//!
//! One request per connection (`Connection: close`), one thread per connection.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use sha1::Digest as _;

/// A repository the server holds: its id, its one commit, and its files.
#[derive(Debug, Clone)]
pub struct RepoSpec {
    /// `ORG/NAME`.
    pub id: String,
    /// 40 hex digits; `main` resolves to it.
    pub commit: String,
    /// `(path in the repository, bytes)`.
    pub files: Vec<(String, Vec<u8>)>,
}

impl RepoSpec {
    /// A repository of the given files at a commit derived from their content.
    pub fn new(id: &str, files: Vec<(&str, Vec<u8>)>) -> RepoSpec {
        let files: Vec<(String, Vec<u8>)> = files.into_iter().map(|(n, b)| (n.to_string(), b)).collect();
        let mut sha1 = sha1::Sha1::new();
        for (name, bytes) in &files {
            sha1.update(name.as_bytes());
            sha1.update(bytes);
        }
        RepoSpec {
            id: id.to_string(),
            commit: hex(&sha1.finalize()),
            files,
        }
    }

    /// Every file under `folder` (recursively), named by its path relative to it.
    pub fn from_folder(id: &str, folder: &Path) -> RepoSpec {
        let mut files = Vec::new();
        collect(folder, "", &mut files);
        files.sort();
        let named = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
        RepoSpec::new(id, named)
    }

    /// A fixture of `tests/fixtures/models/<fixture>` served as the repository `id`,
    /// without `reference.json` (the tests' expectations, no part of a checkpoint).
    pub fn fixture(id: &str, fixture: &str) -> RepoSpec {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(fixture);
        assert!(folder.is_dir(), "no fixture {}", folder.display());
        let mut spec = RepoSpec::from_folder(id, &folder);
        spec.files.retain(|(name, _)| name != "reference.json");
        spec
    }

    /// The bytes of `name`.
    pub fn file(&self, name: &str) -> &[u8] {
        let found = self.files.iter().find(|(n, _)| n == name);
        &found.unwrap_or_else(|| panic!("{}: no file {name}", self.id)).1
    }
}

fn collect(dir: &Path, prefix: &str, files: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("UTF-8 file name");
        let name = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        if path.is_dir() {
            collect(&path, &name, files);
        } else {
            files.push((name, std::fs::read(&path).expect("fixture file")));
        }
    }
}

/// Files kept in LFS on the Hub (so listed with a sha256 and served through the CDN).
pub fn is_lfs(name: &str) -> bool {
    [".safetensors", ".gguf", ".bin"].iter().any(|ext| name.ends_with(ext))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// What git (and so the Hub's `ETag` of a small file) names `bytes` by.
pub fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut sha1 = sha1::Sha1::new();
    sha1.update(format!("blob {}\0", bytes.len()).as_bytes());
    sha1.update(bytes);
    hex(&sha1.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A misbehaviour of the server for one file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Different bytes of the right length, under the right hash headers.
    Corrupt,
    /// The next transfer stops after this many body bytes (the connection closes); later
    /// ones are whole.
    CutOnce(usize),
    /// A 302 with no `Location` header.
    RedirectWithoutLocation,
    /// A body with no length that never ends.
    EndlessBody,
    /// `Range` is ignored: always 200 with the whole file, as some mirrors do.
    IgnoreRange,
    /// No `ETag` or `X-Linked-Etag`: nothing to check a small file against but its size.
    NoEtag,
}

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    /// As sent, percent-encoded.
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    /// `(repo, file)` when the request transferred a file's content (a `GET` of a small
    /// file's `resolve` URL or of a CDN URL).
    pub content_of: Option<(String, String)>,
    /// Body bytes sent (for a cut transfer, up to the cut; an endless body counts 0).
    pub bytes: u64,
}

#[derive(Default)]
struct State {
    repos: Vec<RepoSpec>,
    token: Option<String>,
    faults: HashMap<(String, String), Fault>,
    listed_sizes: HashMap<(String, String), u64>,
    listings: HashMap<String, String>,
    delay: Option<Duration>,
    log: Vec<Logged>,
}

/// The running server; stops when dropped.
pub struct HubServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HubServer {
    /// Starts serving `repos` on a free port of 127.0.0.1.
    pub fn start(repos: Vec<RepoSpec>) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State {
            repos,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || accept_loop(listener, state, stop))
        };
        HubServer {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// The one-liner for end-to-end tests: fixture `fixture` served as `id`.
    pub fn fixture(id: &str, fixture: &str) -> HubServer {
        HubServer::start(vec![RepoSpec::fixture(id, fixture)])
    }

    /// For `HF_ENDPOINT`: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn repo(&self, id: &str) -> RepoSpec {
        let state = self.state();
        state
            .repos
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("no repo {id}"))
    }

    /// From now on the API and `resolve` URLs answer 401 without `Authorization: Bearer
    /// <token>` and 403 with another token.
    pub fn require_token(&self, token: &str) {
        self.state().token = Some(token.to_string());
    }

    pub fn set_fault(&self, repo: &str, file: &str, fault: Fault) {
        self.state().faults.insert((repo.to_string(), file.to_string()), fault);
    }

    /// The listing claims `size` for `file` (e.g. a petabyte, to test the space check).
    pub fn list_size(&self, repo: &str, file: &str, size: u64) {
        self.state()
            .listed_sizes
            .insert((repo.to_string(), file.to_string()), size);
    }

    /// The listing of `repo` is this text, whatever the files are (hostile listings).
    pub fn set_listing(&self, repo: &str, body: &str) {
        self.state().listings.insert(repo.to_string(), body.to_string());
    }

    /// Content is sent in 64 KiB pieces with this pause after each, so transfers overlap.
    pub fn slow_down(&self, pause: Duration) {
        self.state().delay = Some(pause);
    }

    /// Every request so far, in order of completion.
    pub fn log(&self) -> Vec<Logged> {
        self.state().log.clone()
    }

    pub fn request_count(&self) -> usize {
        self.state().log.len()
    }

    /// The transfers of `file`'s content.
    pub fn downloads(&self, repo: &str, file: &str) -> Vec<Logged> {
        let key = Some((repo.to_string(), file.to_string()));
        self.log().into_iter().filter(|l| l.content_of == key).collect()
    }

    /// Content bytes of `file` sent, over all its transfers.
    pub fn bytes_served(&self, repo: &str, file: &str) -> u64 {
        self.downloads(repo, file).iter().map(|l| l.bytes).sum()
    }

    /// Content transfers of any file.
    pub fn download_count(&self) -> usize {
        self.log().iter().filter(|l| l.content_of.is_some()).count()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>, stop: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let state = state.clone();
        std::thread::spawn(move || {
            let _ = handle(stream, &state);
        });
    }
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream.take(64 << 10));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    Ok(Request { method, path, headers })
}

/// An answer before it is written.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
    content_of: Option<(String, String)>,
}

enum Body {
    Bytes(Vec<u8>),
    /// Content: may be cut, slowed or endless.
    Content {
        bytes: Vec<u8>,
        cut: Option<usize>,
        endless: bool,
    },
}

impl Answer {
    fn new(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Body::Bytes(body.as_bytes().to_vec()),
            content_of: None,
        }
    }

    /// Body bytes this answer sends (an endless body counts as none).
    fn body_bytes(&self) -> u64 {
        match &self.body {
            Body::Bytes(b) => b.len() as u64,
            Body::Content { endless: true, .. } => 0,
            Body::Content { bytes, cut, .. } => cut.unwrap_or(bytes.len()).min(bytes.len()) as u64,
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Answer {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

fn handle(mut stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let request = read_request(&stream)?;
    let answer = route(&request, state);
    let head_only = request.method == "HEAD";
    // Logged before the answer is written, so a test that has read the answer sees it.
    let delay = {
        let mut state = lock(state);
        state.log.push(Logged {
            method: request.method.clone(),
            path: request.path.clone(),
            range: request.headers.get("range").cloned(),
            authorization: request.headers.get("authorization").cloned(),
            content_of: answer.content_of.clone().filter(|_| !head_only),
            bytes: if head_only { 0 } else { answer.body_bytes() },
        });
        state.delay
    };
    write_answer(&mut stream, answer, head_only, delay);
    Ok(())
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn route(request: &Request, state: &Mutex<State>) -> Answer {
    let path = request.path.split('?').next().unwrap_or_default();
    let segments: Vec<String> = path.trim_start_matches('/').split('/').map(percent_decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["api", "models", org, name, "revision", rev] => guarded(request, state, || listing(state, org, name, rev)),
        [org, name, "resolve", rev, file @ ..] if !file.is_empty() => guarded(request, state, || {
            resolve(state, org, name, rev, &file.join("/"), request)
        }),
        ["cdn", sha256] => cdn(state, sha256, request),
        _ => Answer::new(404, "{\"error\":\"not found\"}"),
    }
}

/// The token check of the Hub's own routes.
fn guarded(request: &Request, state: &Mutex<State>, answer: impl FnOnce() -> Answer) -> Answer {
    let required = lock(state).token.clone();
    let Some(token) = required else { return answer() };
    match request.headers.get("authorization") {
        None => Answer::new(401, "{\"error\":\"Invalid credentials in Authorization header\"}"),
        Some(given) if *given == format!("Bearer {token}") => answer(),
        Some(_) => Answer::new(403, "{\"error\":\"Access to this model is restricted\"}"),
    }
}

fn find_repo(state: &Mutex<State>, org: &str, name: &str, rev: &str) -> Option<RepoSpec> {
    let id = format!("{org}/{name}");
    let state = lock(state);
    let repo = state.repos.iter().find(|r| r.id == id)?;
    (rev == "main" || rev == repo.commit).then(|| repo.clone())
}

fn listing(state: &Mutex<State>, org: &str, name: &str, rev: &str) -> Answer {
    let id = format!("{org}/{name}");
    if let Some(body) = lock(state).listings.get(&id) {
        return Answer::new(200, body).header("Content-Type", "application/json");
    }
    let Some(repo) = find_repo(state, org, name, rev) else {
        return Answer::new(404, "{\"error\":\"Repository not found\"}");
    };
    let sizes = lock(state).listed_sizes.clone();
    let siblings: Vec<serde_json::Value> = repo
        .files
        .iter()
        .map(|(file, bytes)| {
            let size = sizes
                .get(&(id.clone(), file.clone()))
                .copied()
                .unwrap_or(bytes.len() as u64);
            let mut entry = serde_json::json!({"rfilename": file, "size": size, "blobId": git_blob_sha1(bytes)});
            if is_lfs(file) {
                entry["lfs"] = serde_json::json!({"sha256": sha256_hex(bytes), "size": size, "pointerSize": 134});
            }
            entry
        })
        .collect();
    let body = serde_json::json!({"id": id, "sha": repo.commit, "siblings": siblings});
    Answer::new(200, &body.to_string()).header("Content-Type", "application/json")
}

fn resolve(state: &Mutex<State>, org: &str, name: &str, rev: &str, file: &str, request: &Request) -> Answer {
    let Some(repo) = find_repo(state, org, name, rev) else {
        return Answer::new(404, "{\"error\":\"Repository not found\"}");
    };
    let Some((_, bytes)) = repo.files.iter().find(|(n, _)| n == file) else {
        return Answer::new(404, "{\"error\":\"Entry not found\"}").header("X-Error-Code", "EntryNotFound");
    };
    let fault = lock(state).faults.get(&(repo.id.clone(), file.to_string())).cloned();
    if !is_lfs(file) {
        let answer = content(state, &repo.id, file, bytes, request);
        return answer
            .header("ETag", format!("\"{}\"", git_blob_sha1(bytes)))
            .header("X-Repo-Commit", &repo.commit);
    }
    let sha256 = sha256_hex(bytes);
    let redirect = Answer::new(302, "")
        .header("ETag", format!("\"{sha256}\""))
        .header("X-Linked-Etag", format!("\"{sha256}\""))
        .header("X-Linked-Size", bytes.len().to_string())
        .header("X-Repo-Commit", &repo.commit);
    match fault {
        Some(Fault::RedirectWithoutLocation) => redirect,
        _ => redirect.header("Location", format!("/cdn/{sha256}")),
    }
}

fn cdn(state: &Mutex<State>, sha256: &str, request: &Request) -> Answer {
    let found = lock(state).repos.iter().find_map(|repo| {
        let (name, bytes) = repo.files.iter().find(|(_, b)| sha256_hex(b) == sha256)?;
        Some((repo.id.clone(), name.clone(), bytes.clone()))
    });
    match found {
        Some((repo, name, bytes)) => content(state, &repo, &name, &bytes, request).header("ETag", "\"cdn-etag\""),
        None => Answer::new(404, "NoSuchKey"),
    }
}

/// A file's bytes, whole or from the requested offset, with the file's fault applied.
fn content(state: &Mutex<State>, repo: &str, file: &str, bytes: &[u8], request: &Request) -> Answer {
    let key = (repo.to_string(), file.to_string());
    let fault = {
        let mut state = lock(state);
        let fault = state.faults.get(&key).cloned();
        if request.method == "GET" && matches!(fault, Some(Fault::CutOnce(_))) {
            state.faults.remove(&key);
        }
        fault
    };
    let mut bytes = bytes.to_vec();
    if fault == Some(Fault::Corrupt) {
        bytes.iter_mut().for_each(|b| *b = !*b);
    }
    let total = bytes.len();
    let from = match fault {
        Some(Fault::IgnoreRange) => 0,
        _ => range_start(request).unwrap_or(0),
    };
    let (status, body) = if from > 0 && from < total {
        (206, bytes.split_off(from))
    } else {
        (200, bytes)
    };
    let mut answer = Answer {
        status,
        headers: Vec::new(),
        content_of: Some(key),
        body: Body::Content {
            cut: match fault {
                Some(Fault::CutOnce(n)) => Some(n),
                _ => None,
            },
            endless: fault == Some(Fault::EndlessBody),
            bytes: body,
        },
    };
    if status == 206 {
        answer = answer.header("Content-Range", format!("bytes {from}-{}/{total}", total - 1));
    }
    answer
}

/// `N` of `Range: bytes=N-`.
fn range_start(request: &Request) -> Option<usize> {
    let range = request.headers.get("range")?;
    range.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

fn write_answer(stream: &mut TcpStream, answer: Answer, head_only: bool, delay: Option<Duration>) {
    let (length, endless) = match &answer.body {
        Body::Bytes(b) => (b.len(), false),
        Body::Content { bytes, endless, .. } => (bytes.len(), *endless),
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\n",
        answer.status,
        reason(answer.status)
    );
    if !endless {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).is_err() || head_only {
        return;
    }
    match answer.body {
        Body::Bytes(bytes) => {
            let _ = stream.write_all(&bytes);
        }
        Body::Content { bytes, cut, endless } => write_content(stream, &bytes, cut, endless, delay),
    }
}

fn write_content(stream: &mut TcpStream, bytes: &[u8], cut: Option<usize>, endless: bool, delay: Option<Duration>) {
    const PIECE: usize = 64 << 10;
    if endless {
        let junk = vec![b'x'; PIECE];
        // Until the client hangs up.
        while stream.write_all(&junk).is_ok() {}
        return;
    }
    let send = &bytes[..cut.unwrap_or(bytes.len()).min(bytes.len())];
    for piece in send.chunks(PIECE) {
        if stream.write_all(piece).is_err() {
            break;
        }
        if let Some(pause) = delay {
            std::thread::sleep(pause);
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Status",
    }
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A throwaway cache folder for one test.
pub fn temp_cache() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cache = dir.path().join("hub");
    (dir, cache)
}
