//! One line per request on stderr (method, path, status, tokens, latency; never what was
//! said), and the request counts `/metrics` shows.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::ServerState;

/// Tokens a request used, set by its handler on the response (or on its stream).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt: usize,
    pub generated: usize,
}

/// Marks a streamed response: its stream writes the log line when it ends, as only then
/// are the tokens known.
#[derive(Debug, Clone, Copy)]
pub struct Streamed;

/// What the log line needs, handed to the handlers (a stream logs itself).
#[derive(Debug, Clone)]
pub struct RequestLog {
    method: String,
    path: String,
    start: Instant,
}

impl RequestLog {
    pub fn line(&self, status: &str, usage: Option<Usage>) -> String {
        let tokens = usage.map_or(String::new(), |u| {
            format!(" prompt={} generated={}", u.prompt, u.generated)
        });
        format!(
            "glm serve: {} {} {status}{tokens} {:.3}s",
            self.method,
            self.path,
            self.start.elapsed().as_secs_f64()
        )
    }
}

pub async fn observe(State(state): State<Arc<ServerState>>, mut request: Request, next: Next) -> Response {
    let log = RequestLog {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        start: Instant::now(),
    };
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other".to_owned(), |p| p.as_str().to_owned());
    request.extensions_mut().insert(log.clone());
    // Hyper drops a request's future when its client disconnects (which cancels its
    // job); the guard still logs and counts it.
    let mut unanswered = Unanswered(Some((log.clone(), state.clone(), endpoint.clone())));
    let response = next.run(request).await;
    unanswered.0 = None;
    state.requests.count(&endpoint, response.status().as_u16());
    if response.extensions().get::<Streamed>().is_none() {
        let usage = response.extensions().get::<Usage>().copied();
        eprintln!("{}", log.line(response.status().as_str(), usage));
    }
    response
}

/// Status logged and counted for a request whose client went away before the answer:
/// nginx's "client closed request".
const CLIENT_GONE: u16 = 499;

struct Unanswered(Option<(RequestLog, Arc<ServerState>, String)>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some((log, state, endpoint)) = self.0.take() {
            state.requests.count(&endpoint, CLIENT_GONE);
            eprintln!("{}", log.line(&format!("{CLIENT_GONE} (client gone)"), None));
        }
    }
}

/// A stream's log line, written when the stream is dropped: at its end, or when the
/// client went away first.
pub struct StreamLog {
    log: RequestLog,
    usage: Usage,
    finished: bool,
}

impl StreamLog {
    pub fn new(log: RequestLog, prompt: usize) -> Self {
        Self {
            log,
            usage: Usage { prompt, generated: 0 },
            finished: false,
        }
    }

    pub fn finish(&mut self, usage: Usage) {
        self.usage = usage;
        self.finished = true;
    }
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        let status = if self.finished { "200" } else { "200 (stream cut off)" };
        eprintln!("{}", self.log.line(status, Some(self.usage)));
    }
}
