//! How a submission ended (see [`contracts::submission::outcome`]), tested here with the dispatcher's errors.

pub use contracts::submission::outcome::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RpcError;
    use contracts::wire::exit_code;

    #[test]
    fn script_codes_pass_through_and_agent_codes_map_to_distinct_exits() {
        let t = edge::entropy::ticket();
        assert_eq!(Outcome::from_exit_code(t.clone(), "a", 3).process_exit, 3);
        assert_eq!(Outcome::from_exit_code(t.clone(), "a", 3).outcome, OutcomeKind::Completed);
        let codes = [
            exit_code::CANCELLED,
            exit_code::UNKNOWN_RESULT,
            exit_code::UNKNOWN_TICKET,
            exit_code::EXECUTION_TIMEOUT,
            exit_code::MUTEX_TIMEOUT,
            exit_code::FATAL,
        ];
        let exits: std::collections::HashSet<u8> =
            codes.iter().map(|&c| Outcome::from_exit_code(t.clone(), "a", c).process_exit).collect();
        assert_eq!(exits.len(), codes.len());
        assert!(exits.iter().all(|e| (101..=110).contains(e)));
    }

    #[test]
    fn errors_after_the_start_leave_the_outcome_unknown() {
        let lost = RpcError::ConnectionLost("reset".into());
        assert_eq!(Outcome::from_error(None, "a", &lost, String::new(), true).outcome, OutcomeKind::Unknown);
        assert_eq!(Outcome::from_error(None, "a", &lost, String::new(), false).process_exit, exit::NO_ANSWER);
        let unroutable = RpcError::Unroutable { target: "a".into() };
        assert_eq!(Outcome::from_error(None, "a", &unroutable, String::new(), false).process_exit, exit::NO_SUCH_AGENT);
    }

    #[test]
    fn an_unknown_ticket_after_a_cancel_is_cancelled_only_when_its_start_was_sent() {
        let unknown = Outcome::from_exit_code(edge::entropy::ticket(), "a", exit_code::UNKNOWN_TICKET);
        assert_eq!(unknown.clone().after_cancel(false).process_exit, exit::UNKNOWN_TICKET);
        let cancelled = unknown.after_cancel(true);
        assert_eq!((cancelled.outcome, cancelled.process_exit), (OutcomeKind::Cancelled, exit::CANCELLED));
        let ran = Outcome::from_exit_code(edge::entropy::ticket(), "a", 0);
        assert_eq!(ran.clone().after_cancel(true), ran);
        assert_eq!(Outcome::not_sent(None, "a").process_exit, exit::NOT_SENT);
    }
}
