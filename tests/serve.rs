//! `glm serve` end to end: a server process on a free port, spoken to over HTTP as the
//! OpenAI and Anthropic clients do.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A running `glm serve`, killed when dropped.
struct Server {
    child: Child,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(models: &[&Path], extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_glm"))
            .arg("serve")
            .args(models)
            .args(["--port", "0", "-t", "2"])
            .args(extra)
            .env("GLM_CACHE_DIR", std::env::temp_dir().join("glm-test-cache"))
            .env_remove("GLM_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start glm serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let lines = BufReader::new(child.stderr.take().expect("stderr"));
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let port = rest
                        .split(' ')
                        .next()
                        .and_then(|a| a.rsplit(':').next())
                        .map(str::to_owned);
                    let _ = port_tx.send(port.and_then(|p| p.parse::<u16>().ok()));
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let port = match port_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Some(port)) => port,
            _ => {
                let _ = child.kill();
                panic!("glm serve did not start: {}", stderr.lock().unwrap());
            }
        };
        Server { child, port, stderr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The log once it holds `needle` (a thread copies the server's stderr, so a line
    /// written before a response may arrive here after it), or as it is after 10 s.
    fn log_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn post_raw(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String, Option<String>) {
        let mut request = agent().post(&self.url(path)).header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = request.send(body).expect("POST");
        let retry = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        let text = response.body_mut().read_to_string().expect("body");
        (response.status().as_u16(), text, retry)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text, _) = self.post_raw(path, &body.to_string(), &[]);
        (status, parse(&text))
    }

    fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut request = agent().get(&self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = request.call().expect("GET");
        let text = response.body_mut().read_to_string().expect("body");
        (response.status().as_u16(), text)
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.get_with(path, &[])
    }

    /// The events of a streamed response: (event name, data).
    fn stream(&self, path: &str, body: &Value) -> Vec<(String, String)> {
        let response = agent()
            .post(&self.url(path))
            .header("content-type", "application/json")
            .send(body.to_string())
            .expect("POST");
        assert_eq!(response.status().as_u16(), 200);
        let mut text = String::new();
        response
            .into_body()
            .into_reader()
            .read_to_string(&mut text)
            .expect("stream");
        sse_events(&text)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .new_agent()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Server-sent events: `event:` and `data:` lines, a blank line ending each; comments
/// (keep-alives) skipped.
fn sse_events(text: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let (mut name, mut data) = (String::new(), String::new());
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("event:") {
            name = rest.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("data:") {
            data = rest.trim_start().to_owned();
        } else if line.is_empty() && !data.is_empty() {
            events.push((std::mem::take(&mut name), std::mem::take(&mut data)));
        }
    }
    events
}

fn tiny() -> std::path::PathBuf {
    converted("glm4moe-tiny", "q8_0")
}

fn thinking_model() -> std::path::PathBuf {
    converted("glm47flash-tiny", "q8_0")
}

/// `glm run`'s answer (stdout) for the same settings.
fn glm_run(model: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_glm"))
        .arg("run")
        .arg(model)
        .args(["-t", "2", "--temp", "0"])
        .args(args)
        .env("GLM_CACHE_DIR", std::env::temp_dir().join("glm-test-cache"))
        .stdin(Stdio::null())
        .output()
        .expect("glm run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn chat_request(text: &str, max_tokens: u32) -> Value {
    json!({
        "model": "glm4moe-tiny",
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "chat_template_kwargs": {"enable_thinking": false},
    })
}

fn served(extra: &[&str]) -> Server {
    Server::start(
        &[&tiny()],
        &[&["--alias", "glm4moe-tiny", "--parallel", "2"], extra].concat(),
    )
}

#[test]
fn chat_completion_equals_glm_run_streamed_or_not() {
    let server = served(&[]);
    let (status, body) = server.post("/v1/chat/completions", &chat_request("Tell me a story", 12));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_owned();
    let expected = glm_run(&tiny(), &["-p", "Tell me a story", "-n", "12", "--no-think"]);
    assert_eq!(content.trim_end(), expected.trim_end());
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 3, "{usage}");
    assert!(
        (1..=12).contains(&usage["completion_tokens"].as_u64().unwrap()),
        "{usage}"
    );

    let mut request = chat_request("Tell me a story", 12);
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let events = server.stream("/v1/chat/completions", &request);
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| parse(&e.1)).collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, content);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|r| !r.is_null())
        .collect();
    assert_eq!(finish, [&body["choices"][0]["finish_reason"]]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], usage["completion_tokens"]);
    assert_eq!(last["usage"]["prompt_tokens"], usage["prompt_tokens"]);
}

