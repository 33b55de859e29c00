//! `--api-key`: every route but `/health` (load balancers probe it without credentials)
//! wants the key as `Authorization: Bearer KEY` (OpenAI clients) or `x-api-key: KEY`
//! (Anthropic clients).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::errors::{ApiError, Flavor};
use super::ServerState;

pub async fn require_key(State(state): State<Arc<ServerState>>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.api_key else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if path == "/health" || presented_key(request.headers()).is_some_and(|key| same_key(key, expected)) {
        return next.run(request).await;
    }
    let message = match presented_key(request.headers()) {
        None => "an API key is required: `Authorization: Bearer KEY` or `x-api-key: KEY`",
        Some(_) => "the API key is not valid",
    };
    ApiError::new(StatusCode::UNAUTHORIZED, message)
        .in_flavor(Flavor::of_path(path))
        .into_response()
}

fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get("x-api-key") {
        return Some(value.as_bytes());
    }
    let authorization = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = authorization.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| authorization[7..].trim_ascii())
}

/// Compares digests in constant time: a comparison that stops at the first differing
/// byte tells an attacker, through its timing, how much of a guess was right; hashing
/// first also hides the key's length.
fn same_key(presented: &[u8], expected: &str) -> bool {
    let a = Sha256::digest(presented);
    let b = Sha256::digest(expected.as_bytes());
    let difference = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        assert!(same_key(b"secret", "secret"));
        assert!(!same_key(b"secreT", "secret"));
        assert!(!same_key(b"secret2", "secret"));
        assert!(!same_key(b"", "secret"));
    }

    #[test]
    fn bearer_and_x_api_key_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer  abc ".parse().unwrap());
        assert_eq!(presented_key(&headers), Some(&b"abc"[..]));
        headers.insert("x-api-key", "xyz".parse().unwrap());
        assert_eq!(presented_key(&headers), Some(&b"xyz"[..]));
        let mut basic = HeaderMap::new();
        basic.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&basic), None);
    }
}
