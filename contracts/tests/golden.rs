//! Golden fixtures pinning the wire format both ways: what this code writes is read by a legacy
//! reader that knows fewer fields, and what a legacy writer (or a newer one, with fields and
//! enum values this code does not know) wrote is read by this code.
//!
//! `UPDATE_GOLDEN=1 cargo test -p contracts --test golden` rewrites the fixtures of the current
//! format; do that only for a deliberate, compatible change.

use contracts::entropy;
use contracts::wire::envelope::{request_digest, Envelope, InReplyTo, Reply, Request, PROTOCOL_VERSION};
use contracts::wire::error::{CodecError, ErrorKind};
use contracts::wire::exit_code;
use contracts::wire::messages::{
    CancelScriptV1, CompleteScriptV2, Isolation, ScriptFile, ScriptSpec, Secrets, Shell, StartScriptV2,
};
use contracts::wire::status::{LogLine, LogStream, ScriptState, ScriptStatus};
use contracts::wire::ticket::Ticket;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

/// Compares `bytes` with the fixture (or writes it with UPDATE_GOLDEN=1).
fn pinned(name: &str, bytes: &[u8]) {
    let path = fixture(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, bytes).unwrap();
    }
    let expected =
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(expected == bytes, "the wire format of {name} changed; old readers may not read it");
}

fn current_start() -> Envelope<StartScriptV2> {
    Envelope {
        version: PROTOCOL_VERSION,
        kind: "StartScriptV2".into(),
        message_id: "00000000-0000-4000-8000-000000000001".into(),
        target: "web-01".into(),
        issued_at: 1_795_000_000_000,
        not_after: Some(1_795_000_150_000),
        key_share: None,
        in_reply_to: None,
        body: StartScriptV2 {
            ticket: Ticket::parse("4f1c6a1e-0000-4000-8000-00000000abcd").unwrap(),
            spec: ScriptSpec {
                script: "echo hi".into(),
                shell: Shell::Bash,
                args: vec!["--fast".into()],
                env: BTreeMap::from([("STAGE".into(), "prod".into())]),
                files: vec![ScriptFile { name: "app.conf".into(), content: b"k=v".to_vec() }],
                isolation: Isolation::Full,
                mutex_name: Some("db".into()),
                mutex_timeout: Some(30_000),
                execution_timeout: Some(600_000),
                secret_env: Secrets::default(),
                sealed_secret_env: Vec::new(),
                run_as: None,
                limits: Default::default(),
                purpose: None,
                submitter: None,
                approvals: Vec::new(),
            },
            wait_for_output: Some(500),
            first_issued_at: Some(1_795_000_000_000),
        },
    }
}

