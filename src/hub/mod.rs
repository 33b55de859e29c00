//! The Hugging Face Hub: a model repository's files, found in the local Hugging Face cache
//! (the layout `huggingface_hub` writes, so files either tool downloaded are shared) or
//! downloaded into it.
//!
//! `names` checks every name that reaches a path or URL, `cache` is the cache layout,
//! `http` the requests (and why `ureq`, not `hf-hub`), `download` one file's transfer.

mod cache;
mod download;
mod http;
mod names;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use cache::{io_error, RepoCache};

/// One file of a repository snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// Path inside the repository, `/`-separated (e.g. `model-00001-of-00002.safetensors`).
    pub name: String,
    /// Size in bytes, when known (the Hub lists it; a cached file has its own).
    pub size: Option<u64>,
    /// The sha256 of an LFS file (the Hub's linked ETag), used to check the download.
    pub sha256: Option<String>,
}

/// A repository at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `ORG/NAME`.
    pub repo: String,
    /// The full commit hash the revision resolved to.
    pub commit: String,
    pub files: Vec<HubFile>,
}

/// Why the Hub could not give what was asked; each a one-line message naming the repo or
/// file.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{repo}: no such repository or revision on {endpoint} (HTTP 404)")]
    NotFound { repo: String, endpoint: String },
    #[error("{repo}: access denied (HTTP {status}): the repository is gated or private; accept its licence on the Hub and set HF_TOKEN (or log in with `huggingface-cli login`)")]
    Denied { repo: String, status: u16 },
    #[error("{repo}: not in the local Hugging Face cache ({cache}), and HF_HUB_OFFLINE is set")]
    Offline { repo: String, cache: PathBuf },
    #[error(
        "{file}: the download does not match the Hub's sha256 (expected {expected}, got {actual}); it was removed"
    )]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error(
        "{}: the download needs {} and {} are free; free some space or set HF_HUB_CACHE to another disk",
        dir.display(), glm_convert::byte_label(*needed), glm_convert::byte_label(*available)
    )]
    NoSpace { dir: PathBuf, needed: u64, available: u64 },
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// A repository, revision or file name that cannot be used (from the user, or a
    /// hostile listing such as `../x`).
    #[error("{name}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("{repo}: the snapshot at {commit} has no file {file}")]
    NotInSnapshot { repo: String, commit: String, file: String },
}

/// Where the Hub is and where its files are kept; [`HubSettings::from_env`] reads them the
/// way `huggingface_hub` does.
#[derive(Clone)]
pub struct HubSettings {
    /// Without a trailing slash, e.g. `https://huggingface.co`.
    pub endpoint: String,
    /// Sent as `Authorization: Bearer` to the endpoint (never to a CDN it redirects to).
    pub token: Option<String>,
    /// No network at all: only what the cache holds.
    pub offline: bool,
    /// The cache folder (`.../huggingface/hub`).
    pub cache: PathBuf,
}

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

impl HubSettings {
    /// `HF_ENDPOINT`, `HF_TOKEN` (else the file at `HF_TOKEN_PATH`, else `$HF_HOME/token`),
    /// `HF_HUB_OFFLINE`, and `HF_HUB_CACHE` (else `$HF_HOME/hub`); `HF_HOME` defaults to
    /// `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
    pub fn from_env() -> Result<HubSettings, HubError> {
        HubSettings::from_vars(|name| std::env::var(name).ok(), dirs::home_dir())
    }

    /// As [`HubSettings::from_env`], with the variables from `var` (an empty one counts as
    /// unset) and the home folder `home`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>, home: Option<PathBuf>) -> Result<HubSettings, HubError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(HubError::InvalidName {
                name: endpoint,
                reason: "HF_ENDPOINT must be an http:// or https:// URL",
            });
        }
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v));
        let hf_home = || -> Result<PathBuf, HubError> {
            if let Some(dir) = var("HF_HOME") {
                return Ok(PathBuf::from(dir));
            }
            let cache = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".cache")));
            cache.map(|c| c.join("huggingface")).ok_or_else(|| HubError::Io {
                path: PathBuf::from("~/.cache/huggingface"),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, "no home folder; set HF_HOME"),
            })
        };
        let cache = match var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
            Some(dir) => PathBuf::from(dir),
            None => hf_home()?.join("hub"),
        };
        let token = match var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")) {
            Some(token) => Some(token.trim().to_string()),
            None => {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .map_or_else(|| hf_home().map(|h| h.join("token")), Ok);
                path.ok().map(|p| read_token(&p)).transpose()?.flatten()
            }
        };
        Ok(HubSettings {
            endpoint,
            token,
            offline,
            cache,
        })
    }
}

