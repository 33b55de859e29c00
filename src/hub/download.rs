//! One file from the Hub into the cache: into `blobs/<etag>.incomplete`, resumed by byte
//! range when a partial download is there, checked against its hash, then renamed to
//! `blobs/<etag>` and linked from the snapshot. An exclusive lock on the blob's lock file
//! (where `huggingface_hub` keeps it, so the two tools also wait for each other) makes a
//! second process wait and then find the blob done.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::ProgressBar;
use sha1::Digest as _;

use super::cache::{io_error, RepoCache};
use super::http::{bad_answer, check_status, etag_hash, header, Client};
use super::names::encode_path;
use super::{HubError, HubFile};

/// A connection that drops mid-transfer is resumed this many times in one fetch.
const ATTEMPTS: usize = 4;
const CHUNK: usize = 256 << 10;

/// What one download needs to know besides the file.
pub struct Context<'a> {
    pub client: &'a Client,
    pub cache: &'a RepoCache,
    pub locks: &'a Path,
    pub repo: &'a str,
    pub commit: &'a str,
    /// Set when another download failed: the others stop, keeping their partial files.
    pub abort: &'a AtomicBool,
}

/// How a download is checked, and so what its blob is named.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    Sha256(String),
    /// The git blob sha1 a small file's ETag gives.
    GitSha1(String),
    /// No usable hash from the Hub: the size is checked and the blob is named by its
    /// git sha1, as the Hub would have named it.
    SizeOnly,
}

struct Target {
    check: Check,
    /// The name of the blob, or of its partial file and lock while the hash is unknown.
    key: String,
    size: u64,
}

impl<'a> Context<'a> {
    pub fn url(&self, name: &str) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.client.endpoint(),
            self.repo,
            self.commit,
            encode_path(name)
        )
    }

    /// Makes `file` present in the snapshot folder.
    pub fn fetch(&self, file: &HubFile, bar: &ProgressBar) -> Result<(), HubError> {
        let url = self.url(&file.name);
        let target = self.target(file, &url)?;
        if target.check != Check::SizeOnly && self.cache.blob(&target.key).is_file() {
            return self.cache.link(self.commit, &file.name, &target.key);
        }
        let _lock = self.lock(&target.key)?;
        if target.check != Check::SizeOnly && self.cache.blob(&target.key).is_file() {
            return self.cache.link(self.commit, &file.name, &target.key);
        }
        bar.set_length(target.size);
        let blob_name = self.download(&url, &file.name, &target, bar)?;
        self.cache.link(self.commit, &file.name, &blob_name)
    }

    /// The file's hash and size: the listing's sha256 for an LFS file, else the headers
    /// of the Hub's answer to a HEAD request.
    fn target(&self, file: &HubFile, url: &str) -> Result<Target, HubError> {
        if let (Some(sha256), Some(size)) = (&file.sha256, file.size) {
            return Ok(Target {
                check: Check::Sha256(sha256.clone()),
                key: sha256.clone(),
                size,
            });
        }
        let response = self.client.head(url)?;
        if !response.status().is_redirection() {
            check_status(&response, self.repo, url, self.client.endpoint())?;
        }
        let etag = header(&response, "x-linked-etag")
            .or_else(|| header(&response, "etag"))
            .and_then(etag_hash);
        let size = file
            .size
            .or_else(|| header(&response, "x-linked-size").and_then(|s| s.parse().ok()))
            .or_else(|| header(&response, "content-length").and_then(|s| s.parse().ok()))
            .ok_or_else(|| bad_answer(url, "the Hub gives no size for this file"))?;
        let check = match (&file.sha256, etag) {
            (Some(sha256), _) => Check::Sha256(sha256.clone()),
            (None, Some(hash)) if hash.len() == 64 => Check::Sha256(hash),
            (None, Some(hash)) => Check::GitSha1(hash),
            (None, None) => Check::SizeOnly,
        };
        let key = match &check {
            Check::Sha256(hash) | Check::GitSha1(hash) => hash.clone(),
            Check::SizeOnly => format!(
                "unverified-{}",
                hex(&sha2::Sha256::digest(url.as_bytes()))[..32].to_owned()
            ),
        };
        Ok(Target { check, key, size })
    }

    /// Blocks until no other thread or process downloads the same blob.
    fn lock(&self, key: &str) -> Result<File, HubError> {
        std::fs::create_dir_all(self.locks).map_err(|e| io_error(self.locks, e))?;
        let path = self.locks.join(format!("{key}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        file.lock().map_err(|e| io_error(&path, e))?;
        Ok(file)
    }

    /// Transfers (resuming when the connection drops), checks, and places the blob;
    /// returns the blob's name.
    fn download(&self, url: &str, name: &str, target: &Target, bar: &ProgressBar) -> Result<String, HubError> {
        let partial = self.cache.incomplete(&target.key);
        let mut attempt = 1;
        let digest = loop {
            match self.transfer(url, &partial, target, bar) {
                Ok(digest) => break digest,
                Err(Failure::Retry(_)) if attempt < ATTEMPTS && !self.abort.load(Ordering::SeqCst) => attempt += 1,
                Err(Failure::Retry(error) | Failure::Fatal(error)) => return Err(error),
            }
        };
        let blob_name = self.verify(name, &partial, target, digest)?;
        let blob = self.cache.blob(&blob_name);
        std::fs::rename(&partial, &blob).map_err(|e| io_error(&blob, e))?;
        Ok(blob_name)
    }

    /// One request: appends the rest of the file to `partial` and returns the hash of the
    /// whole of it.
    fn transfer(&self, url: &str, partial: &Path, target: &Target, bar: &ProgressBar) -> Result<String, Failure> {
        let mut have = partial_len(partial).filter(|&n| n <= target.size).unwrap_or(0);
        let mut hasher = Hasher::new(&target.check, target.size);
        if have == target.size && have > 0 {
            hasher.update_from_file(partial, have).map_err(Failure::Fatal)?;
            return Ok(hasher.finish());
        }
        let mut response = self.client.get(url, have).map_err(Failure::Retry)?;
        let status = response.status().as_u16();
        if status == 206 && !range_starts_at(&response, have) {
            return Err(Failure::Fatal(bad_answer(
                url,
                format!("asked for bytes from {have}, got another range"),
            )));
        }
        if status != 206 {
            check_status(&response, self.repo, url, self.client.endpoint()).map_err(Failure::Fatal)?;
            have = 0;
        }
        let mut out = open_partial(partial, have).map_err(Failure::Fatal)?;
        if have > 0 {
            hasher.update_from_file(partial, have).map_err(Failure::Fatal)?;
        }
        bar.set_position(have);
        let mut body = response.body_mut().as_reader();
        self.copy(&mut body, &mut out, partial, url, have, target.size, &mut hasher, bar)?;
        Ok(hasher.finish())
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(
        &self,
        body: &mut impl Read,
        out: &mut File,
        partial: &Path,
        url: &str,
        mut have: u64,
        size: u64,
        hasher: &mut Hasher,
        bar: &ProgressBar,
    ) -> Result<(), Failure> {
        let mut buffer = vec![0u8; CHUNK];
        loop {
            if self.abort.load(Ordering::SeqCst) {
                return Err(Failure::Fatal(bad_answer(url, "stopped: another download failed")));
            }
            let n = match body.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Retry(bad_answer(url, format!("the transfer broke off: {e}")))),
            };
            if have + n as u64 > size {
                let _ = std::fs::remove_file(partial);
                return Err(Failure::Fatal(bad_answer(
                    url,
                    format!("the server sends more than the {size} bytes listed"),
                )));
            }
            out.write_all(&buffer[..n])
                .map_err(|e| Failure::Fatal(io_error(partial, e)))?;
            hasher.update(&buffer[..n]);
            have += n as u64;
            bar.set_position(have);
        }
        if have < size {
            return Err(Failure::Retry(bad_answer(
                url,
                format!("the transfer broke off after {have} of {size} bytes"),
            )));
        }
        Ok(())
    }

    /// The blob's name once `digest` matches what the Hub promised.
    fn verify(&self, name: &str, partial: &Path, target: &Target, digest: String) -> Result<String, HubError> {
        let expected = match &target.check {
            Check::Sha256(hash) | Check::GitSha1(hash) => hash,
            Check::SizeOnly => return Ok(digest),
        };
        if &digest == expected {
            return Ok(digest);
        }
        let _ = std::fs::remove_file(partial);
        Err(HubError::HashMismatch {
            file: format!("{}/{name}", self.repo),
            expected: expected.clone(),
            actual: digest,
        })
    }
}

