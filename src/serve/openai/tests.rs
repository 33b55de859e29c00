use std::time::Duration;

use super::*;
use crate::engine::batch::JobSummary;

fn summary(stop: JobStop, generated: usize) -> JobSummary {
    JobSummary {
        stop,
        prompt_tokens: 7,
        cached_tokens: 2,
        generated_tokens: generated,
        prompt_time: Duration::from_millis(1),
        generation_time: Duration::from_millis(1),
    }
}

fn reply(parallel_tool_calls: bool) -> Reply {
    Reply {
        id: "chatcmpl-x".into(),
        created: 1,
        model: "m".into(),
        prompt_tokens: 7,
        logprobs: false,
        parallel_tool_calls,
        chat: true,
    }
}

const TWO_CALLS: &str = "<think>which city?</think>Checking.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call><tool_call>now\n</tool_call>";

#[test]
fn tool_calls_in_the_output_become_openai_tool_calls() {
    let outcome = Outcome::from_text(TWO_CALLS, false, summary(JobStop::EndOfTurn, 40));
    let response = reply(true).chat_response(&outcome);
    let choice = &response["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let message = &choice["message"];
    assert_eq!(message["content"], "Checking.");
    assert_eq!(message["reasoning_content"], "which city?");
    let calls = message["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Paris", "days": 3}));
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    assert_eq!(calls[1]["function"]["arguments"], "{}");
    assert_eq!(
        response["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 40, "total_tokens": 47, "prompt_tokens_details": {"cached_tokens": 2}})
    );
}

#[test]
fn without_parallel_calls_only_the_first_is_kept() {
    let outcome = Outcome::from_text(TWO_CALLS, false, summary(JobStop::EndOfTurn, 40));
    let response = reply(false).chat_response(&outcome);
    assert_eq!(
        response["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_plain_answer_stops_or_runs_out_of_length() {
    let outcome = Outcome::from_text("hello", true, summary(JobStop::MaxTokens, 3));
    let response = reply(true).chat_response(&outcome);
    let choice = &response["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    // The template opened `<think>`: text before `</think>` is reasoning.
    assert_eq!(choice["message"]["reasoning_content"], "hello");
    assert_eq!(choice["message"]["content"], "");
    assert!(choice["message"].get("tool_calls").is_none());
    let outcome = Outcome::from_text("a</think>b", true, summary(JobStop::EndOfTurn, 3));
    let message = &reply(true).chat_response(&outcome)["choices"][0]["message"];
    assert_eq!(
        (&message["reasoning_content"], &message["content"]),
        (&json!("a"), &json!("b"))
    );
}
