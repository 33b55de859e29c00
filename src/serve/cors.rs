//! `--cors ORIGIN`: browsers on the listed origins (or any, with `*`) may call the API.
//! Without the flag no CORS header is sent, so a web page the user visits cannot read
//! answers from a server on their machine.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ServerState;

const ALLOWED_HEADERS: &str = "authorization, content-type, x-api-key, anthropic-version, anthropic-beta";

pub async fn cors(State(state): State<Arc<ServerState>>, request: Request, next: Next) -> Response {
    let Some(origin) = allowed_origin(&state.cors, request.headers()) else {
        return next.run(request).await;
    };
    // A preflight carries no credentials, so it is answered before the key check.
    let preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    response
}

/// The request's `Origin` when `--cors` allows it.
fn allowed_origin(allowed: &[String], headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/') == text)
        .then(|| origin.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_are_allowed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, "http://localhost:3000".parse().unwrap());
        assert!(allowed_origin(&[], &headers).is_none());
        assert!(allowed_origin(&["http://example.com".into()], &headers).is_none());
        assert!(allowed_origin(&["http://localhost:3000/".into()], &headers).is_some());
        assert!(allowed_origin(&["*".into()], &headers).is_some());
    }
}
