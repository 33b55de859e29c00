//! `glm serve`'s HTTP side: an axum router speaking OpenAI's chat and completions API
//! and Anthropic's messages API over the models' continuous-batching schedulers.
//!
//! `request` reads bodies, `prompt` renders and tokenizes conversations (`images` decodes
//! their pictures), `generate`
//! turns a scheduler's events into replies, `openai` and `anthropic` speak each API,
//! `auth`, `cors` and `observe` wrap every route, `metrics` counts.

mod anthropic;
mod auth;
mod cors;
mod errors;
mod generate;
mod images;
mod metrics;
mod observe;
mod openai;
mod prompt;
mod request;

use std::future::Future;
use std::sync::{Arc, RwLock};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::chat::ChatTemplate;
use crate::engine::batch::Scheduler;
use crate::engine::{Engine, Projector, Sampling};
pub use errors::{ApiError, Flavor};
pub use metrics::ModelMetrics;

/// One model the server answers for.
pub struct ServedModel {
    /// The name requests use (`model`), `--alias` or the reference as typed.
    pub name: String,
    pub engine: Arc<Engine>,
    pub scheduler: Scheduler,
    /// None for a model without one: only `/v1/completions` works then.
    pub template: Option<Arc<ChatTemplate>>,
    /// The vision projector (shared with the scheduler); requests with images need it.
    pub projector: Option<Arc<RwLock<Projector>>>,
    /// The model's sampling defaults, then glm's; a request's fields go on top.
    pub defaults: Sampling,
    pub metrics: ModelMetrics,
}

/// What the handlers share.
pub struct ServerState {
    /// The first is the default.
    pub models: Vec<Arc<ServedModel>>,
    pub api_key: Option<String>,
    pub cors: Vec<String>,
    pub requests: metrics::RequestCounts,
    /// Unix time of the start, the models' `created`.
    pub started: u64,
}

impl ServerState {
    pub fn new(models: Vec<Arc<ServedModel>>, api_key: Option<String>, cors: Vec<String>) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            models,
            api_key,
            cors,
            requests: Default::default(),
            started,
        }
    }

    /// The model a request names; the first served one when it names none.
    pub fn model(&self, name: Option<&str>) -> Result<Arc<ServedModel>, ApiError> {
        let found = match name.filter(|n| !n.is_empty()) {
            None => self.models.first(),
            Some(name) => self.models.iter().find(|m| m.name == name),
        };
        found.cloned().ok_or_else(|| {
            let served: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
            let mut error = ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "model {:?} is not served here; the models are: {}",
                    name.unwrap_or_default(),
                    served.join(", ")
                ),
            );
            error.param = Some("model".into());
            error
        })
    }
}

/// Every route, with authentication, request logging and counting, the body limit and
/// CORS around them.
pub fn router(state: Arc<ServerState>, max_body: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/health", get(health))
        .route("/metrics", get(metrics::prometheus))
        .fallback(not_found)
        .layer(from_fn_with_state(state.clone(), auth::require_key))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(from_fn_with_state(state.clone(), observe::observe))
        .layer(from_fn_with_state(state.clone(), cors::cors))
        .with_state(state)
}

/// Serves until `shutdown` completes; requests in flight then are cut off (a stream ends
/// and its job is cancelled).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    max_body: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state, max_body);
    let server = axum::serve(listener, app);
    tokio::select! {
        result = server => result,
        () = shutdown => Ok(()),
    }
}

async fn health(State(state): State<Arc<ServerState>>) -> Json<serde_json::Value> {
    let models: Vec<_> = state
        .models
        .iter()
        .map(|m| {
            let stats = m.scheduler.stats();
            json!({"name": m.name, "running": stats.running, "queued": stats.queued})
        })
        .collect();
    Json(json!({"status": "ok", "models": models}))
}

async fn not_found(uri: axum::http::Uri) -> impl IntoResponse {
    ApiError::new(StatusCode::NOT_FOUND, format!("no such endpoint: {}", uri.path()))
        .in_flavor(Flavor::of_path(uri.path()))
}

/// The HTTP layer without a model: routing, authentication, body limits and error shapes
/// (the end-to-end tests in `tests/serve.rs` cover generation).
#[cfg(test)]
mod tests {
    use super::*;

    /// A server with no model on a free port, and its base URL.
    fn start(api_key: Option<&str>, max_body: usize) -> (tokio::runtime::Runtime, String) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(ServerState::new(Vec::new(), api_key.map(str::to_owned), Vec::new()));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(serve(listener, state, max_body, std::future::pending()));
        (runtime, url)
    }

    fn post(url: &str, body: &str, key: Option<&str>) -> (u16, serde_json::Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut request = agent.post(url);
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let mut response = request.send(body).unwrap();
        let text = response.body_mut().read_to_string().unwrap();
        (response.status().as_u16(), serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn errors_take_each_apis_shape() {
        let (_runtime, url) = start(None, 1000);
        let (status, body) = post(&format!("{url}/v1/chat/completions"), "{\"messages\": [", None);
        assert_eq!(status, 400);
        assert!(
            body["error"]["message"].as_str().unwrap().contains("not valid JSON"),
            "{body}"
        );
        let (status, body) = post(
            &format!("{url}/v1/chat/completions"),
            r#"{"messages": [], "temperature": "hot", "unknown": 1}"#,
            None,
        );
        assert_eq!(
            (status, &body["error"]["param"]),
            (400, &json!("temperature")),
            "{body}"
        );
        let (status, body) = post(&format!("{url}/v1/messages"), r#"{"messages": "x"}"#, None);
        assert_eq!((status, &body["type"]), (400, &json!("error")), "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("messages"),
            "{body}"
        );
        let (status, body) = post(&format!("{url}/v1/chat/completions"), &"x".repeat(2000), None);
        assert_eq!(status, 413, "{body}");
        let (status, body) = post(
            &format!("{url}/v1/chat/completions"),
            r#"{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}"#,
            None,
        );
        assert_eq!(status, 404, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("gpt-4"), "{body}");
        let (status, body) = post(
            &format!("{url}/v1/chat/completions"),
            r#"{"messages": [{"role": "user", "content": "hi"}], "n": 3}"#,
            None,
        );
        assert_eq!((status, &body["error"]["param"]), (400, &json!("n")), "{body}");
    }

    #[test]
    fn the_key_is_checked_before_anything_else() {
        let (_runtime, url) = start(Some("k"), 1000);
        let (status, body) = post(&format!("{url}/v1/messages"), "{", None);
        assert_eq!((status, &body["error"]["type"]), (401, &json!("authentication_error")));
        let (status, _) = post(&format!("{url}/v1/messages"), "{", Some("k"));
        assert_eq!(status, 400);
        let (status, body) = post(&format!("{url}/v1/chat/completions"), "{", Some("K"));
        assert_eq!((status, &body["error"]["code"]), (401, &json!(401)));
    }
}
