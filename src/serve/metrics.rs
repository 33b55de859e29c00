//! `/metrics` in Prometheus's text format: requests by endpoint and status, tokens and
//! speeds per model (counted here from each finished job), and the schedulers' queue,
//! running jobs and KV cache.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::ServerState;
use crate::engine::batch::JobSummary;

#[derive(Debug, Default)]
pub struct RequestCounts(Mutex<BTreeMap<(String, u16), u64>>);

impl RequestCounts {
    pub fn count(&self, endpoint: &str, status: u16) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry((endpoint.to_owned(), status)).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<(String, u16), u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Totals of a model's finished jobs.
#[derive(Debug, Default)]
pub struct ModelMetrics {
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    prompt_micros: AtomicU64,
    generation_micros: AtomicU64,
}

impl ModelMetrics {
    pub fn record(&self, summary: &JobSummary) {
        let add = |counter: &AtomicU64, value: u64| counter.fetch_add(value, Ordering::Relaxed);
        add(&self.prompt_tokens, summary.prompt_tokens as u64);
        add(&self.generated_tokens, summary.generated_tokens as u64);
        add(&self.prompt_micros, summary.prompt_time.as_micros() as u64);
        add(&self.generation_micros, summary.generation_time.as_micros() as u64);
    }
}

/// Tokens per second from a token count and microseconds (0 before any).
fn rate(tokens: u64, micros: u64) -> f64 {
    if micros == 0 {
        0.0
    } else {
        tokens as f64 * 1e6 / micros as f64
    }
}

pub async fn prometheus(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        render(&state),
    )
}

fn render(state: &ServerState) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "glm_requests_total",
        "counter",
        "HTTP requests by endpoint and status.",
    );
    for ((endpoint, status), count) in state.requests.snapshot() {
        let _ = writeln!(
            out,
            "glm_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {count}"
        );
    }
    type Sample = fn(&super::ServedModel) -> f64;
    let families: [(&str, &str, &str, Sample); 9] = [
        (
            "glm_prompt_tokens_total",
            "counter",
            "Prompt tokens of finished requests.",
            |m| m.metrics.prompt_tokens.load(Ordering::Relaxed) as f64,
        ),
        (
            "glm_generated_tokens_total",
            "counter",
            "Tokens generated for finished requests.",
            |m| m.metrics.generated_tokens.load(Ordering::Relaxed) as f64,
        ),
        (
            "glm_prompt_tokens_per_second",
            "gauge",
            "Prompt evaluation speed over all finished requests.",
            |m| {
                rate(
                    m.metrics.prompt_tokens.load(Ordering::Relaxed),
                    m.metrics.prompt_micros.load(Ordering::Relaxed),
                )
            },
        ),
        (
            "glm_generation_tokens_per_second",
            "gauge",
            "Generation speed over all finished requests.",
            |m| {
                rate(
                    m.metrics.generated_tokens.load(Ordering::Relaxed),
                    m.metrics.generation_micros.load(Ordering::Relaxed),
                )
            },
        ),
        ("glm_requests_running", "gauge", "Requests being decoded.", |m| {
            m.scheduler.stats().running as f64
        }),
        (
            "glm_requests_queued",
            "gauge",
            "Requests waiting for a free sequence.",
            |m| m.scheduler.stats().queued as f64,
        ),
        ("glm_kv_cells_used", "gauge", "KV cache cells in use.", |m| {
            m.scheduler.stats().kv_cells_used as f64
        }),
        ("glm_kv_cells_total", "gauge", "KV cache cells in all.", |m| {
            m.scheduler.stats().kv_cells_total as f64
        }),
        (
            "glm_ctx_per_sequence",
            "gauge",
            "Context tokens each request has.",
            |m| f64::from(m.scheduler.ctx_per_sequence()),
        ),
    ];
    for (name, kind, help, sample) in families {
        family(&mut out, name, kind, help);
        for model in &state.models {
            let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", escape(&model.name), sample(model));
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as Prometheus reads it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_escapes() {
        assert_eq!(rate(10, 2_000_000), 5.0);
        assert_eq!(rate(10, 0), 0.0);
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
