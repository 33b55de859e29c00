//! The Hugging Face Hub: a model repository's files, found in the local Hugging Face cache
//! (the layout `huggingface_hub` writes, so files either tool downloaded are shared) or
//! downloaded into it.
//!
//! INTERFACE ONLY — the implementation lands with the hub work; every function here is
//! what the model store (`crate::store`) and the commands rely on.

use std::path::{Path, PathBuf};

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
    #[error("{dir}: {needed} bytes are needed and {available} are free")]
    NoSpace { dir: PathBuf, needed: u64, available: u64 },
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
}

/// The Hub endpoint, credentials and local cache, from the environment.
#[derive(Debug, Clone)]
pub struct Hub {
    endpoint: String,
    token: Option<String>,
    offline: bool,
    cache: PathBuf,
}

impl Hub {
    /// `HF_ENDPOINT` (default `https://huggingface.co`), `HF_TOKEN` or the token file
    /// (`HF_TOKEN_PATH`, else `$HF_HOME/token`), `HF_HUB_OFFLINE`, and the cache folder
    /// (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub fn from_env() -> Result<Hub, HubError> {
        todo!("hub implementation")
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
    /// or [`HubError::Offline`].
    pub fn snapshot(&self, repo: &str, revision: &str) -> Result<Snapshot, HubError> {
        let _ = (repo, revision, &self.token);
        todo!("hub implementation")
    }

    /// Only from the local cache: the snapshot `revision` names (through `refs/<revision>`,
    /// or a commit folder), with the files present in it.
    pub fn cached_snapshot(&self, repo: &str, revision: &str) -> Option<Snapshot> {
        let _ = (repo, revision);
        todo!("hub implementation")
    }

    /// The folder of `snapshot` in the cache (`models--ORG--NAME/snapshots/<commit>`).
    pub fn snapshot_dir(&self, snapshot: &Snapshot) -> PathBuf {
        let _ = snapshot;
        todo!("hub implementation")
    }

    /// Makes `files` (names from `snapshot.files`) present in the snapshot's folder and
    /// returns that folder: files already there are kept; the others are downloaded —
    /// after checking free space for all of them, several at a time, resuming a partial
    /// download, each checked against its sha256 before it is placed — with a progress bar
    /// on a terminal. Two processes fetching the same files download them once.
    pub fn fetch(&self, snapshot: &Snapshot, files: &[&str]) -> Result<PathBuf, HubError> {
        let _ = (snapshot, files);
        todo!("hub implementation")
    }
}
