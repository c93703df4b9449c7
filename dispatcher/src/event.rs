//! The JSON events the dispatcher writes, one type for every writer and reader: a line each under
//! `--json`, an entry each in the journal's event stream (`status TICKET` and the web view read
//! them back), a server-sent event each. A reader deserializes into [`JsonEvent`]; nothing reads
//! `event["…"]` by hand.
//!
//! The text is what the dispatcher has always written: keys in alphabetical order (serde_json's
//! map, without `preserve_order`), `null` for an absent exit code or error. The journal's entries
//! of earlier releases are the same JSON, so they read back as they are. `dispatcher/tests/
//! fixtures/events.jsonl` pins one line per kind (and per optional field), both ways.

use crate::fanout::NotStarted;
use crate::orchestrator::Event;
use contracts::submission::outcome::{Outcome, OutcomeKind};
use contracts::wire::status::LogLine;
use contracts::wire::ticket::Ticket;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One event, tagged by its `event` field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JsonEvent {
    /// The ticket chosen for the script, before anything is sent.
    Ticket { ticket: Ticket, target: String },
    /// A line of output: `stdout`, `stderr`, or `agent` for the agent's own notes.
    Log {
        seq: u64,
        stream: String,
        text: String,
        /// Unix milliseconds when the agent read the line.
        at: u64,
        /// With several targets, the one the line is from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// A request failed and is repeated.
    Retry {
        /// The request's kind, e.g. `StartScriptV2`.
        request: String,
        attempt: u32,
        delay_ms: u64,
        time_left_ms: u64,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// What the user should know.
    Notice {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// What the user should worry about.
    Warning {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// Where a ticket stands (`status TICKET` without `--follow`).
    Status { ticket: Ticket, target: String, state: String },
    /// How a script ended: the last event of a ticket.
    Result {
        /// None when the script ended before it had one (interrupted before it was sent).
        ticket: Option<Ticket>,
        target: String,
        outcome: OutcomeKind,
        exit_code: Option<i32>,
        error: Option<String>,
        /// Whether the agent kept only part of the output (`--json` only; the journal has none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_truncated: Option<bool>,
    },
    /// The live agents `--select` matched, and the announcements not believed.
    Selected { select: String, targets: Vec<String>, ignored: IgnoredAnnouncements },
    /// A target of a fan-out that was never started.
    Skipped { target: String, reason: NotStarted },
    /// The last line of a fan-out.
    Summary { targets: usize, failed: usize, skipped: usize },
}

/// Announcements not believed while reading the live fleet, by why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredAnnouncements {
    pub forged: usize,
    pub unpinned: usize,
    pub invalid: usize,
}

impl JsonEvent {
    /// What happened during a submission, as an event.
    pub fn from_event(event: &Event) -> JsonEvent {
        match event {
            Event::Ticket { ticket, target } => JsonEvent::Ticket { ticket: ticket.clone(), target: target.clone() },
            Event::Log(line) => JsonEvent::log(line),
            Event::Retry { request, notice } => JsonEvent::Retry {
                request: request.as_str().to_owned(),
                attempt: notice.attempt,
                delay_ms: notice.delay.as_millis() as u64,
                time_left_ms: notice.time_left.as_millis() as u64,
                error: notice.error.to_string(),
                target: None,
            },
            Event::Notice(message) => JsonEvent::Notice { message: message.clone(), target: None },
            Event::Warning(message) => JsonEvent::Warning { message: message.clone(), target: None },
        }
    }

    /// A line of output.
    pub fn log(line: &LogLine) -> JsonEvent {
        JsonEvent::Log {
            seq: line.seq,
            stream: line.stream.name().to_owned(),
            text: line.text.clone(),
            at: line.at,
            target: None,
        }
    }

    /// How a submission ended; `output_truncated` only where it is known (`--json`).
    pub fn result(outcome: &Outcome, output_truncated: Option<bool>) -> JsonEvent {
        JsonEvent::Result {
            ticket: outcome.ticket.clone(),
            target: outcome.target.clone(),
            outcome: outcome.outcome,
            exit_code: outcome.exit_code,
            error: outcome.error.clone(),
            output_truncated,
        }
    }

    /// The same event said of `name` (one target among several); events about all the targets
    /// (`selected`, `summary`) stay as they are.
    pub fn with_target(mut self, name: &str) -> JsonEvent {
        match &mut self {
            JsonEvent::Ticket { target, .. }
            | JsonEvent::Status { target, .. }
            | JsonEvent::Result { target, .. }
            | JsonEvent::Skipped { target, .. } => *target = name.to_owned(),
            JsonEvent::Log { target, .. }
            | JsonEvent::Retry { target, .. }
            | JsonEvent::Notice { target, .. }
            | JsonEvent::Warning { target, .. } => *target = Some(name.to_owned()),
            JsonEvent::Selected { .. } | JsonEvent::Summary { .. } => {}
        }
        self
    }

    /// The `event` field: the kind's name, and the server-sent event's type.
    pub fn name(&self) -> &'static str {
        match self {
            JsonEvent::Ticket { .. } => "ticket",
            JsonEvent::Log { .. } => "log",
            JsonEvent::Retry { .. } => "retry",
            JsonEvent::Notice { .. } => "notice",
            JsonEvent::Warning { .. } => "warning",
            JsonEvent::Status { .. } => "status",
            JsonEvent::Result { .. } => "result",
            JsonEvent::Selected { .. } => "selected",
            JsonEvent::Skipped { .. } => "skipped",
            JsonEvent::Summary { .. } => "summary",
        }
    }

    /// The event as one line of JSON (without the newline), keys in alphabetical order.
    pub fn to_line(&self) -> String {
        sorted_json(self)
    }

    /// An event from its JSON text.
    pub fn parse(line: &str) -> Result<JsonEvent, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// `value` as one line of JSON with its keys in alphabetical order at every level: through a
/// map, which keeps its keys sorted, rather than in the fields' order, so the text is what every
/// release has written (with `json!`) and every reader has seen.
pub fn sorted_json(value: &impl Serialize) -> String {
    serde_json::to_value(value).expect("plain data").to_string()
}

impl fmt::Display for JsonEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICKET: &str = "0b6c6e2a-4f1e-4c3a-9d2b-7a5e8f9c1d30";

    /// One event of each kind, and of each optional field, in the fixture's order.
    fn samples() -> Vec<JsonEvent> {
        let ticket = Ticket::parse(TICKET).unwrap();
        let target = "web-01".to_owned();
        vec![
            JsonEvent::Ticket { ticket: ticket.clone(), target: target.clone() },
            JsonEvent::Log {
                seq: 1,
                stream: "stdout".into(),
                text: "hi \"there\"\t\u{1b}[2J é".into(),
                at: 1_700_000_000_123,
                target: None,
            },
            JsonEvent::Log {
                seq: 2,
                stream: "stderr".into(),
                text: "oops".into(),
                at: 1_700_000_000_128,
                target: None,
            }
            .with_target("web-02"),
            JsonEvent::Retry {
                request: "StartScriptV2".into(),
                attempt: 1,
                delay_ms: 250,
                time_left_ms: 149_750,
                error: "no answer within 5s".into(),
                target: None,
            },
            JsonEvent::Notice {
                message: "cancel queued; the agent will stop the script when it returns".into(),
                target: None,
            },
            JsonEvent::Warning {
                message: "ignored an answer not signed by the pinned key of web-01".into(),
                target: None,
            },
            JsonEvent::Status { ticket: ticket.clone(), target: target.clone(), state: "running".into() },
            JsonEvent::Result {
                ticket: Some(ticket.clone()),
                target: target.clone(),
                outcome: OutcomeKind::Completed,
                exit_code: Some(3),
                error: None,
                output_truncated: Some(false),
            },
            JsonEvent::Result {
                ticket: None,
                target: target.clone(),
                outcome: OutcomeKind::Failed,
                exit_code: None,
                error: Some("interrupted before the script was sent; nothing ran".into()),
                output_truncated: Some(false),
            },
            // As the journal records it.
            JsonEvent::Result {
                ticket: Some(ticket),
                target,
                outcome: OutcomeKind::Cancelled,
                exit_code: Some(-2),
                error: Some("cancelled".into()),
                output_truncated: None,
            },
            JsonEvent::Selected {
                select: "role=web".into(),
                targets: vec!["web-01".into(), "web-02".into()],
                ignored: IgnoredAnnouncements { forged: 0, unpinned: 1, invalid: 0 },
            },
            JsonEvent::Skipped { target: "web-03".into(), reason: NotStarted::ErrorBudget },
            JsonEvent::Summary { targets: 3, failed: 1, skipped: 1 },
        ]
    }

    /// The fixture's lines were written by the dispatcher before the events were typed (its
    /// `json!` literals), so matching them proves the text unchanged for every reader.
    #[test]
    fn every_event_is_written_and_read_back_as_the_fixture_pins_it() {
        let fixture = std::fs::read_to_string(crate::golden::path("events.jsonl")).unwrap();
        let lines: Vec<&str> = fixture.lines().collect();
        let samples = samples();
        assert_eq!(lines.len(), samples.len(), "one fixture line per sample");
        for (sample, line) in samples.iter().zip(&lines) {
            assert_eq!(sample.to_line(), *line, "written");
            assert_eq!(&JsonEvent::parse(line).unwrap(), sample, "read back");
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["event"], sample.name(), "the name is the tag");
        }
    }

    #[test]
    fn the_fixture_has_every_kind() {
        // A new kind fails to compile here until it is given a place, then fails below until the
        // fixture has a line of it (and the README, tests/tests/docs.rs).
        const KINDS: usize = 10;
        let mut seen = [false; KINDS];
        for sample in samples() {
            let kind = match sample {
                JsonEvent::Ticket { .. } => 0,
                JsonEvent::Log { .. } => 1,
                JsonEvent::Retry { .. } => 2,
                JsonEvent::Notice { .. } => 3,
                JsonEvent::Warning { .. } => 4,
                JsonEvent::Status { .. } => 5,
                JsonEvent::Result { .. } => 6,
                JsonEvent::Selected { .. } => 7,
                JsonEvent::Skipped { .. } => 8,
                JsonEvent::Summary { .. } => 9,
            };
            seen[kind] = true;
        }
        assert!(seen.iter().all(|&s| s), "every kind has a sample: {seen:?}");
    }

    #[test]
    fn an_event_of_another_kind_or_shape_is_refused() {
        assert!(JsonEvent::parse(r#"{"event":"gossip","message":"hi"}"#).is_err());
        assert!(JsonEvent::parse(r#"{"event":"log","seq":"one","stream":"stdout","text":"","at":0}"#).is_err());
        assert!(JsonEvent::parse(r#"{"event":"ticket","ticket":"../etc","target":"a"}"#).is_err());
    }
}
