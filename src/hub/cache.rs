//! The local cache in the layout `huggingface_hub` writes, so that files either tool
//! downloaded serve both:
//!
//! ```text
//! <cache>/models--ORG--NAME/blobs/<etag>                 the file's bytes
//! <cache>/models--ORG--NAME/snapshots/<commit>/<path>    relative link to ../../blobs/<etag>
//! <cache>/models--ORG--NAME/refs/<revision>              the commit a branch or tag was at
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::names::{check_file_name, is_commit};
use super::{HubError, HubFile};

/// Deeper snapshot trees than this are not a model repository; stops a link loop.
const MAX_DEPTH: usize = 32;

pub fn io_error(path: &Path, error: std::io::Error) -> HubError {
    HubError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// One repository's folder in the cache.
pub struct RepoCache {
    root: PathBuf,
}

impl RepoCache {
    /// `repo` must have passed `check_repo`.
    pub fn new(cache: &Path, repo: &str) -> RepoCache {
        RepoCache {
            root: cache.join(format!("models--{}", repo.replace('/', "--"))),
        }
    }

    /// `models--ORG--NAME`, also the name of its folder of lock files.
    pub fn folder_name(&self) -> std::ffi::OsString {
        self.root.file_name().map(|n| n.to_os_string()).unwrap_or_default()
    }

    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub fn blob(&self, key: &str) -> PathBuf {
        self.blobs().join(key)
    }

    pub fn incomplete(&self, key: &str) -> PathBuf {
        self.blobs().join(format!("{key}.incomplete"))
    }

    /// The commit `refs/<revision>` holds, when it holds one.
    pub fn read_ref(&self, revision: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.root.join("refs").join(revision)).ok()?;
        let commit = text.trim();
        is_commit(commit).then(|| commit.to_string())
    }

    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        let path = self.root.join("refs").join(revision);
        write_atomically(&path, commit.as_bytes())
    }

    /// The files present in the snapshot folder (links followed), sorted by name; `None`
    /// when the folder does not exist.
    pub fn list_snapshot(&self, commit: &str) -> Option<Vec<HubFile>> {
        let dir = self.snapshot_dir(commit);
        if !dir.is_dir() {
            return None;
        }
        let mut files = Vec::new();
        collect_files(&dir, "", 0, &mut files);
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Some(files)
    }

    /// Whether `name` is usable in the snapshot: a file, or a link that reaches one.
    pub fn has_file(&self, commit: &str, name: &str) -> bool {
        self.snapshot_dir(commit).join(name).is_file()
    }

    /// Makes `snapshots/<commit>/<name>` a relative link to `blobs/<key>`, replacing
    /// whatever was there (a dangling link, say) in one rename.
    pub fn link(&self, commit: &str, name: &str, key: &str) -> Result<(), HubError> {
        check_file_name(name)?;
        let path = self.snapshot_dir(commit).join(name);
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| io_error(&parent, e))?;
        let up = "../".repeat(2 + name.matches('/').count());
        let target = format!("{up}blobs/{key}");
        let temporary = temporary_name(&path);
        make_link(&target, &self.blob(key), &temporary).map_err(|e| io_error(&temporary, e))?;
        std::fs::rename(&temporary, &path).map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            io_error(&path, e)
        })
    }
}

fn collect_files(dir: &Path, prefix: &str, depth: usize, files: &mut Vec<HubFile>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(file_name) = entry.file_name().into_string() else {
            continue;
        };
        let name = if prefix.is_empty() {
            file_name
        } else {
            format!("{prefix}/{file_name}")
        };
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        let is_real_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_real_dir && depth < MAX_DEPTH {
            collect_files(&path, &name, depth + 1, files);
        } else if meta.is_file() && check_file_name(&name).is_ok() {
            files.push(HubFile {
                name,
                size: Some(meta.len()),
                sha256: None,
            });
        }
    }
}

/// A name beside `path` no other thread or process uses at the same time.
pub fn temporary_name(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}-{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Readers see either the old content or the new one, never half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), HubError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    }
    let temporary = temporary_name(path);
    std::fs::write(&temporary, bytes).map_err(|e| io_error(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        io_error(path, e)
    })
}

#[cfg(unix)]
fn make_link(target: &str, _blob: &Path, at: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, at)
}

/// Without symbolic links (Windows without developer mode) the snapshot holds a copy, as
/// `huggingface_hub` does there.
#[cfg(not(unix))]
fn make_link(_target: &str, blob: &Path, at: &Path) -> std::io::Result<()> {
    std::fs::copy(blob, at).map(|_| ())
}