#[test]
fn a_thinking_model_returns_reasoning_content() {
    let server = Server::start(&[&thinking_model()], &[]);
    let request = json!({"messages": [{"role": "user", "content": "Why?"}], "temperature": 0, "max_tokens": 10});
    let (status, body) = server.post("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{body}");
    let message = &body["choices"][0]["message"];
    let reasoning = message["reasoning_content"].as_str().expect("reasoning_content");
    assert!(!reasoning.is_empty());
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let events = server.stream("/v1/chat/completions", &streamed);
    let deltas: Vec<Value> = events.iter().filter(|e| e.1 != "[DONE]").map(|e| parse(&e.1)).collect();
    let streamed_reasoning: String = deltas
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(streamed_reasoning, reasoning);
    // Thinking switched off: the template closes `<think>` itself, nothing is reasoning.
    let mut off = request.clone();
    off["chat_template_kwargs"] = json!({"enable_thinking": false});
    let (_, body) = server.post("/v1/chat/completions", &off);
    assert!(
        body["choices"][0]["message"].get("reasoning_content").is_none(),
        "{body}"
    );
}

/// The prompt the server evaluates is the template's rendering with the tools: its token
/// count equals a local rendering's.
#[test]
fn tools_are_rendered_into_the_prompt() {
    let server = served(&[]);
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let mut request = chat_request("Weather in Paris?", 2);
    request["tools"] = tools.clone();
    let (status, body) = server.post("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{body}");
    let engine = glm::engine::Engine::load(
        &tiny(),
        &glm::engine::LoadOptions {
            vocab_only: true,
            ..Default::default()
        },
    )
    .expect("load");
    let template = glm::chat::ChatTemplate::new(&engine.chat_template().expect("template")).expect("compile");
    let mut options = glm::chat::RenderOptions {
        add_generation_prompt: true,
        tools: Some(tools),
        ..Default::default()
    };
    options.extra.insert("enable_thinking".into(), false.into());
    for (variable, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
    ] {
        if let Some(text) = engine
            .metadata(key)
            .and_then(|id| id.parse().ok())
            .and_then(|id| engine.token_text(id))
        {
            options.extra.insert(variable.into(), text.into());
        }
    }
    let messages = [json!({"role": "user", "content": "Weather in Paris?"})];
    let rendered = template.render(&messages, &options).expect("render");
    assert!(rendered.contains("get_weather"));
    assert_eq!(
        body["usage"]["prompt_tokens"].as_u64(),
        Some(engine.tokenize(&rendered).len() as u64)
    );
    // The round trip: the call the model made and the tool's result go back in, the
    // arguments as the object GLM's templates read (OpenAI sends them as a JSON string).
    let mut round_trip = request.clone();
    round_trip["messages"] = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
    ]);
    let (status, answered) = server.post("/v1/chat/completions", &round_trip);
    assert_eq!(status, 200, "{answered}");
    let messages = [
        json!({"role": "user", "content": "Weather in Paris?"}),
        json!({"role": "assistant", "content": "", "tool_calls": [{"type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}),
        json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}),
    ];
    let rendered = template.render(&messages, &options).expect("render");
    assert!(rendered.contains("Paris") && rendered.contains("temp"), "{rendered}");
    assert_eq!(
        answered["usage"]["prompt_tokens"].as_u64(),
        Some(engine.tokenize(&rendered).len() as u64)
    );
    // tool_choice none renders no tools: a shorter prompt.
    request["tool_choice"] = json!("none");
    let (_, without) = server.post("/v1/chat/completions", &request);
    assert!(without["usage"]["prompt_tokens"].as_u64() < body["usage"]["prompt_tokens"].as_u64());
}

#[test]
fn text_completions_and_the_model_list() {
    let server = Server::start(&[&tiny(), &thinking_model()], &["--alias", "tiny", "--alias", "flash"]);
    let request = json!({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0});
    let (status, body) = server.post("/v1/completions", &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    let expected = glm_run(&tiny(), &["-p", "Once upon a time", "-n", "8", "--raw"]);
    assert_eq!(
        body["choices"][0]["text"].as_str().unwrap().trim_end(),
        expected.trim_end()
    );
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    let ids: Vec<&str> = parse(&models)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned().leak() as &str)
        .collect();
    assert_eq!(ids, ["tiny", "flash"]);
    let (status, one) = server.get("/v1/models/flash");
    assert_eq!(status, 200, "{one}");
    assert_eq!(parse(&one)["id"], "flash");
    let (status, none) = server.get("/v1/models/gpt-4");
    assert_eq!(status, 404, "{none}");
    assert!(
        parse(&none)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tiny, flash"),
        "{none}"
    );
    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"model": "flash", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "flash");
    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(status, 404);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("gpt-4") && message.contains("tiny, flash"),
        "{message}"
    );
}

