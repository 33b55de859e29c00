//! Multi-token prediction: greedy output with drafting is token for token the output
//! without it, over chat turns that reuse the KV cache, whether drafts are kept or
//! thrown away.

mod common;

use common::*;
use glm::engine::{
    ChatSession, ContextOptions, DraftOptions, DraftOracle, Engine, GenerationStats, LoadOptions, Sampling,
};

const REPLY_TOKENS: usize = 40;

fn greedy() -> Sampling {
    Sampling::greedy_to_the_end()
}

fn engine(model: &str) -> Engine {
    let path = converted(model, "f32");
    let options = LoadOptions {
        load_mtp: true,
        ..LoadOptions::default()
    };
    Engine::load(&path, &options).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

fn options(draft: Option<DraftOptions>) -> ContextOptions {
    ContextOptions {
        ctx_size: 512,
        draft,
        ..ContextOptions::with_threads(2).exact()
    }
}

/// One turn: the reply's text and stats.
fn turn(session: &mut ChatSession, text: &str) -> (String, GenerationStats) {
    let tokens = session.tokens_for(text);
    let mut reply = String::new();
    let stats = session
        .respond(&tokens, REPLY_TOKENS, &greedy(), |piece| {
            reply.push_str(piece);
            true
        })
        .expect("reply");
    (reply, stats)
}

/// The texts of three turns, each turn's prompt the previous prompt, its reply and more.
fn conversation(
    session: &mut ChatSession,
    mut before_turn: impl FnMut(&mut ChatSession, usize),
) -> Vec<(String, GenerationStats)> {
    let mut text = String::from("Hello there, how are you?");
    let mut turns = Vec::new();
    for index in 0..3 {
        before_turn(session, index);
        let (reply, stats) = turn(session, &text);
        text = format!("{text}{reply} and then some more words number {index}");
        turns.push((reply, stats));
    }
    turns
}

fn check_model(model: &str) {
    let engine = engine(model);
    assert!(engine.has_nextn_layers(), "{model} has NextN layers");
    let mut plain = ChatSession::new(&engine, &options(None)).expect("plain session");
    assert!(!plain.drafts(&greedy()));
    // The cache after each plain turn is the sequence the oracle drafts from.
    let mut expected = Vec::new();
    let plain_turns = conversation(&mut plain, |_, _| {});
    {
        let mut again = ChatSession::new(&engine, &options(None)).expect("plain session");
        conversation(&mut again, |session, index| {
            if index > 0 {
                expected.push(session.cached_tokens());
            }
        });
        expected.push(again.cached_tokens());
    }
    let draft = DraftOptions::default();
    let cases: [(&str, Option<usize>); 3] = [
        ("draft head", None),
        ("all right", Some(0)),
        ("every 4th wrong", Some(4)),
    ];
    for (name, wrong_every) in cases {
        let mut drafting = ChatSession::new(&engine, &options(Some(draft))).expect("drafting session");
        assert!(drafting.drafts(&greedy()));
        let turns = conversation(&mut drafting, |session, index| {
            let oracle = wrong_every.map(|wrong_every| DraftOracle {
                tokens: expected[index].clone(),
                wrong_every,
            });
            session.set_draft_oracle(oracle);
        });
        for (index, ((text, stats), (plain_text, plain_stats))) in turns.iter().zip(&plain_turns).enumerate() {
            assert_eq!(
                text, plain_text,
                "{model}, {name}, turn {index}: drafting changed the reply"
            );
            assert_eq!(stats.generated_tokens, plain_stats.generated_tokens);
            assert_eq!(
                stats.reused_tokens, plain_stats.reused_tokens,
                "{model}, {name}, turn {index}"
            );
            assert!(
                stats.draft.drafted > 0,
                "{model}, {name}, turn {index}: nothing drafted"
            );
            if index > 0 {
                assert!(stats.reused_tokens > 0, "{model}, {name}: turn {index} reused no cache");
            }
        }
        let drafted: usize = turns.iter().map(|(_, s)| s.draft.drafted).sum();
        let accepted: usize = turns.iter().map(|(_, s)| s.draft.accepted).sum();
        match wrong_every {
            Some(0) => assert_eq!(accepted, drafted, "{model}: right drafts must all be kept"),
            Some(_) => assert!(
                accepted > 0 && accepted < drafted,
                "{model}: {accepted} of {drafted} kept"
            ),
            None => {}
        }
        // The last sampled token is evaluated only when another step follows.
        let cached = drafting.cached_tokens();
        assert!(
            expected[2].starts_with(&cached) && expected[2].len() - cached.len() <= 1,
            "{model}, {name}: the cache holds other tokens"
        );
    }
}

#[test]
fn greedy_drafting_changes_nothing_on_glm45_moe() {
    check_model("glm4moe-tiny");
}

#[test]
fn greedy_drafting_changes_nothing_on_glm47_flash() {
    check_model("glm47flash-tiny");
}

/// A reply stopped in the middle of a kept draft (Ctrl-C, or an end-of-turn token) leaves
/// the session able to draft the next turn, with the same text as without drafting.
#[test]
fn a_reply_stopped_inside_a_draft_leaves_drafting_usable() {
    let engine = engine("glm4moe-tiny");
    let stopped_turns = |draft: Option<DraftOptions>| -> Vec<String> {
        let mut session = ChatSession::new(&engine, &options(draft)).expect("session");
        let mut plain = ChatSession::new(&engine, &options(None)).expect("plain");
        let mut texts = Vec::new();
        let mut text = String::from("Stop me early");
        for stop_after in [5, 9, 40] {
            // The oracle drafts what the plain session says, so drafts are kept.
            let (reply, _) = turn(&mut plain, &text);
            let oracle = plain.cached_tokens();
            session.set_draft_oracle(Some(DraftOracle {
                tokens: oracle,
                wrong_every: 0,
            }));
            let tokens = session.tokens_for(&text);
            let mut pieces = 0;
            let mut shown = String::new();
            session
                .respond(&tokens, REPLY_TOKENS, &greedy(), |piece| {
                    pieces += 1;
                    shown.push_str(piece);
                    pieces < stop_after
                })
                .expect("reply after a stopped one");
            assert!(reply.starts_with(&shown), "{shown:?} is not how {reply:?} starts");
            texts.push(shown.clone());
            text = format!("{text}{shown} go on");
            // The plain session continues from the same shortened history.
            plain.clear();
        }
        texts
    };
    assert_eq!(stopped_turns(Some(DraftOptions::default())), stopped_turns(None));
}
