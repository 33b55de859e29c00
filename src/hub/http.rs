//! Requests to the Hub through `ureq`: time-outs, the token, and HTTP failures turned into
//! [`HubError`]s. `ureq` rather than the `hf-hub` crate: hf-hub 0.5 panics on hostile
//! responses (a redirect without `Location`, an unparsable URL, a missing pointer file),
//! does not check the sha256 of what it downloads, ignores `HF_HUB_OFFLINE`,
//! `HF_HUB_CACHE` and `HF_TOKEN`, and gives up waiting for another process's lock after
//! five seconds.

use std::time::Duration;

use serde::Deserialize;
use ureq::http::Response;
use ureq::Body;

use super::names::{check_file_name, is_commit, is_hex};
use super::{HubError, HubFile};

/// A listing of a model with tens of thousands of files stays far below this.
const MAX_LISTING_BYTES: u64 = 16 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Client {
    endpoint: String,
    token: Option<String>,
    /// Follows redirects: the Hub sends LFS downloads to a CDN.
    follow: ureq::Agent,
    /// Does not: the headers of the Hub's own answer name the file's hash.
    direct: ureq::Agent,
}

/// Without the token: debug output must not leak it.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

fn agent(max_redirects: u32) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(max_redirects)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(READ_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .user_agent(concat!("glm/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

impl Client {
    pub fn new(endpoint: &str, token: Option<String>) -> Client {
        Client {
            endpoint: endpoint.to_string(),
            token,
            follow: agent(10),
            direct: agent(0),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// GET `url`, following redirects, with `range_from` as a `Range: bytes=N-` header.
    pub fn get(&self, url: &str, range_from: u64) -> Result<Response<Body>, HubError> {
        let mut request = self.follow.get(url).header("Accept-Encoding", "identity");
        if range_from > 0 {
            request = request.header("Range", format!("bytes={range_from}-"));
        }
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        request.call().map_err(|e| self.transport_error(url, e))
    }

    /// HEAD `url` without following a redirect.
    pub fn head(&self, url: &str) -> Result<Response<Body>, HubError> {
        let mut request = self.direct.head(url).header("Accept-Encoding", "identity");
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        request.call().map_err(|e| self.transport_error(url, e))
    }

    /// A failure before any HTTP status: says which endpoint could not be reached.
    pub fn transport_error(&self, url: &str, error: ureq::Error) -> HubError {
        let reason = match error {
            ureq::Error::HostNotFound => format!("cannot reach {}: host not found", self.endpoint),
            ureq::Error::Io(e) => format!("cannot reach {}: {e}", self.endpoint),
            ureq::Error::ConnectionFailed => format!("cannot connect to {}", self.endpoint),
            ureq::Error::Timeout(t) => format!("no answer from {} in time ({t})", self.endpoint),
            other => other.to_string(),
        };
        HubError::Http {
            url: url.to_string(),
            reason,
        }
    }

    /// The files of `repo` at `revision` and the commit it resolved to.
    pub fn listing(&self, repo: &str, revision: &str) -> Result<(String, Vec<HubFile>), HubError> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}?blobs=true",
            self.endpoint,
            super::names::encode_segment(revision)
        );
        let mut response = self.get(&url, 0)?;
        check_status(&response, repo, &url, &self.endpoint)?;
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_LISTING_BYTES)
            .read_to_vec()
            .map_err(|e| bad_answer(&url, format!("reading the listing: {e}")))?;
        parse_listing(&bytes).map_err(|reason| bad_answer(&url, reason))
    }
}

pub fn bad_answer(url: &str, reason: impl Into<String>) -> HubError {
    HubError::Http {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// 2xx passes; 401/403 are [`HubError::Denied`], 404 [`HubError::NotFound`].
pub fn check_status(response: &Response<Body>, repo: &str, url: &str, endpoint: &str) -> Result<(), HubError> {
    let status = response.status().as_u16();
    match status {
        200..=299 => Ok(()),
        401 | 403 => Err(HubError::Denied {
            repo: repo.to_string(),
            status,
        }),
        404 => Err(HubError::NotFound {
            repo: repo.to_string(),
            endpoint: endpoint.to_string(),
        }),
        _ => Err(bad_answer(url, format!("HTTP {status}"))),
    }
}

/// A response header as text, when present and readable.
pub fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The hash an ETag names: weak marker and quotes removed, lower case; `None` when it is
/// not a sha256 or git sha1 (a CDN's own ETag, say).
pub fn etag_hash(value: &str) -> Option<String> {
    let value = value
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase();
    (is_hex(&value, 64) || is_hex(&value, 40)).then_some(value)
}

#[derive(Deserialize)]
struct Listing {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: Option<String>,
    size: Option<u64>,
}

fn parse_listing(bytes: &[u8]) -> Result<(String, Vec<HubFile>), String> {
    let listing: Listing = serde_json::from_slice(bytes).map_err(|e| format!("not a repository listing: {e}"))?;
    if !is_commit(&listing.sha) {
        return Err(format!("the listing names no commit hash (sha {:?})", listing.sha));
    }
    let mut files: Vec<HubFile> = Vec::with_capacity(listing.siblings.len());
    for sibling in listing.siblings {
        files.push(sibling_file(sibling)?);
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = files.windows(2).find(|pair| pair[0].name == pair[1].name) {
        return Err(format!("the listing names {} twice", pair[0].name));
    }
    Ok((listing.sha.to_ascii_lowercase(), files))
}

fn sibling_file(sibling: Sibling) -> Result<HubFile, String> {
    check_file_name(&sibling.rfilename).map_err(|e| format!("the listing names {e}"))?;
    let (sha256, lfs_size) = match sibling.lfs {
        Some(lfs) => (lfs.sha256, lfs.size),
        None => (None, None),
    };
    let sha256 = match sha256 {
        Some(hash) if is_hex(&hash, 64) => Some(hash.to_ascii_lowercase()),
        Some(hash) => {
            return Err(format!(
                "{}: the listing gives a malformed sha256 {hash:?}",
                sibling.rfilename
            ))
        }
        None => None,
    };
    Ok(HubFile {
        name: sibling.rfilename,
        size: lfs_size.or(sibling.size),
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_with_unsafe_names_or_hashes_are_refused() {
        let sha = "a".repeat(40);
        let good = format!(r#"{{"sha":"{sha}","siblings":[{{"rfilename":"config.json","size":3}}]}}"#);
        let (commit, files) = parse_listing(good.as_bytes()).unwrap_or_default();
        assert_eq!(commit, sha);
        assert_eq!(
            files,
            vec![HubFile {
                name: "config.json".into(),
                size: Some(3),
                sha256: None
            }]
        );
        for bad in [
            format!(r#"{{"sha":"{sha}","siblings":[{{"rfilename":"../evil"}}]}}"#),
            format!(r#"{{"sha":"{sha}","siblings":[{{"rfilename":"/etc/passwd"}}]}}"#),
            format!(r#"{{"sha":"{sha}","siblings":[{{"rfilename":"a","lfs":{{"sha256":"../x"}}}}]}}"#),
            format!(r#"{{"sha":"{sha}","siblings":[{{"rfilename":"a"}},{{"rfilename":"a"}}]}}"#),
            r#"{"sha":"../main","siblings":[]}"#.to_string(),
            r#"{"siblings":[]}"#.to_string(),
            "not json".to_string(),
        ] {
            assert!(parse_listing(bad.as_bytes()).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn etags_are_hashes_or_nothing() {
        let sha1 = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(etag_hash(&format!("\"{sha1}\"")).as_deref(), Some(sha1));
        assert_eq!(
            etag_hash(&format!("W/\"{}\"", sha1.to_uppercase())).as_deref(),
            Some(sha1)
        );
        assert_eq!(etag_hash("\"abc-123\""), None);
    }
}
