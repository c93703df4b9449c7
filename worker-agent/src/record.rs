//! The ticket records the agent reads back, in every encoding it ever stored them in (the
//! record itself, and the decisions on it, are `contracts`': [`contracts::store::record`],
//! [`contracts::agent`]).

use contracts::store::record::TicketRecord;

/// Reads a stored record, in this version's encoding or the JSON of earlier ones. One that
/// cannot be read is reported as a fatal completion rather than risking a run.
pub(crate) fn decode_record(raw: &str) -> TicketRecord {
    let decoded: Result<TicketRecord, Box<dyn std::error::Error>> = if raw.starts_with('{') {
        serde_json::from_str(raw).map_err(Into::into)
    } else {
        TicketRecord::decode_compact(raw).map_err(Into::into)
    };
    decoded.unwrap_or_else(|error| {
        tracing::error!(%error, "unreadable ticket record; reporting it as failed");
        TicketRecord::unreadable()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::agent::{check_same_command, reported_state};
    use contracts::store::record::RecordState;
    use contracts::wire::error::ErrorKind;
    use contracts::wire::exit_code;
    use contracts::wire::status::ScriptState;

    fn digest() -> String {
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into()
    }

    #[test]
    fn records_written_as_json_by_earlier_versions_are_still_read() {
        // Exactly as the previous version stored them (serde_json of this struct).
        let running = r#"{"owner":"web-01/0b6c1e2a-1111-4222-8333-944455556666","agent_id":"web-01","digest":"2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","state":"Running","exit_code":null,"tombstone":false,"not_after":1790000000000,"claimed_at":1789999999000}"#;
        let read = decode_record(running);
        assert_eq!(read.state, RecordState::Running);
        assert_eq!(
            (read.agent_id.as_str(), read.not_after, read.claimed_at),
            ("web-01", Some(1_790_000_000_000), 1_789_999_999_000)
        );
        assert!(check_same_command(&read, &digest()).is_ok());
        let tombstone = r#"{"owner":"web-01/x","agent_id":"web-01","digest":"2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","state":"Complete","exit_code":3,"tombstone":true,"not_after":null,"claimed_at":1}"#;
        let read = decode_record(tombstone);
        assert_eq!(reported_state(Some(&read), false), (ScriptState::Complete, Some(3)));
        assert_eq!(check_same_command(&read, "e").unwrap_err().kind, ErrorKind::TicketConflict);
    }

    #[test]
    fn unreadable_records_report_failure_not_a_rerun() {
        for raw in ["{not json", "2|r|x", "2|q|||1|d|a|a/1", "2|t|three|d", ""] {
            let r = decode_record(raw);
            assert_eq!(reported_state(Some(&r), false), (ScriptState::Complete, Some(exit_code::FATAL)), "{raw:?}");
        }
    }
}