/// The first version of the start, as a legacy reader and writer knew it.
mod legacy {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Envelope<B> {
        pub version: u16,
        pub kind: String,
        pub message_id: String,
        pub target: String,
        pub issued_at: u64,
        pub not_after: Option<u64>,
        pub body: B,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct StartScriptV2 {
        pub ticket: String,
        pub script: String,
        pub shell: String,
        pub args: Vec<String>,
        pub env: BTreeMap<String, String>,
        pub isolation: String,
        pub mutex_name: Option<String>,
        pub mutex_timeout: Option<u64>,
        pub execution_timeout: Option<u64>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct LogLine {
        pub seq: u64,
        pub stream: String,
        pub text: String,
        pub at: u64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct ScriptStatus {
        pub ticket: String,
        pub state: String,
        pub exit_code: Option<i32>,
        pub logs: Vec<LogLine>,
        pub next_log_sequence: u64,
    }
}

#[test]
fn the_current_start_is_pinned() {
    pinned("start_v2_current.msgpack", &current_start().encode().unwrap());
}

#[test]
fn a_start_with_secrets_is_pinned_and_a_legacy_reader_ignores_them() {
    let mut start = current_start();
    start.body.spec.secret_env = Secrets::new(BTreeMap::from([("TOKEN".into(), "s3cret".into())]));
    let bytes = start.encode().unwrap();
    pinned("start_v2_secrets.msgpack", &bytes);
    let old: legacy::Envelope<legacy::StartScriptV2> = rmp_serde::from_slice(&bytes).expect("legacy reader");
    assert_eq!(old.body.env, BTreeMap::from([("STAGE".into(), "prod".into())]), "secrets are not in env");
    let Request::StartScriptV2(read) = Request::decode(&bytes).unwrap().1 else { panic!("a start") };
    assert_eq!(read.spec.secret_env, start.body.spec.secret_env);
}

#[test]
fn a_legacy_reader_reads_the_current_start_ignoring_fields_it_does_not_know() {
    let bytes = std::fs::read(fixture("start_v2_current.msgpack")).unwrap();
    let old: legacy::Envelope<legacy::StartScriptV2> = rmp_serde::from_slice(&bytes).expect("legacy reader");
    assert_eq!(old.body.script, "echo hi");
    assert_eq!(old.body.shell, "Bash");
    assert_eq!(old.body.isolation, "Full");
    assert_eq!(old.body.execution_timeout, Some(600_000));
}

fn legacy_start() -> legacy::Envelope<legacy::StartScriptV2> {
    legacy::Envelope {
        version: 1,
        kind: "StartScriptV2".into(),
        message_id: "00000000-0000-4000-8000-000000000002".into(),
        target: "web-01".into(),
        issued_at: 1_700_000_000_000,
        not_after: None,
        body: legacy::StartScriptV2 {
            ticket: "legacy-ticket-1".into(),
            script: "echo old".into(),
            shell: "Sh".into(),
            args: vec![],
            env: BTreeMap::new(),
            isolation: "None".into(),
            mutex_name: None,
            mutex_timeout: None,
            execution_timeout: None,
        },
    }
}

#[test]
fn the_current_reader_reads_a_legacy_start_with_defaults_for_newer_fields() {
    pinned("start_v2_legacy.msgpack", &rmp_serde::to_vec_named(&legacy_start()).unwrap());
    let bytes = std::fs::read(fixture("start_v2_legacy.msgpack")).unwrap();
    let (header, request) = Request::decode(&bytes).expect("current reader");
    assert_eq!(header.version, 1);
    let Request::StartScriptV2(start) = request else { panic!("a start") };
    assert_eq!(start.ticket, Ticket::parse("legacy-ticket-1").unwrap());
    assert_eq!(start.spec.script, "echo old");
    assert!(start.spec.files.is_empty());
    assert_eq!((start.wait_for_output, start.first_issued_at), (None, None));
}

#[test]
fn the_current_reader_reads_a_newer_message_with_unknown_fields_and_values() {
    // A status from a newer agent: an extra envelope field, an extra body field, and enum values
    // this code does not know.
    let newer = serde_json::json!({
        "version": 9, "kind": "ScriptStatus", "message_id": "m", "target": "web-01", "issued_at": 1,
        "trace_id": "abc",
        "body": {
            "ticket": "t-1", "state": "Paused", "exit_code": null, "next_log_sequence": 2, "priority": 5,
            "logs": [{"seq": 1, "stream": "Debug", "text": "x", "at": 1, "colour": "red"}],
        },
    });
    let bytes = rmp_serde::to_vec_named(&newer).unwrap();
    pinned("status_future.msgpack", &bytes);
    let Reply::ScriptStatus(status) = Reply::decode(&bytes).expect("current reader") else { panic!("a status") };
    assert_eq!(status.state, ScriptState::Unknown);
    assert_eq!(status.logs[0].stream, LogStream::Unknown);
    assert_eq!(status.next_log_sequence, 2);
    assert_eq!(status.lines_written, None, "a writer that does not send it");
}

#[test]
fn an_answer_naming_its_request_is_pinned_and_read_by_a_reader_that_predates_it() {
    let status = ScriptStatus {
        ticket: Ticket::parse("4f1c6a1e-0000-4000-8000-00000000abcd").unwrap(),
        state: ScriptState::Complete,
        exit_code: Some(0),
        logs: vec![LogLine { seq: 1, stream: LogStream::Stdout, text: "hi".into(), at: 7 }],
        next_log_sequence: 2,
        lines_written: Some(1),
    };
    let request = current_start().encode().unwrap();
    let named = InReplyTo::new(request_digest(&request), Some(status.ticket.clone()));
    let mut answer: Envelope<ScriptStatus> = Envelope {
        version: PROTOCOL_VERSION,
        kind: "ScriptStatus".into(),
        message_id: "00000000-0000-4000-8000-000000000005".into(),
        target: "web-01".into(),
        issued_at: 1_795_000_000_100,
        not_after: None,
        key_share: None,
        in_reply_to: Some(named.clone()),
        body: status.clone(),
    };
    let bytes = answer.encode().unwrap();
    pinned("status_answering_v1.msgpack", &bytes);
    let (header, reply) = Reply::decode_with_header(&bytes).unwrap();
    assert_eq!((header.in_reply_to, reply), (Some(named), Reply::ScriptStatus(status.clone())));
    // A dispatcher of the release before reads it as it read every answer.
    let old: legacy::Envelope<legacy::ScriptStatus> = rmp_serde::from_slice(&bytes).expect("legacy reader");
    assert_eq!((old.body.state.as_str(), old.body.exit_code), ("Complete", Some(0)));
    // And an answer of that release (naming nothing) reads with no request named.
    answer.in_reply_to = None;
    let (header, _) = Reply::decode_with_header(&answer.encode().unwrap()).unwrap();
    assert_eq!(header.in_reply_to, None);
}

#[test]
fn a_legacy_reader_reads_the_current_status() {
    let status = ScriptStatus {
        ticket: Ticket::parse("t-1").unwrap(),
        state: ScriptState::Complete,
        exit_code: Some(exit_code::UNKNOWN_RESULT),
        logs: vec![LogLine { seq: 1, stream: LogStream::Agent, text: "lost".into(), at: 7 }],
        next_log_sequence: 2,
        lines_written: Some(3),
    };
    let bytes = Reply::ScriptStatus(status.clone()).encode("web-01", 1, &mut entropy::Seeded::new(1)).unwrap();
    let old: legacy::Envelope<legacy::ScriptStatus> = rmp_serde::from_slice(&bytes).expect("legacy reader");
    assert_eq!((old.body.state.as_str(), old.body.exit_code), ("Complete", Some(-46)));
    assert_eq!(old.body.logs[0].text, "lost");
    assert_eq!(old.body.next_log_sequence, 2, "lines the store lost are a field of their own, not a position");
    let Reply::ScriptStatus(read) = Reply::decode(&bytes).unwrap() else { panic!("a status") };
    assert_eq!(read, status);
    // Without it (an agent that does not record it) nothing more is written than before.
    let unrecorded = ScriptStatus { lines_written: None, ..status };
    let bytes = Reply::ScriptStatus(unrecorded).encode("web-01", 1, &mut entropy::Seeded::new(2)).unwrap();
    let fields = rmp_serde::from_slice::<legacy::Envelope<BTreeMap<String, serde_json::Value>>>(&bytes).unwrap().body;
    assert!(!fields.contains_key("lines_written"), "{fields:?}");
}

#[test]
fn a_future_kind_is_reported_as_unknown_not_misread() {
    let future = serde_json::json!({"version": 9, "kind": "StartScriptV3", "message_id": "m", "target": "x", "issued_at": 1, "body": {}});
    let error = Request::decode(&rmp_serde::to_vec_named(&future).unwrap()).unwrap_err();
    assert!(matches!(error, CodecError::UnknownKind(ref k) if k == "StartScriptV3"));
    assert_eq!(error.reply_kind(), ErrorKind::Unsupported);
}

#[test]
fn announcements_are_pinned_and_a_newer_writers_fields_are_ignored() {
    use contracts::wire::presence::{Announcement, ANNOUNCEMENT_VERSION};
    let announcement = Announcement {
        version: ANNOUNCEMENT_VERSION,
        agent_id: "web-01".into(),
        pool: Some("web".into()),
        labels: BTreeMap::from([("env".into(), "prod".into()), ("role".into(), "web".into())]),
        agent_version: "0.1.0".into(),
        services: vec!["capabilities/v1".into(), "script/v2".into()],
        running_scripts: 2,
        interval_ms: 10_000,
        at: 1_795_000_000_000,
        leaving: false,
    };
    let bytes = announcement.encode().unwrap();
    pinned("announcement_v1.msgpack", &bytes);
    assert_eq!(Announcement::decode(&bytes).unwrap(), announcement);
    let mut newer = serde_json::to_value(&announcement).unwrap();
    newer["zone"] = "eu-west".into();
    newer["version"] = 2.into();
    let read = Announcement::decode(&rmp_serde::to_vec_named(&newer).unwrap()).expect("current reader");
    assert_eq!(read.labels, announcement.labels);
}

#[test]
fn transfer_messages_are_pinned_and_read_back() {
    use contracts::wire::transfer::*;
    let header = |kind: &str| Envelope {
        version: PROTOCOL_VERSION,
        kind: kind.into(),
        message_id: "00000000-0000-4000-8000-000000000003".into(),
        target: "web-01".into(),
        issued_at: 1_795_000_000_000,
        not_after: Some(1_795_000_010_000),
        key_share: None,
        in_reply_to: None,
        body: (),
    };
    let sha256 = "ab".repeat(32);
    let upload = UploadChunk {
        path: "releases/app.tgz".into(),
        size: 5,
        sha256: sha256.clone(),
        offset: 2,
        data: b"llo".to_vec(),
        run_as: None,
    };
    let bytes = header("UploadChunk").with_body(&upload).encode().unwrap();
    pinned("upload_chunk_v1.msgpack", &bytes);
    assert_eq!(Request::decode(&bytes).unwrap().1, Request::UploadChunk(upload));
    let download = DownloadChunk {
        path: "/srv/app/log.txt".into(),
        offset: 1_048_576,
        length: 1_048_576,
        digest: false,
        run_as: None,
    };
    let bytes = header("DownloadChunk").with_body(&download).encode().unwrap();
    pinned("download_chunk_v1.msgpack", &bytes);
    assert_eq!(Request::decode(&bytes).unwrap().1, Request::DownloadChunk(download));
    let status = TransferStatus { confirmed: 3, complete: false };
    let bytes = header("TransferStatus").with_body(&status).encode().unwrap();
    pinned("transfer_status_v1.msgpack", &bytes);
    assert_eq!(Reply::decode(&bytes).unwrap(), Reply::TransferStatus(status));
    let chunk = FileChunk { size: 5, sha256: Some(sha256), offset: 0, data: b"hello".to_vec() };
    let bytes = header("FileChunk").with_body(&chunk).encode().unwrap();
    pinned("file_chunk_v1.msgpack", &bytes);
    assert_eq!(Reply::decode(&bytes).unwrap(), Reply::FileChunk(chunk.clone()));
    // A newer writer's extra field is ignored; a chunk past the file's size is refused.
    let mut newer = serde_json::to_value(header("FileChunk").with_body(&chunk)).unwrap();
    newer["body"]["mtime"] = 7.into();
    assert!(matches!(Reply::decode(&rmp_serde::to_vec_named(&newer).unwrap()).unwrap(), Reply::FileChunk(_)));
    let past = UploadChunk {
        path: "a".into(),
        size: 1,
        sha256: "ab".repeat(32),
        offset: 1,
        data: b"x".to_vec(),
        run_as: None,
    };
    let bytes = header("UploadChunk").with_body(&past).encode().unwrap();
    assert!(matches!(Request::decode(&bytes), Err(CodecError::Invalid(_))));
}

#[test]
fn the_v1_cancel_is_pinned_and_read_back_by_a_reader_of_v1_requests() {
    let cancel = Envelope {
        version: PROTOCOL_VERSION,
        kind: "CancelScriptV1".into(),
        message_id: "00000000-0000-4000-8000-000000000004".into(),
        target: "web-01".into(),
        issued_at: 1_795_000_000_000,
        not_after: Some(1_795_000_030_000),
        key_share: None,
        in_reply_to: None,
        body: CancelScriptV1 { ticket: Ticket::parse("legacy-ticket-1").unwrap(), last_log_sequence: 12 },
    };
    let bytes = cancel.encode().unwrap();
    pinned("cancel_v1.msgpack", &bytes);
    assert_eq!(Request::decode(&bytes).unwrap().1, Request::CancelScriptV1(cancel.body.clone()));
    // Shaped like the v1 status request (ticket and position) an old reader already knows.
    #[derive(Deserialize)]
    struct V1Request {
        ticket: String,
        last_log_sequence: u64,
    }
    let old: legacy::Envelope<V1Request> = rmp_serde::from_slice(&bytes).expect("legacy reader");
    assert_eq!(
        (old.kind.as_str(), old.body.ticket.as_str(), old.body.last_log_sequence),
        ("CancelScriptV1", "legacy-ticket-1", 12)
    );
    // A writer that leaves the position out (as a bare cancel would) is read with position 0.
    let bare = serde_json::json!({"version": 1, "kind": "CancelScriptV1", "message_id": "m", "target": "web-01", "issued_at": 1, "body": {"ticket": "legacy-ticket-1"}});
    let Request::CancelScriptV1(read) = Request::decode(&rmp_serde::to_vec_named(&bare).unwrap()).unwrap().1 else {
        panic!("a v1 cancel")
    };
    assert_eq!(read.last_log_sequence, 0);
}

/// A session offer (and acceptance) is one more envelope field, `key_share`: a reader from before
/// sessions decodes the message without it, and a message without a share is byte for byte what
/// it was (the golden files above).
#[test]
fn a_key_share_is_a_field_that_readers_from_before_sessions_ignore() {
    #[derive(Deserialize)]
    struct BeforeSessions {
        kind: String,
        target: String,
        not_after: Option<u64>,
        body: StartScriptV2,
    }
    let mut offering = current_start();
    offering.key_share = Some(serde_bytes::ByteBuf::from(vec![7; 32]));
    let bytes = offering.encode().unwrap();
    let before: BeforeSessions = rmp_serde::from_slice(&bytes).expect("an old reader reads it");
    assert_eq!((before.kind.as_str(), before.target.as_str()), ("StartScriptV2", "web-01"));
    assert_eq!((before.not_after, before.body), (offering.not_after, offering.body.clone()));
    let (header, request) = Request::decode(&bytes).unwrap();
    assert_eq!(header.key_share.as_deref().map(|s| &s[..]), Some(&[7u8; 32][..]));
    assert_eq!(request, Request::StartScriptV2(offering.body));
    let plain = current_start().encode().unwrap();
    assert!(bytes.len() > plain.len() && !String::from_utf8_lossy(&plain).contains("key_share"));
}

#[test]
fn a_batched_complete_is_pinned_a_single_one_is_unchanged_and_a_reader_before_batches_completes_the_first() {
    let complete = |more: Vec<Ticket>| Envelope {
        version: PROTOCOL_VERSION,
        kind: "CompleteScriptV2".into(),
        message_id: "00000000-0000-4000-8000-000000000005".into(),
        target: "web-01".into(),
        issued_at: 1_795_000_000_000,
        not_after: Some(1_795_000_030_000),
        key_share: None,
        in_reply_to: None,
        body: CompleteScriptV2 { ticket: Ticket::parse("ticket-1").unwrap(), more },
    };
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct FirstComplete {
        ticket: String,
    }
    let first = legacy::Envelope {
        version: PROTOCOL_VERSION,
        kind: "CompleteScriptV2".to_owned(),
        message_id: "00000000-0000-4000-8000-000000000005".into(),
        target: "web-01".into(),
        issued_at: 1_795_000_000_000,
        not_after: Some(1_795_000_030_000),
        body: FirstComplete { ticket: "ticket-1".into() },
    };
    // One ticket: the very bytes of the complete every agent has read.
    assert_eq!(complete(Vec::new()).encode().unwrap(), rmp_serde::to_vec_named(&first).unwrap());
    let batch = complete(vec![Ticket::parse("ticket-2").unwrap(), Ticket::parse("ticket-3").unwrap()]);
    let bytes = batch.encode().unwrap();
    pinned("complete_batch_v2.msgpack", &bytes);
    let Request::CompleteScriptV2(read) = Request::decode(&bytes).unwrap().1 else { panic!("not a complete") };
    let tickets: Vec<&str> = read.tickets().map(Ticket::as_str).collect();
    assert_eq!(tickets, ["ticket-1", "ticket-2", "ticket-3"]);
    // An agent from before batches reads it as the complete of its first ticket: a dispatcher
    // sends batches only to agents that list complete-batch/v1.
    let old: legacy::Envelope<FirstComplete> = rmp_serde::from_slice(&bytes).expect("legacy reader");
    assert_eq!(old.body, first.body);
}