impl std::fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSettings")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .field("cache", &self.cache)
            .finish()
    }
}

fn is_true(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// The saved token: a missing file means none; an unreadable one is an error, so a login
/// that silently does nothing is not mistaken for a gated repository.
fn read_token(path: &Path) -> Result<Option<String>, HubError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

/// The Hub endpoint, credentials and local cache, from the environment.
#[derive(Debug, Clone)]
pub struct Hub {
    endpoint: String,
    offline: bool,
    cache: PathBuf,
    client: http::Client,
}

/// Downloads at a time: enough to fill a fast line with the shards of a large model.
const PARALLEL_DOWNLOADS: usize = 4;

impl Hub {
    /// `HF_ENDPOINT` (default `https://huggingface.co`), `HF_TOKEN` or the token file
    /// (`HF_TOKEN_PATH`, else `$HF_HOME/token`), `HF_HUB_OFFLINE`, and the cache folder
    /// (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub fn from_env() -> Result<Hub, HubError> {
        Ok(Hub::new(HubSettings::from_env()?))
    }

    pub fn new(settings: HubSettings) -> Hub {
        let endpoint = settings.endpoint.trim_end_matches('/').to_string();
        Hub {
            client: http::Client::new(&endpoint, settings.token),
            endpoint,
            offline: settings.offline,
            cache: settings.cache,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn offline(&self) -> bool {
        self.offline
    }

    /// The local Hugging Face cache folder (`.../hub`).
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// The repository's files at `revision` (branch, tag or commit hash), as the Hub
    /// lists them (`/api/models/{repo}/revision/{revision}`). Offline: the cached snapshot,
    /// or [`HubError::Offline`]. A branch or tag is recorded in `refs/<revision>`, so it
    /// is found offline later.
    pub fn snapshot(&self, repo: &str, revision: &str) -> Result<Snapshot, HubError> {
        names::check_repo(repo)?;
        names::check_revision(revision)?;
        if self.offline {
            return self.cached_snapshot(repo, revision).ok_or_else(|| HubError::Offline {
                repo: repo.to_string(),
                cache: self.cache.clone(),
            });
        }
        let (commit, files) = self.client.listing(repo, revision)?;
        if names::is_commit(revision) {
            if !commit.eq_ignore_ascii_case(revision) {
                let url = format!("{}/api/models/{repo}/revision/{revision}", self.endpoint);
                return Err(http::bad_answer(
                    &url,
                    format!("asked for commit {revision}, the Hub listed {commit}"),
                ));
            }
        } else {
            RepoCache::new(&self.cache, repo).write_ref(revision, &commit)?;
        }
        Ok(Snapshot {
            repo: repo.to_string(),
            commit,
            files,
        })
    }

    /// Only from the local cache: the snapshot `revision` names (through `refs/<revision>`,
    /// or a commit folder), with the files present in it.
    pub fn cached_snapshot(&self, repo: &str, revision: &str) -> Option<Snapshot> {
        names::check_repo(repo).ok()?;
        names::check_revision(revision).ok()?;
        let cache = RepoCache::new(&self.cache, repo);
        let commit = match names::is_commit(revision) {
            true => revision.to_ascii_lowercase(),
            false => cache.read_ref(revision)?,
        };
        let files = cache.list_snapshot(&commit)?;
        Some(Snapshot {
            repo: repo.to_string(),
            commit,
            files,
        })
    }

    /// The folder of `snapshot` in the cache (`models--ORG--NAME/snapshots/<commit>`).
    pub fn snapshot_dir(&self, snapshot: &Snapshot) -> PathBuf {
        RepoCache::new(&self.cache, &snapshot.repo).snapshot_dir(&snapshot.commit)
    }

    /// Makes `files` (names from `snapshot.files`) present in the snapshot's folder and
    /// returns that folder: files already there are kept; the others are downloaded —
    /// after checking free space for all of them, several at a time, resuming a partial
    /// download, each checked against its sha256 before it is placed — with a progress bar
    /// on a terminal. Two processes fetching the same files download them once.
    pub fn fetch(&self, snapshot: &Snapshot, files: &[&str]) -> Result<PathBuf, HubError> {
        names::check_repo(&snapshot.repo)?;
        if !names::is_commit(&snapshot.commit) {
            return Err(HubError::InvalidName {
                name: snapshot.commit.clone(),
                reason: "not a commit hash",
            });
        }
        let cache = RepoCache::new(&self.cache, &snapshot.repo);
        let dir = cache.snapshot_dir(&snapshot.commit);
        let mut missing = Vec::new();
        for file in wanted_files(snapshot, files)? {
            if !cache.has_file(&snapshot.commit, &file.name) {
                missing.push(file);
            }
        }
        if missing.is_empty() {
            std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
            return Ok(dir);
        }
        if self.offline {
            return Err(HubError::Offline {
                repo: snapshot.repo.clone(),
                cache: self.cache.clone(),
            });
        }
        let blobs = cache.blobs();
        std::fs::create_dir_all(&blobs).map_err(|e| io_error(&blobs, e))?;
        let available = fs4::available_space(&blobs).map_err(|e| io_error(&blobs, e))?;
        check_space(&blobs, still_needed(&cache, &missing), available)?;
        self.download_all(&cache, snapshot, &missing)?;
        Ok(dir)
    }

    /// Downloads `missing`, a few at a time; the first failure stops the others (their
    /// partial files stay, to be resumed).
    fn download_all(&self, cache: &RepoCache, snapshot: &Snapshot, missing: &[&HubFile]) -> Result<(), HubError> {
        let next = AtomicUsize::new(0);
        let abort = AtomicBool::new(false);
        let failure: Mutex<Option<HubError>> = Mutex::new(None);
        let locks = self.cache.join(".locks").join(cache.folder_name());
        let context = download::Context {
            client: &self.client,
            cache,
            locks: &locks,
            repo: &snapshot.repo,
            commit: &snapshot.commit,
            abort: &abort,
        };
        let bars = Bars::new();
        let worker = || {
            while let Some(file) = missing.get(next.fetch_add(1, Ordering::SeqCst)) {
                if abort.load(Ordering::SeqCst) {
                    break;
                }
                let bar = bars.add(&file.name, file.size);
                match context.fetch(file, &bar) {
                    Ok(()) => bar.finish_and_clear(),
                    Err(error) => {
                        bar.abandon();
                        failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(error);
                        abort.store(true, Ordering::SeqCst);
                    }
                }
            }
        };
        std::thread::scope(|scope| {
            for _ in 0..PARALLEL_DOWNLOADS.min(missing.len()) {
                scope.spawn(worker);
            }
        });
        match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The entries of `snapshot.files` that `names` asks for, each once.
fn wanted_files<'a>(snapshot: &'a Snapshot, names: &[&str]) -> Result<Vec<&'a HubFile>, HubError> {
    let mut wanted: Vec<&HubFile> = Vec::with_capacity(names.len());
    for &name in names {
        names::check_file_name(name)?;
        let file = snapshot
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| HubError::NotInSnapshot {
                repo: snapshot.repo.clone(),
                commit: snapshot.commit.clone(),
                file: name.to_string(),
            })?;
        if !wanted.iter().any(|w| w.name == name) {
            wanted.push(file);
        }
    }
    Ok(wanted)
}

/// Bytes the downloads of `missing` still need: blobs another snapshot already holds
/// need none, partial downloads only their rest. An unknown size counts as nothing.
fn still_needed(cache: &RepoCache, missing: &[&HubFile]) -> u64 {
    let mut needed = 0u64;
    for file in missing {
        let size = file.size.unwrap_or(0);
        let have = match &file.sha256 {
            Some(sha) if cache.blob(sha).is_file() => size,
            Some(sha) => std::fs::metadata(cache.incomplete(sha))
                .map_or(0, |m| m.len())
                .min(size),
            None => 0,
        };
        needed = needed.saturating_add(size - have);
    }
    needed
}

/// [`HubError::NoSpace`] when `needed` bytes do not fit in `available`.
fn check_space(dir: &Path, needed: u64, available: u64) -> Result<(), HubError> {
    if needed > available {
        return Err(HubError::NoSpace {
            dir: dir.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

/// One progress bar per file being downloaded, on a terminal only.
struct Bars {
    multi: MultiProgress,
    style: ProgressStyle,
}

impl Bars {
    fn new() -> Bars {
        let target = match crate::terminal::stderr_styled() {
            true => ProgressDrawTarget::stderr(),
            false => ProgressDrawTarget::hidden(),
        };
        let style = ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        Bars {
            multi: MultiProgress::with_draw_target(target),
            style,
        }
    }

    fn add(&self, name: &str, size: Option<u64>) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(size.unwrap_or(0)));
        bar.set_style(self.style.clone());
        bar.set_message(name.to_string());
        bar
    }
}
