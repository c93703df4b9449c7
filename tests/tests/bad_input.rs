//! Bad input gets a precise answer, is dead-lettered where it cannot be served, and the agent
//! keeps serving. Each test taps the dead-letter exchange with a queue of its own.

use contracts::wire::envelope::Reply;
use contracts::wire::error::ErrorKind;
use contracts::wire::messages::SERVICE_SCRIPT_V2;
use serde_json::json;
use std::time::Duration;
use tests::raw::envelope;
use tests::*;

async fn still_serving(agent: &TestAgent) {
    let orchestrator = orchestrator().await;
    let caps = orchestrator
        .capabilities(&agent.route(), contracts::submission::retry::RetryPolicy::new(Duration::from_secs(10)), &|_| {})
        .await;
    assert!(caps.unwrap().supports(SERVICE_SCRIPT_V2), "the agent keeps serving");
}

async fn rejected(what: &str, kind: &str, body: &[u8], expected: ErrorKind, dead_lettered: bool) -> String {
    let agent = TestAgent::start(what).await;
    let mut raw = RawBroker::connect().await;
    let id = raw.publish(agent.id(), kind, body).await;
    let Reply::Error(error) = raw.reply(&id).await else { panic!("expected an error reply") };
    assert_eq!(error.kind, expected, "{error}");
    if dead_lettered {
        let dead = raw.dead_letter(&id).await;
        assert_eq!(dead.reason.as_deref(), Some("rejected"));
    }
    still_serving(&agent).await;
    raw.close().await;
    agent.stop().await;
    error.message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_msgpack_is_refused_as_invalid_and_dead_lettered() {
    let message = rejected("malformed", "StartScriptV2", &[0xc1, 0xff, 0x00, 0x93], ErrorKind::Invalid, true).await;
    assert!(message.contains("malformed"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_field_is_named_in_the_error() {
    let body = envelope("StartScriptV2", json!({"ticket": "t-1"}));
    let message = rejected("missing", "StartScriptV2", &body, ErrorKind::Invalid, true).await;
    assert!(message.contains("script"), "the missing field is named: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kind_is_answered_unsupported() {
    let body = envelope("LaunchRocketV9", json!({"fuel": 1}));
    let message = rejected("unknown-kind", "LaunchRocketV9", &body, ErrorKind::Unsupported, false).await;
    assert!(message.contains("LaunchRocketV9"), "{message}");
}

// A message over the size limit: tests/tests/hostile.rs, on a broker of its own that lets one
// through (the shared broker may refuse it, as Cuttle's broker config does).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ticket_is_refused_as_invalid() {
    let body = envelope("GetStatusV2", json!({"ticket": "no spaces allowed", "last_log_sequence": 0}));
    let message = rejected("bad-ticket", "GetStatusV2", &body, ErrorKind::Invalid, true).await;
    assert!(message.contains("ticket"), "{message}");
}