#[test]
fn anthropic_messages_streamed_or_not_and_token_counts() {
    let server = served(&[]);
    let request = json!({
        "model": "glm4moe-tiny", "max_tokens": 12, "temperature": 0,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Tell me a story"}]}],
        "thinking": {"type": "disabled"},
        "metadata": {"user_id": "ignored"},
    });
    let (status, body) = server.post("/v1/messages", &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "message");
    let text = body["content"][0]["text"].as_str().expect("text block").to_owned();
    let openai = json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story"}],
        "temperature": 0, "max_tokens": 12, "chat_template_kwargs": {"enable_thinking": false}});
    let (_, answer) = server.post("/v1/chat/completions", &openai);
    assert_eq!(text, answer["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(body["usage"]["input_tokens"], answer["usage"]["prompt_tokens"]);
    assert!(["end_turn", "max_tokens"].contains(&body["stop_reason"].as_str().unwrap()));

    let (status, counted) = server.post("/v1/messages/count_tokens", &request);
    assert_eq!(status, 200, "{counted}");
    assert_eq!(counted["input_tokens"], answer["usage"]["prompt_tokens"]);

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let events = server.stream("/v1/messages", &streamed);
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
    assert!(names.contains(&"content_block_start") && names.contains(&"content_block_stop"));
    let text_streamed: String = events
        .iter()
        .filter(|e| e.0 == "content_block_delta")
        .map(|e| parse(&e.1))
        .filter_map(|d| d["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text_streamed, text);
    let delta = parse(&events[events.len() - 2].1);
    assert_eq!(delta["delta"]["stop_reason"], body["stop_reason"]);
    assert_eq!(delta["usage"]["output_tokens"], body["usage"]["output_tokens"]);
}

#[test]
fn bad_requests_get_4xx_naming_the_problem() {
    let server = Server::start(&[&tiny()], &["-c", "256", "--max-body", "4000"]);
    let (status, text, _) = server.post_raw("/v1/chat/completions", "{\"messages\": [", &[]);
    assert_eq!(status, 400, "{text}");
    assert!(parse(&text)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));

    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}),
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "temperature", "{body}");
    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": 5}]}),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[0].content"),
        "{body}"
    );

    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "n": 2}),
    );
    assert_eq!((status, &body["error"]["param"]), (400, &json!("n")), "{body}");

    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}]}]}),
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "messages[0].content[0].image_url.url", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("takes no images"),
        "{body}"
    );

    let long = "word ".repeat(700);
    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": long}]}),
    );
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("256") && message.contains("tokens"), "{message}");

    let (status, body) = server.post(
        "/v1/messages",
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(status, 400);
    assert_eq!(body["type"], "error");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("max_tokens"),
        "{body}"
    );

    let big = json!({"messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let (status, _, _) = server.post_raw("/v1/chat/completions", &big.to_string(), &[]);
    assert_eq!(status, 413);
}

#[test]
fn an_api_key_is_required_when_set() {
    let server = Server::start(&[&tiny()], &["--api-key", "s3cret"]);
    assert_eq!(server.get("/v1/models").0, 401);
    assert_eq!(
        server.get_with("/v1/models", &[("authorization", "Bearer wrong")]).0,
        401
    );
    assert_eq!(
        server.get_with("/v1/models", &[("authorization", "Bearer s3cret")]).0,
        200
    );
    assert_eq!(server.get_with("/v1/models", &[("x-api-key", "s3cret")]).0, 200);
    assert_eq!(server.get("/health").0, 200);
    let (status, text, _) = server.post_raw("/v1/messages", "{}", &[("x-api-key", "nope")]);
    assert_eq!(status, 401);
    assert_eq!(parse(&text)["error"]["type"], "authentication_error");
}

/// A streamed request that runs for a long time: thousands of tokens past end-of-turn.
fn endless(server: &Server) -> impl Read {
    let request = json!({"messages": [{"role": "user", "content": "go"}], "max_tokens": 30000,
        "ignore_eos": true, "stream": true});
    let response = agent()
        .post(&server.url("/v1/chat/completions"))
        .send(request.to_string())
        .expect("POST");
    assert_eq!(response.status().as_u16(), 200);
    let mut reader = BufReader::new(response.into_body().into_reader());
    // Wait for generated text, so the job holds its sequence.
    let mut line = String::new();
    let mut chunks = 0;
    while chunks < 3 && reader.read_line(&mut line).expect("read") > 0 {
        if line.starts_with("data:") {
            chunks += 1;
        }
        line.clear();
    }
    reader
}

#[test]
fn a_full_queue_answers_503_and_a_client_gone_frees_its_slot() {
    let server = Server::start(
        &[&tiny()],
        &[
            "--alias",
            "glm4moe-tiny",
            "--parallel",
            "1",
            "--queue",
            "0",
            "-c",
            "32768",
        ],
    );
    let running = endless(&server);
    let (status, text, retry) = server.post_raw("/v1/chat/completions", &chat_request("hi", 2).to_string(), &[]);
    assert_eq!(status, 503, "{text}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(
        parse(&text)["error"]["message"].as_str().unwrap().contains("busy"),
        "{text}"
    );
    drop(running);
    let start = Instant::now();
    loop {
        let (status, body) = server.post("/v1/chat/completions", &chat_request("hi", 2));
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(start.elapsed() < Duration::from_secs(20), "the slot was not freed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let health = parse(&server.get("/health").1);
    assert_eq!(health["models"][0]["running"], 0, "{health}");
    let log = server.log_with("stream cut off");
    assert!(log.contains("stream cut off"), "{log}");
}

#[test]
fn a_client_gone_before_a_whole_answer_frees_its_slot() {
    let server = Server::start(&[&tiny()], &["--parallel", "1", "-c", "32768"]);
    let impatient = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .new_agent();
    let request = json!({"messages": [{"role": "user", "content": "go"}], "max_tokens": 30000, "ignore_eos": true});
    let sent = std::thread::spawn({
        let url = server.url("/v1/chat/completions");
        move || impatient.post(&url).send(request.to_string()).is_err()
    });
    let start = Instant::now();
    while parse(&server.get("/health").1)["models"][0]["running"] != 1 {
        assert!(start.elapsed() < Duration::from_secs(20), "the request never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sent.join().expect("thread"), "the client gave up");
    let start = Instant::now();
    while parse(&server.get("/health").1)["models"][0]["running"] != 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "the slot was not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = server.log_with("POST /v1/chat/completions 499 (client gone)");
    assert!(log.contains("POST /v1/chat/completions 499 (client gone)"), "{log}");
    // Counted with the log line, just before it was written.
    let metrics = server.get("/metrics").1;
    assert!(metrics.contains("status=\"499\""), "{metrics}");
}

#[test]
fn health_metrics_and_the_request_log() {
    let server = served(&[]);
    let (_, body) = server.post("/v1/chat/completions", &chat_request("hello", 5));
    let (status, health) = server.get("/health");
    assert_eq!(status, 200);
    let health = parse(&health);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["models"][0]["name"], "glm4moe-tiny");
    assert_eq!(health["models"][0]["queued"], 0);
    let (status, metrics) = server.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("glm_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 1"),
        "{metrics}"
    );
    let generated = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(
        metrics.contains(&format!(
            "glm_generated_tokens_total{{model=\"glm4moe-tiny\"}} {generated}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("glm_kv_cells_total{model=\"glm4moe-tiny\"}"),
        "{metrics}"
    );
    let log = server.log_with("POST /v1/chat/completions 200");
    let line = log
        .lines()
        .find(|l| l.contains("POST /v1/chat/completions 200"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&format!("generated={generated}")), "{line}");
    assert!(!log.contains("hello"), "the log must not hold what was said: {log}");
}

#[test]
fn concurrent_requests_answer_as_they_would_alone() {
    // Eight clients, four sequences: half of them wait in the queue for a free one.
    let server = Server::start(&[&tiny()], &["--alias", "glm4moe-tiny", "--parallel", "4"]);
    let prompts = [
        "The sky is",
        "Numbers: one two",
        "Write a haiku",
        "Hello there",
        "What is Rust?",
        "Name a colour",
        "Count to five",
        "Tell me a joke",
    ];
    let requests: Vec<Value> = prompts.iter().map(|p| chat_request(p, 10)).collect();
    let (alone, together) = alone_and_together(&server, &requests);
    assert_eq!(together, alone);
}

/// The answer (`message.content`) to each chat request sent alone, one after another,
/// then to all of them sent at once; every response must be a 200.
fn alone_and_together(server: &Server, requests: &[Value]) -> (Vec<String>, Vec<String>) {
    let content = |(status, body): (u16, Value)| {
        assert_eq!(status, 200, "{body}");
        answer(&body)
    };
    let alone = requests
        .iter()
        .map(|r| content(server.post("/v1/chat/completions", r)))
        .collect();
    let together = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .map(|r| scope.spawn(move || server.post("/v1/chat/completions", r)))
            .collect();
        handles
            .into_iter()
            .map(|h| content(h.join().expect("thread")))
            .collect()
    });
    (alone, together)
}

/// The GLM-4.5V-shaped fixture converted with `glm convert`, its projector beside it.
fn vision_model(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("glm45v-tiny-Q8_0.gguf");
    let status = Command::new(env!("CARGO_BIN_EXE_glm"))
        .arg("convert")
        .arg(model_dir("glm45v-tiny"))
        .args(["--quant", "q8_0", "-o"])
        .arg(&model)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("glm convert");
    assert!(status.success());
    assert!(dir.join("glm45v-tiny-mmproj-F16.gguf").is_file());
    model
}

fn data_url(path: &Path) -> String {
    use base64::Engine as _;
    let bytes = std::fs::read(path).expect("read image");
    format!(
        "data:image/bmp;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A greedy chat request whose user message is `images` (as data URLs), then `text`.
fn image_request(images: &[&Path], text: &str) -> Value {
    let mut parts: Vec<Value> = images
        .iter()
        .map(|i| json!({"type": "image_url", "image_url": {"url": data_url(i)}}))
        .collect();
    parts.push(json!({"type": "text", "text": text}));
    json!({
        "messages": [{"role": "user", "content": parts}],
        "temperature": 0,
        "max_tokens": 8,
        "chat_template_kwargs": {"enable_thinking": false},
    })
}

fn answer(body: &Value) -> String {
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content: {body}"))
        .to_owned()
}

#[test]
fn images_in_requests_answer_as_glm_run_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = vision_model(dir.path());
    let (square, tall) = (dir.path().join("square.bmp"), dir.path().join("tall.bmp"));
    write_bmp(&square, 56, 56);
    write_bmp(&tall, 28, 84);
    let question = "What is in the picture?";
    let image_arg = |path: &Path| path.to_str().expect("path").to_owned();
    let run_with = |images: &[&Path]| {
        let mut args = vec![
            "-p".to_owned(),
            question.to_owned(),
            "-n".into(),
            "8".into(),
            "--no-think".into(),
        ];
        for image in images {
            args.extend(["--image".to_owned(), image_arg(image)]);
        }
        glm_run(&model, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let expected_square = run_with(&[&square]);
    let expected_both = run_with(&[&square, &tall]);

    let server = Server::start(&[&model], &["--parallel", "2"]);
    let log = server.log_with("images through");
    assert!(log.contains("images through"), "{log}");
    let (status, body) = server.post("/v1/chat/completions", &image_request(&[&square], question));
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer(&body).trim_end(), expected_square.trim_end());
    let (_, text_only) = server.post("/v1/chat/completions", &image_request(&[], question));
    let image_cost =
        body["usage"]["prompt_tokens"].as_u64().unwrap() - text_only["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(image_cost > 2, "the image takes cells: {body} {text_only}");
    assert_ne!(answer(&body), answer(&text_only), "the image changes the answer");

    // Again: the text before the image comes from the cache, the answer is the same.
    let (_, again) = server.post("/v1/chat/completions", &image_request(&[&square], question));
    assert_eq!(answer(&again), answer(&body));
    assert!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{again}"
    );

    let (status, both) = server.post("/v1/chat/completions", &image_request(&[&square, &tall], question));
    assert_eq!(status, 200, "{both}");
    assert_eq!(answer(&both).trim_end(), expected_both.trim_end());

    let mut streamed_request = image_request(&[&square], question);
    streamed_request["stream"] = json!(true);
    let streamed: String = server
        .stream("/v1/chat/completions", &streamed_request)
        .iter()
        .filter(|e| e.1 != "[DONE]")
        .filter_map(|e| {
            parse(&e.1)["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(streamed, answer(&body));

    use base64::Engine as _;
    let anthropic = json!({
        "max_tokens": 8, "temperature": 0, "thinking": {"type": "disabled"},
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/bmp",
                "data": base64::engine::general_purpose::STANDARD.encode(std::fs::read(&square).unwrap())}},
            {"type": "text", "text": question}]}],
    });
    let (status, message) = server.post("/v1/messages", &anthropic);
    assert_eq!(status, 200, "{message}");
    assert_eq!(message["content"][0]["text"].as_str().unwrap(), answer(&body));
    assert_eq!(message["usage"]["input_tokens"], body["usage"]["prompt_tokens"]);

    // Two sequences, three clients: images and text interleave in the batches, and
    // every answer is what it was alone.
    let requests = [
        image_request(&[&square], question),
        image_request(&[&square, &tall], question),
        image_request(&[], question),
        image_request(&[&tall], "Describe it."),
    ];
    let (alone, together) = alone_and_together(&server, &requests);
    assert_eq!(together, alone);
    assert_eq!(alone[0], answer(&body));
}

#[test]
fn bad_images_get_400_naming_the_part() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = vision_model(dir.path());
    let server = Server::start(&[&model], &["--parallel", "1"]);
    let with_url = |url: &str| {
        json!({"max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}]}]})
    };
    for (url, why) in [
        ("https://example.com/cat.png", "does not fetch"),
        ("data:image/png;base64,not base64!", "base64"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "not a PNG, JPEG"),
    ] {
        let (status, body) = server.post("/v1/chat/completions", &with_url(url));
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["param"], "messages[0].content[1].image_url.url", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{url}: {message}");
    }
    let image = dir.path().join("i.bmp");
    write_bmp(&image, 8, 8);
    let in_assistant = json!({"max_tokens": 4, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": data_url(&image)}}]},
        {"role": "user", "content": "and?"}]});
    let (status, body) = server.post("/v1/chat/completions", &in_assistant);
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &json!("messages[1].content[0]")),
        "{body}"
    );
    let many: Vec<&Path> = vec![image.as_path(); 17];
    let (status, body) = server.post("/v1/chat/completions", &image_request(&many, "so many"));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("at most 16"),
        "{body}"
    );
    let marker = image_request(&[&image], "<__media__> is mine");
    let (status, body) = server.post("/v1/chat/completions", &marker);
    assert_eq!(status, 400, "{body}");
    let anthropic = json!({"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "http://169.254.169.254/latest"}}]}]});
    let (status, body) = server.post("/v1/messages", &anthropic);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "error");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("does not fetch"),
        "{body}"
    );
    // The server is unharmed: a good image still answers.
    let (status, body) = server.post("/v1/chat/completions", &image_request(&[&image], "ok?"));
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get("/health");
    assert_eq!(status, 200);

    let no_projector = Server::start(&[&model], &["--no-mmproj"]);
    let (status, body) = no_projector.post("/v1/chat/completions", &image_request(&[&image], "ok?"));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("takes no images"),
        "{body}"
    );
}