enum Failure {
    /// The connection dropped: worth resuming.
    Retry(HubError),
    Fatal(HubError),
}

fn partial_len(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// `Content-Range: bytes N-...` with N = `from`.
fn range_starts_at(response: &ureq::http::Response<ureq::Body>, from: u64) -> bool {
    header(response, "content-range")
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.trim().parse::<u64>().ok())
        == Some(from)
}

/// The partial file, cut to `keep` bytes and open for appending.
fn open_partial(path: &Path, keep: u64) -> Result<File, HubError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .append(true)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    file.set_len(keep).map_err(|e| io_error(path, e))?;
    Ok(file)
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
}

impl Hasher {
    fn new(check: &Check, size: u64) -> Hasher {
        match check {
            Check::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
            Check::GitSha1(_) | Check::SizeOnly => {
                let mut sha1 = sha1::Sha1::new();
                sha1.update(format!("blob {size}\0").as_bytes());
                Hasher::Sha1(sha1)
            }
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha1(h) => h.update(bytes),
        }
    }

    /// Feeds the first `len` bytes of `path` (a partial download being resumed).
    fn update_from_file(&mut self, path: &Path, len: u64) -> Result<(), HubError> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let mut reader = file.take(len);
        let mut buffer = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(n) => self.update(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(path, e)),
            }
        }
    }

    fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex(&h.finalize()),
            Hasher::Sha1(h) => hex(&h.finalize()),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The git blob sha1 of `bytes`: what the Hub's ETag holds for a file kept in git.
#[cfg(test)]
fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut sha1 = sha1::Sha1::new();
    sha1.update(format!("blob {}\0", bytes.len()).as_bytes());
    sha1.update(bytes);
    hex(&sha1.finalize())
}

#[cfg(test)]
mod tests {
    #[test]
    fn git_blob_sha1_is_what_git_computes() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            super::git_blob_sha1(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        assert!(crate::hub::names::is_hex(&super::git_blob_sha1(b""), 40));
    }
}
