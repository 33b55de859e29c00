//! Checks on every name that reaches a path or a URL: repository ids, revisions, file
//! names and hashes come from the user or from the server, and a hostile server must not
//! be able to write outside the cache (`../x`, `/etc/x`) or break a URL.

use super::HubError;

fn invalid(name: &str, reason: &'static str) -> HubError {
    HubError::InvalidName {
        name: name.to_string(),
        reason,
    }
}

/// Characters of one Hub name component: what the Hub itself allows in ids and branches.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// `ORG/NAME`: becomes the cache folder `models--ORG--NAME` and a URL path.
pub fn check_repo(repo: &str) -> Result<(), HubError> {
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() != 2 {
        return Err(invalid(repo, "a Hub repository is named ORG/NAME"));
    }
    for part in parts {
        if part.is_empty() || part == "." || part == ".." || !part.chars().all(is_name_char) {
            return Err(invalid(
                repo,
                "a Hub repository is named ORG/NAME (letters, digits, '-', '_', '.')",
            ));
        }
    }
    Ok(())
}

/// A branch, tag or commit; `refs/pr/1` style names become nested `refs/` files.
pub fn check_revision(revision: &str) -> Result<(), HubError> {
    let ok = !revision.is_empty()
        && revision.split('/').all(|part| {
            !part.is_empty() && part != "." && part != ".." && part.chars().all(|c| is_name_char(c) || c == '+')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(revision, "not a usable revision (branch, tag or commit hash)"))
    }
}

/// A path inside the repository, as the server lists it: relative, `/`-separated, with
/// no empty, `.` or `..` component and nothing a file system would read specially.
pub fn check_file_name(name: &str) -> Result<(), HubError> {
    let bad_char = name.chars().any(|c| c == '\\' || c == ':' || c.is_control());
    let bad_part = name
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..");
    if name.is_empty() || bad_char || bad_part {
        return Err(invalid(
            name,
            "an unsafe file name (absolute, empty or with '..'); refused",
        ));
    }
    Ok(())
}

pub fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A full commit hash (git sha1).
pub fn is_commit(text: &str) -> bool {
    is_hex(text, 40)
}

/// Percent-encodes one URL path segment (RFC 3986 unreserved characters stay).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A repository path for a URL: each segment encoded, the slashes kept.
pub fn encode_path(path: &str) -> String {
    path.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_that_leave_the_folder_are_refused() {
        for bad in [
            "../evil",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a/../../b",
            "",
            "a\\b",
            "C:x",
            "a/",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["config.json", "sub/dir/model.safetensors", "a..b", ".gitattributes"] {
            assert!(check_file_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn repos_and_revisions() {
        assert!(check_repo("zai-org/GLM-4.5-Air").is_ok());
        for bad in ["glm", "a/b/c", "../b", "a/..", "a b/c", "/a", "a/"] {
            assert!(check_repo(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_revision("main").is_ok());
        assert!(check_revision("refs/pr/1").is_ok());
        for bad in ["", "..", "a/../b", "/main", "a b"] {
            assert!(check_revision(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_path("dir/a b+c.json"), "dir/a%20b%2Bc.json");
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
    }
}
