//! The dispatcher's submission machine, driven with no I/O: replies, failures, interrupts and
//! the time are inputs.

use contracts::submission::error::{CallError, ErrorClass, Unexpected};
use contracts::submission::follow::{lost_lines_notice, LogFollower};
use contracts::submission::machine::{Action, Config, Event, Input, Now, Submission};
use contracts::submission::negotiate::{AgentKind, ScriptProtocol};
use contracts::submission::outcome::{exit, Outcome, OutcomeKind};
use contracts::submission::requests::PlannedStart;
use contracts::submission::retry::{next_delay, Retry, RetryPolicy, Timing, INITIAL_DELAY, MAX_DELAY};
use contracts::time::short;
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::error::{ErrorKind, ErrorReply};
use contracts::wire::exit_code;
use contracts::wire::messages::{
    Capabilities, Kind, ScriptSpec, Secrets, SERVICE_SCRIPT_V1, SERVICE_SCRIPT_V2, SERVICE_SEALED_SECRETS,
    SERVICE_SECRET_MASKING,
};
use contracts::wire::status::{LogLine, LogStream, ScriptState, ScriptStatus};
use contracts::wire::ticket::Ticket;
use proptest::prelude::*;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
enum TestError {
    Lost,
    Unroutable,
    Agent(ErrorReply),
    Unexpected(Unexpected),
    Unrepeatable(Box<TestError>),
    Cancelled,
}

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestError::Lost => write!(f, "lost the link"),
            TestError::Unroutable => write!(f, "no queue"),
            TestError::Agent(e) => write!(f, "refused: {} ({:?})", e.message, e.kind),
            TestError::Unexpected(reply) => write!(f, "{reply}"),
            TestError::Unrepeatable(error) => write!(f, "{error}"),
            TestError::Cancelled => write!(f, "cancelled by the user"),
        }
    }
}

impl CallError for TestError {
    fn class(&self) -> ErrorClass {
        match self {
            TestError::Unroutable => ErrorClass::NoSuchAgent,
            TestError::Agent(e) => ErrorClass::Agent(e.kind),
            TestError::Cancelled => ErrorClass::Cancelled,
            _ => ErrorClass::Other,
        }
    }
    fn is_transient(&self) -> bool {
        match self {
            TestError::Lost => true,
            TestError::Agent(e) => e.kind.is_transient(),
            _ => false,
        }
    }
    fn unexpected(reply: Unexpected) -> Self {
        TestError::Unexpected(reply)
    }
    fn agent(_: String, error: ErrorReply) -> Self {
        TestError::Agent(error)
    }
    fn unrepeatable(error: Self) -> Self {
        TestError::Unrepeatable(Box::new(error))
    }
    fn cancelled() -> Self {
        TestError::Cancelled
    }
}

type Machine = Submission<TestError>;

fn at(ms: u64) -> Now {
    Now {
        mono: Duration::from_millis(ms),
        wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms),
    }
}

fn config(policy: RetryPolicy) -> Config {
    Config {
        target: "a1".into(),
        shown: "agent a1".into(),
        addressed: "a1".into(),
        capabilities_queue: "cuttle.agent.a1".into(),
        timing: Timing::default(),
        policies: policy.into(),
        v1_only: false,
        known: None,
        seed: 7,
    }
}

fn ticket() -> Ticket {
    Ticket::parse("t-1").unwrap()
}

fn v2() -> Capabilities {
    Capabilities {
        services: vec![
            SERVICE_SCRIPT_V1.into(),
            SERVICE_SCRIPT_V2.into(),
            SERVICE_SECRET_MASKING.into(),
            SERVICE_SEALED_SECRETS.into(),
        ],
        agent_version: "x".into(),
        limits: None,
        approvals: None,
    }
}

fn status(state: ScriptState, exit_code: Option<i32>, lines: std::ops::Range<u64>) -> Reply {
    let logs: Vec<LogLine> =
        lines.clone().map(|seq| LogLine { seq, stream: LogStream::Stdout, text: format!("l{seq}"), at: 0 }).collect();
    let next = logs.last().map_or(1, |l| l.seq + 1).max(lines.start);
    Reply::ScriptStatus(ScriptStatus {
        ticket: ticket(),
        state,
        exit_code,
        logs,
        next_log_sequence: next,
        lines_written: None,
    })
}

/// Polls until the machine needs an input (or is done), collecting what it emitted.
fn until_input(machine: &mut Machine, now: Now, seen: &mut Vec<Action<TestError>>) -> Action<TestError> {
    loop {
        let action = machine.poll(now);
        match action {
            Action::Emit(_) | Action::Learned(_) | Action::LegacyNotice(_) => seen.push(action),
            other => return other,
        }
    }
}

fn call(action: &Action<TestError>) -> (u64, Kind) {
    match action {
        Action::Call { attempt, request, .. } => (*attempt, request.kind()),
        other => panic!("expected a call, got {other:?}"),
    }
}

fn logs(seen: &[Action<TestError>]) -> Vec<u64> {
    seen.iter()
        .filter_map(|a| match a {
            Action::Emit(Event::Log(line)) => Some(line.seq),
            _ => None,
        })
        .collect()
}

/// Capabilities answered; returns the start's attempt.
fn to_start(machine: &mut Machine, seen: &mut Vec<Action<TestError>>) -> u64 {
    assert!(matches!(until_input(machine, at(0), seen), Action::CountConsumers(Kind::GetCapabilities)));
    machine.handle(Input::Consumers(Some(1)), at(0));
    let (attempt, kind) = call(&until_input(machine, at(0), seen));
    assert_eq!(kind, Kind::GetCapabilities);
    machine.handle(Input::Reply { attempt, reply: Reply::Capabilities(v2()) }, at(5));
    let (attempt, kind) = call(&until_input(machine, at(5), seen));
    assert_eq!(kind, Kind::StartScriptV2);
    attempt
}

#[test]
fn a_submission_starts_follows_and_completes_in_order() {
    let policy = RetryPolicy::new(Duration::from_secs(30));
    let mut m = Machine::submit(config(policy), ScriptSpec::default(), ticket(), at(0));
    let mut seen = Vec::new();
    let start = to_start(&mut m, &mut seen);
    assert!(seen.iter().any(|a| matches!(a, Action::Emit(Event::Ticket { ticket: t, .. }) if *t == ticket())));
    m.handle(Input::Reply { attempt: start, reply: status(ScriptState::Running, None, 1..3) }, at(10));
    let (attempt, kind) = call(&until_input(&mut m, at(10), &mut seen));
    assert_eq!(kind, Kind::GetStatusV2);
    // A repeat of line 2 and a new line 3, then the end.
    m.handle(Input::Reply { attempt, reply: status(ScriptState::Complete, Some(3), 2..4) }, at(20));
    let send = until_input(&mut m, at(20), &mut seen);
    assert!(matches!(&send, Action::Send { request: Request::CompleteScriptV2(_), .. }), "{send:?}");
    m.handle(Input::Sent(Ok(())), at(20));
    let Action::Done(outcome) = until_input(&mut m, at(20), &mut seen) else { panic!("not done") };
    assert_eq!((outcome.outcome, outcome.exit_code, outcome.process_exit), (OutcomeKind::Completed, Some(3), 3));
    assert_eq!(logs(&seen), vec![1, 2, 3]);
}

/// The agent's store lost lines 2 and 3 (its list now holds 1, 4, 5): the submission says so,
/// naming them, shows the rest once and in order, and ends with the script's exit code instead
/// of waiting for them forever.
#[test]
fn lines_the_store_lost_are_named_and_the_follow_still_ends() {
    let policy = RetryPolicy::new(Duration::from_secs(30));
    let mut m = Machine::submit(config(policy), ScriptSpec::default(), ticket(), at(0));
    let mut seen = Vec::new();
    let start = to_start(&mut m, &mut seen);
    m.handle(Input::Reply { attempt: start, reply: status(ScriptState::Running, None, 1..2) }, at(10));
    let (attempt, _) = call(&until_input(&mut m, at(10), &mut seen));
    let Reply::ScriptStatus(mut after_loss) = status(ScriptState::Complete, Some(0), 4..6) else { unreachable!() };
    after_loss.logs.insert(0, LogLine { seq: 1, stream: LogStream::Stdout, text: "l1".into(), at: 0 });
    m.handle(Input::Reply { attempt, reply: Reply::ScriptStatus(after_loss) }, at(20));
    assert!(matches!(until_input(&mut m, at(20), &mut seen), Action::Send { .. }));
    m.handle(Input::Sent(Ok(())), at(20));
    let Action::Done(outcome) = until_input(&mut m, at(20), &mut seen) else { panic!("never ended") };
    assert_eq!((outcome.outcome, outcome.exit_code), (OutcomeKind::Completed, Some(0)));
    assert_eq!(logs(&seen), vec![1, 4, 5]);
    let notices: Vec<_> = seen
        .iter()
        .filter_map(|a| match a {
            Action::Emit(Event::Notice(n)) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(notices, [lost_lines_notice(&ticket(), 2, 3).as_str()]);
    assert!(notices[0].starts_with("lines 2 to 3 of ticket t-1 were lost"), "{notices:?}");
}

fn notices(seen: &[Action<TestError>]) -> Vec<String> {
    seen.iter()
        .filter_map(|a| match a {
            Action::Emit(Event::Notice(n)) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

/// Follows a script to its end, its lines coming as `replies` (the start's answer first), each
/// with the count of lines the run recorded once complete; what was shown and the outcome.
fn follow(replies: Vec<(ScriptState, std::ops::Range<u64>, Option<u64>)>) -> (Vec<Action<TestError>>, Outcome) {
    let mut m =
        Machine::submit(config(RetryPolicy::new(Duration::from_secs(30))), ScriptSpec::default(), ticket(), at(0));
    let mut seen = Vec::new();
    let mut attempt = to_start(&mut m, &mut seen);
    for (n, (state, lines, lines_written)) in replies.into_iter().enumerate() {
        let now = at(10 * (n as u64 + 1));
        let exit = (state == ScriptState::Complete).then_some(4);
        let Reply::ScriptStatus(reply) = status(state, exit, lines) else { unreachable!() };
        m.handle(Input::Reply { attempt, reply: Reply::ScriptStatus(ScriptStatus { lines_written, ..reply }) }, now);
        match until_input(&mut m, now, &mut seen) {
            Action::Call { attempt: next, .. } => attempt = next,
            Action::Send { .. } => {
                m.handle(Input::Sent(Ok(())), now);
                let Action::Done(outcome) = until_input(&mut m, now, &mut seen) else { panic!("never ended") };
                return (seen, outcome);
            }
            other => panic!("{other:?}"),
        }
    }
    panic!("never ended: {seen:?}")
}

/// The store lost lines 3 to 5, the script's last, with nothing stored after them (a failover
/// while it ran, its end written to the new master): the completed status says the run wrote
/// 5, and the submission names the missing ones, then ends with the script's own exit code.
#[test]
fn a_lost_tail_is_named_from_the_lines_the_run_wrote() {
    let (seen, outcome) = follow(vec![(ScriptState::Running, 1..3, None), (ScriptState::Complete, 3..3, Some(5))]);
    assert_eq!((outcome.outcome, outcome.exit_code, outcome.process_exit), (OutcomeKind::Completed, Some(4), 4));
    assert_eq!(logs(&seen), vec![1, 2]);
    assert_eq!(notices(&seen), [lost_lines_notice(&ticket(), 3, 5)]);
    assert_eq!(
        notices(&seen)[0],
        "lines 3 to 5 of ticket t-1 were lost by the agent's ticket store (it lost recent writes)"
    );

    // Lost in the middle and at the end, in one reply: both named, in order; one lost line.
    let (seen, _) = follow(vec![(ScriptState::Running, 1..2, None), (ScriptState::Complete, 4..5, Some(5))]);
    assert_eq!(logs(&seen), vec![1, 4]);
    assert_eq!(notices(&seen), [lost_lines_notice(&ticket(), 2, 3), lost_lines_notice(&ticket(), 5, 5)]);
    assert!(notices(&seen)[1].starts_with("line 5 of ticket t-1 was lost"), "{:?}", notices(&seen));

    // Nothing lost: no notice; an agent that does not record the count: none either.
    let (seen, outcome) = follow(vec![(ScriptState::Complete, 1..4, Some(3))]);
    assert_eq!((logs(&seen), notices(&seen).len(), outcome.exit_code), (vec![1, 2, 3], 0, Some(4)));
    let (seen, _) = follow(vec![(ScriptState::Running, 1..3, None), (ScriptState::Complete, 3..3, None)]);
    assert_eq!((logs(&seen), notices(&seen).len()), (vec![1, 2], 0));
}

/// `dispatcher status` of a completed ticket: the lines its own follower passed on (up to the
/// first gap), then the machine names what the store lost and shows the rest.
#[test]
fn following_a_completed_ticket_names_its_lost_lines() {
    let Reply::ScriptStatus(done) = status(ScriptState::Complete, Some(0), 4..5) else { unreachable!() };
    let mut stored = vec![LogLine { seq: 1, stream: LogStream::Stdout, text: "l1".into(), at: 0 }];
    stored.extend(done.logs.clone());
    let done = ScriptStatus { logs: stored, lines_written: Some(6), ..done };
    let mut follower = LogFollower::after(0);
    assert_eq!(follower.accept(&done).len(), 1);
    let config = config(RetryPolicy::new(Duration::from_secs(30)));
    let mut m = Machine::follow(config, ticket(), follower, done, ScriptProtocol::V2, at(0));
    let mut seen = Vec::new();
    let Action::Done(outcome) = until_input(&mut m, at(0), &mut seen) else { panic!("never ended") };
    assert_eq!((outcome.outcome, outcome.exit_code), (OutcomeKind::Completed, Some(0)));
    assert_eq!(logs(&seen), vec![4]);
    assert_eq!(notices(&seen), [lost_lines_notice(&ticket(), 2, 3), lost_lines_notice(&ticket(), 5, 6)]);
}

/// A submission whose user pressed Ctrl-C after its start was published, before any answer:
/// the machine, what it emitted, and the attempt of the cancel it sent.
fn cancelled_before_the_start_answered() -> (Machine, Vec<Action<TestError>>, u64) {
    let mut m =
        Machine::submit(config(RetryPolicy::new(Duration::from_secs(30))), ScriptSpec::default(), ticket(), at(0));
    let mut seen = Vec::new();
    let _start = to_start(&mut m, &mut seen);
    m.handle(Input::Interrupt { published: true }, at(10));
    assert!(matches!(until_input(&mut m, at(10), &mut seen), Action::CountConsumers(Kind::CancelScriptV2)));
    m.handle(Input::Consumers(Some(1)), at(10));
    let (attempt, kind) = call(&until_input(&mut m, at(10), &mut seen));
    assert_eq!(kind, Kind::CancelScriptV2);
    (m, seen, attempt)
}

/// Ctrl-C before the start's answer: the cancel finds the script running (it ran), then the
/// store loses its data (a restart without persistence) and the next status says the ticket is
/// unknown. That is not "nothing ran": the outcome is unknown, and says why (simulator seed
/// 3923).
#[test]
fn a_ticket_the_store_lost_after_it_was_seen_running_has_an_unknown_outcome() {
    let (mut m, mut seen, attempt) = cancelled_before_the_start_answered();
    m.handle(Input::Reply { attempt, reply: status(ScriptState::Running, None, 1..2) }, at(20));
    let (attempt, kind) = call(&until_input(&mut m, at(20), &mut seen));
    assert_eq!(kind, Kind::GetStatusV2);
    let unknown = status(ScriptState::Complete, Some(exit_code::UNKNOWN_TICKET), 2..2);
    m.handle(Input::Reply { attempt, reply: unknown }, at(30));
    let Action::Done(outcome) = until_input(&mut m, at(30), &mut seen) else { panic!("not done") };
    assert_eq!(
        (outcome.outcome, outcome.process_exit, outcome.exit_code),
        (OutcomeKind::Unknown, exit::OUTCOME_UNKNOWN, None)
    );
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.starts_with("the agent's ticket store lost ticket t-1 after the agent had answered for it"),
        "{error}"
    );
    assert_eq!(logs(&seen), vec![1]);
}

#[test]
fn ctrl_c_before_the_start_is_published_sends_nothing_more() {
    let mut m =
        Machine::submit(config(RetryPolicy::new(Duration::from_secs(30))), ScriptSpec::default(), ticket(), at(0));
    let mut seen = Vec::new();
    let start = to_start(&mut m, &mut seen);
    m.handle(Input::Failed { attempt: start, error: TestError::Lost, published: false }, at(10));
    m.handle(Input::Interrupt { published: false }, at(11));
    let Action::Done(outcome) = until_input(&mut m, at(11), &mut seen) else { panic!("not done") };
    assert_eq!(outcome.process_exit, exit::NOT_SENT);
}

#[test]
fn ctrl_c_after_the_start_is_published_cancels_and_an_unknown_ticket_means_nothing_ran() {
    let (mut m, mut seen, attempt) = cancelled_before_the_start_answered();
    let unknown = status(ScriptState::Complete, Some(exit_code::UNKNOWN_TICKET), 1..1);
    m.handle(Input::Reply { attempt, reply: unknown }, at(20));
    // The end is seen: the ticket is completed (its tombstone stays until it expires).
    assert!(matches!(
        until_input(&mut m, at(20), &mut seen),
        Action::Send { request: Request::CompleteScriptV2(_), .. }
    ));
    m.handle(Input::Sent(Ok(())), at(20));
    let Action::Done(outcome) = until_input(&mut m, at(20), &mut seen) else { panic!("not done") };
    assert_eq!((outcome.outcome, outcome.process_exit), (OutcomeKind::Cancelled, exit::CANCELLED));
    assert_eq!(outcome.error.as_deref(), Some("cancelled before the agent started it; nothing ran"));
}

#[test]
fn a_cancel_nobody_consumes_is_queued_and_said_so() {
    let mut m = Machine::cancel(config(RetryPolicy::new(Duration::from_secs(30))), ticket(), ScriptProtocol::V2, at(0));
    let mut seen = Vec::new();
    assert!(matches!(until_input(&mut m, at(0), &mut seen), Action::CountConsumers(Kind::CancelScriptV2)));
    m.handle(Input::Consumers(Some(0)), at(0));
    assert!(matches!(until_input(&mut m, at(0), &mut seen), Action::Send { request: Request::CancelScriptV2(_), .. }));
    m.handle(Input::Sent(Ok(())), at(0));
    let Action::Done(outcome) = until_input(&mut m, at(0), &mut seen) else { panic!("not done") };
    assert_eq!(outcome.process_exit, exit::CANCELLED);
    assert!(outcome.error.unwrap().starts_with("cancel queued"));
}

/// Status requests failing until the policy's deadline (the time is the test's) end the
/// submission as unknown, and the script is left running (no cancel is sent), so that `status
/// --follow` can pick it up; the user is told so.
#[test]
fn lost_contact_after_the_deadline_is_unknown_and_leaves_the_script_running() {
    let policy = RetryPolicy::new(Duration::from_secs(10));
    let mut m = Machine::submit(config(policy), ScriptSpec::default(), ticket(), at(0));
    let mut seen = Vec::new();
    let start = to_start(&mut m, &mut seen);
    m.handle(Input::Reply { attempt: start, reply: status(ScriptState::Running, None, 1..2) }, at(10));
    let mut now = 10;
    let mut retries = 0;
    let end = loop {
        match until_input(&mut m, at(now), &mut seen) {
            Action::Call { attempt, request, reply_timeout, .. } if request.kind() == Kind::GetStatusV2 => {
                assert!(reply_timeout >= Duration::from_secs(1));
                now += 1_000;
                m.handle(Input::Failed { attempt, error: TestError::Lost, published: true }, at(now));
                retries += 1;
            }
            // Milliseconds, rounded up to reach the deadline.
            Action::Sleep(until) => now = until.as_millis() as u64 + 1,
            other => break other,
        }
    };
    assert!(retries > 5, "{retries}");
    assert!((10_010..12_000).contains(&now), "gave up at the deadline, not at {now}");
    let Action::Done(outcome) = end else { panic!("ended with no cancel sent, not with {end:?}") };
    assert_eq!((outcome.outcome, outcome.process_exit), (OutcomeKind::Unknown, exit::OUTCOME_UNKNOWN));
    let error = outcome.error.unwrap();
    assert!(error.starts_with("lost contact with the script"), "{error}");
    assert!(error.contains("not cancelled and may still be running (ticket t-1)"), "{error}");
    let notices = seen.iter().filter(|a| matches!(a, Action::Emit(Event::Retry { .. }))).count();
    assert_eq!(notices, retries - 1);
}

/// A legacy agent's script (v1: status is asked once, never repeated): a lost status reply ends
/// the submission as unknown with the script left running, as for script v2.
#[test]
fn a_legacy_agents_lost_status_reply_leaves_its_script_running() {
    let legacy = Config { known: Some(AgentKind::Legacy), ..config(RetryPolicy::new(Duration::from_secs(30))) };
    let mut m = Machine::submit(legacy, ScriptSpec::default(), ticket(), at(0));
    let mut seen = Vec::new();
    let (attempt, kind) = call(&until_input(&mut m, at(0), &mut seen));
    assert_eq!(kind, Kind::StartScriptV1);
    m.handle(Input::Reply { attempt, reply: status(ScriptState::Running, None, 1..2) }, at(10));
    let (attempt, kind) = call(&until_input(&mut m, at(10), &mut seen));
    assert_eq!(kind, Kind::GetStatusV1);
    m.handle(Input::Failed { attempt, error: TestError::Lost, published: true }, at(20));
    let Action::Done(outcome) = until_input(&mut m, at(20), &mut seen) else { panic!("ended with no cancel sent") };
    assert_eq!((outcome.outcome, outcome.process_exit), (OutcomeKind::Unknown, exit::OUTCOME_UNKNOWN));
    assert!(outcome.error.unwrap().contains("may still be running"));
}

/// A start that got no answer may run, or start later from a copy in the queue: one cancel is
/// sent so that it does not run unwatched, and the outcome says so.
#[test]
fn a_start_that_got_no_answer_is_cancelled_once_and_the_user_is_told() {
    let mut m = Machine::submit(config(RetryPolicy::once()), ScriptSpec::default(), ticket(), at(0));
    let mut seen = Vec::new();
    let start = to_start(&mut m, &mut seen);
    m.handle(Input::Failed { attempt: start, error: TestError::Lost, published: true }, at(10));
    let (attempt, kind) = call(&until_input(&mut m, at(10), &mut seen));
    assert_eq!(kind, Kind::CancelScriptV2);
    m.handle(Input::Reply { attempt, reply: status(ScriptState::Complete, Some(exit_code::CANCELLED), 1..1) }, at(20));
    let Action::Done(outcome) = until_input(&mut m, at(20), &mut seen) else { panic!("not done") };
    assert_eq!(outcome.process_exit, exit::OUTCOME_UNKNOWN);
    assert!(outcome
        .error
        .unwrap()
        .ends_with("a cancel was sent, which the agent took, so that it does not run unwatched"));
}

#[test]
fn a_refused_start_did_not_run_and_a_legacy_start_is_never_repeated() {
    let policy = RetryPolicy::new(Duration::from_secs(30));
    let mut m = Machine::submit(config(policy), ScriptSpec::default(), ticket(), at(0));
    let mut seen = Vec::new();
    let start = to_start(&mut m, &mut seen);
    let refused = TestError::Agent(ErrorReply::new(ErrorKind::TicketConflict, "another spec"));
    m.handle(Input::Failed { attempt: start, error: refused, published: true }, at(10));
    let Action::Done(outcome) = until_input(&mut m, at(10), &mut seen) else { panic!("not done") };
    assert_eq!((outcome.outcome, outcome.process_exit), (OutcomeKind::Failed, exit::REJECTED));

    let legacy = Config { known: Some(AgentKind::Legacy), ..config(policy) };
    let mut m = Machine::submit(legacy, ScriptSpec::default(), ticket(), at(0));
    let mut seen = Vec::new();
    let (attempt, kind) = call(&until_input(&mut m, at(0), &mut seen));
    assert_eq!(kind, Kind::StartScriptV1);
    assert!(seen.iter().any(|a| matches!(a, Action::LegacyNotice(_))));
    m.handle(Input::Failed { attempt, error: TestError::Lost, published: true }, at(10));
    let Action::Done(outcome) = until_input(&mut m, at(10), &mut seen) else { panic!("not done") };
    assert_eq!(outcome.process_exit, exit::OUTCOME_UNKNOWN);
    assert!(outcome.error.unwrap().contains("its outcome is unknown"));
}

/// The first start's reply is lost (it may have claimed and started the script), then every
/// repeat finds the agent's store unavailable until the deadline: "nothing was started" speaks
/// for those repeats only, so the outcome is unknown, not failed (simulator seed 1058570).
#[test]
fn a_start_whose_reply_was_lost_is_not_told_unstarted_by_later_refusals() {
    let mut m =
        Machine::submit(config(RetryPolicy::new(Duration::from_secs(5))), ScriptSpec::default(), ticket(), at(0));
    let mut seen = Vec::new();
    let start = to_start(&mut m, &mut seen);
    m.handle(Input::Failed { attempt: start, error: TestError::Lost, published: true }, at(10));
    let mut now = 10;
    let outcome = loop {
        match until_input(&mut m, at(now), &mut seen) {
            Action::Sleep(until) => now = now.max(until.as_millis() as u64 + 1),
            Action::Call { attempt, request, .. } if request.kind() == Kind::StartScriptV2 => {
                now += 10;
                let reply =
                    ErrorReply::new(ErrorKind::StoreUnavailable, "ticket store unavailable; nothing was started");
                m.handle(Input::Failed { attempt, error: TestError::Agent(reply), published: true }, at(now));
            }
            // The best-effort cancel after it.
            Action::Call { attempt, .. } => {
                m.handle(Input::Failed { attempt, error: TestError::Lost, published: true }, at(now))
            }
            Action::Done(outcome) => break outcome,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((outcome.outcome, outcome.process_exit), (OutcomeKind::Unknown, exit::OUTCOME_UNKNOWN), "{outcome:?}");
}

#[test]
fn secrets_go_only_to_an_agent_that_masks_them() {
    let old = Capabilities {
        services: vec![SERVICE_SCRIPT_V2.into()],
        agent_version: "x".into(),
        limits: None,
        approvals: None,
    };
    let config = Config { known: Some(AgentKind::Current(old)), ..config(RetryPolicy::once()) };
    let spec =
        ScriptSpec { secret_env: Secrets::new([("TOKEN".to_owned(), "x".to_owned())].into()), ..ScriptSpec::default() };
    let mut m = Machine::submit(config, spec, ticket(), at(0));
    let Action::Done(outcome) = until_input(&mut m, at(0), &mut Vec::new()) else { panic!("not done") };
    assert_eq!(outcome.process_exit, exit::REJECTED);
    assert!(outcome.error.unwrap().contains("too old to mask secrets"));
}

#[test]
fn secrets_go_only_to_an_agent_that_opens_them_sealed() {
    let masking = Capabilities {
        services: vec![SERVICE_SCRIPT_V2.into(), SERVICE_SECRET_MASKING.into()],
        agent_version: "x".into(),
        limits: None,
        approvals: None,
    };
    let config = Config { known: Some(AgentKind::Current(masking)), ..config(RetryPolicy::once()) };
    let spec =
        ScriptSpec { secret_env: Secrets::new([("TOKEN".to_owned(), "x".to_owned())].into()), ..ScriptSpec::default() };
    let mut m = Machine::submit(config.clone(), spec, ticket(), at(0));
    let Action::Done(outcome) = until_input(&mut m, at(0), &mut Vec::new()) else { panic!("not done") };
    assert_eq!(outcome.process_exit, exit::REJECTED);
    assert!(outcome.error.unwrap().contains("too old to open secrets sealed to its key"));
    let mut m = Machine::submit(config, ScriptSpec::default(), ticket(), at(0));
    let (_, kind) = call(&until_input(&mut m, at(0), &mut Vec::new()));
    assert_eq!(kind, Kind::StartScriptV2, "without secrets it runs");
}

/// An agent requiring one approval by `ops` (the key of seed 1) for deployments.
fn requiring_approval() -> AgentKind {
    let key = contracts::trust::keys::SecretKey::generate(&mut contracts::entropy::Seeded::new(1)).unwrap();
    let rule = contracts::wire::approvals::RequiredApprovals {
        need: 1,
        approvers: vec![contracts::wire::approvals::Approver { name: "ops".into(), key: key.public().to_string() }],
        purpose: Some("deployment".into()),
        rule: "require 1 of ops for purpose=deployment".into(),
    };
    let mut caps = v2();
    caps.services.push(contracts::wire::messages::SERVICE_APPROVALS.into());
    caps.approvals = Some(vec![rule]);
    AgentKind::Current(caps)
}

#[test]
fn a_command_short_of_approvals_is_not_sent_unless_its_start_was_planned_before() {
    let deployment = ScriptSpec { purpose: Some("deployment".into()), ..ScriptSpec::default() };
    let config = Config { known: Some(requiring_approval()), ..config(RetryPolicy::once()) };
    let mut m = Machine::submit(config.clone(), deployment.clone(), ticket(), at(0));
    let Action::Done(outcome) = until_input(&mut m, at(0), &mut Vec::new()) else { panic!("sent") };
    assert_eq!(outcome.process_exit, exit::REJECTED);
    let error = outcome.error.unwrap();
    assert!(error.contains("requires approvals") && error.contains("nothing was sent"), "{error}");
    let runbook = ScriptSpec { purpose: Some("runbook".into()), ..ScriptSpec::default() };
    let mut m = Machine::submit(config.clone(), runbook, ticket(), at(0));
    assert_eq!(call(&until_input(&mut m, at(0), &mut Vec::new())).1, Kind::StartScriptV2);
    // A planned start may have reached the agent before: the agent judges (it answers a copy of a
    // start it claimed with its status), the dispatcher does not record "nothing was sent".
    let plan = PlannedStart::new(ticket(), RetryPolicy::once(), Timing::default(), at(0).wall);
    let mut m = Machine::run_planned(config, plan, deployment.clone(), 0, at(0));
    assert_eq!(call(&until_input(&mut m, at(0), &mut Vec::new())).1, Kind::StartScriptV2);
}

#[test]
fn an_agent_without_approvals_gets_no_purpose_nor_submitter_and_no_approvals() {
    let spec =
        ScriptSpec { purpose: Some("deployment".into()), submitter: Some("cli:ada".into()), ..Default::default() };
    let mut sent = spec.clone();
    AgentKind::Current(v2()).fit_approvals(&mut sent, "a1", 0).unwrap();
    assert_eq!((sent.purpose, sent.submitter), (None, None));
    let key = contracts::trust::keys::SecretKey::generate(&mut contracts::entropy::Seeded::new(2)).unwrap();
    let approval = contracts::trust::approval::approve(&key, &"ab".repeat(32), 1);
    let mut approved = ScriptSpec { approvals: vec![approval], ..spec.clone() };
    let refused = AgentKind::Legacy.fit_approvals(&mut approved, "a1", 0).unwrap_err();
    assert!(refused.to_string().contains("too old to enforce approvals"), "{refused}");
    let mut runbook = ScriptSpec { purpose: Some("runbook".into()), ..spec };
    requiring_approval().fit_approvals(&mut runbook, "a1", 0).unwrap();
    assert_eq!(runbook.submitter.as_deref(), Some("cli:ada"), "kept for an agent that enforces approvals");
}

#[test]
fn a_planned_start_past_its_deadline_is_only_asked_for() {
    let policy = RetryPolicy::new(Duration::from_secs(30));
    let plan = PlannedStart::new(ticket(), policy, Timing::default(), at(0).wall);
    let config = Config { known: Some(AgentKind::Current(v2())), ..config(policy) };
    let mut m = Machine::run_planned(config, plan, ScriptSpec::default(), 2, at(60_000));
    let (attempt, kind) = call(&until_input(&mut m, at(60_000), &mut Vec::new()));
    assert_eq!(kind, Kind::GetStatusV2);
    let mut seen = Vec::new();
    m.handle(Input::Reply { attempt, reply: status(ScriptState::Complete, Some(0), 3..4) }, at(60_010));
    let Action::Done(outcome) = until_input(&mut m, at(60_010), &mut seen) else { panic!("not done, no complete") };
    assert_eq!(outcome.process_exit, 0);
    assert_eq!(logs(&seen), vec![3]);
}

fn retry_error() -> TestError {
    TestError::Lost
}

#[test]
fn durations_read_as_users_write_them() {
    let cases = [
        (150_000, "2m30s"),
        (3_605_000, "1h5s"),
        (1_500, "1.5s"),
        (2_000, "2s"),
        (300, "300ms"),
        (0, "0ms"),
        (7 * 86_400_000, "7d"),
        (90_000_000, "1d1h"),
    ];
    for (ms, text) in cases {
        assert_eq!(short(Duration::from_millis(ms)), text);
    }
    assert_eq!(short(Duration::from_millis(59_900)), "59s");
    // Computed durations (a timeout cut to a deadline, a jittered delay) read as round ones.
    assert_eq!(short(Duration::new(4, 958_344_974)), "4.9s");
    assert_eq!(short(Duration::new(0, 734_123_456)), "734ms");
    assert_eq!(short(Duration::new(125, 999_999_999)), "2m5s");
}

#[test]
fn full_jitter_stays_under_a_doubling_capped_ceiling() {
    let mut retry = Retry::new(RetryPolicy::new(Duration::from_secs(3_600)), Duration::from_secs(1), Duration::ZERO, 1);
    let mut ceiling = INITIAL_DELAY;
    for _ in 0..20 {
        retry.attempt(Duration::ZERO);
        let notice = retry.failed(retry_error(), Duration::ZERO).unwrap();
        assert!(notice.delay <= ceiling);
        ceiling = (ceiling * 2).min(MAX_DELAY);
    }
}

#[test]
fn permanent_errors_and_disabled_retries_give_up_at_once() {
    let now = Duration::from_secs(5);
    let deadline = now + Duration::from_secs(60);
    let policy = RetryPolicy::new(Duration::from_secs(60));
    let proposed = Duration::from_millis(5);
    assert_eq!(next_delay(&TestError::Unroutable, policy, now, deadline, proposed), None);
    assert_eq!(next_delay(&retry_error(), RetryPolicy::once(), now, deadline, proposed), None);
    assert_eq!(next_delay(&retry_error(), policy, now, deadline, proposed), Some(proposed));
}

#[test]
fn delays_are_cut_to_the_deadline_and_stop_after_it() {
    let now = Duration::from_secs(5);
    let policy = RetryPolicy::new(Duration::from_secs(1));
    let deadline = now + Duration::from_millis(50);
    assert_eq!(
        next_delay(&retry_error(), policy, now, deadline, Duration::from_secs(2)),
        Some(Duration::from_millis(50))
    );
    assert_eq!(next_delay(&retry_error(), policy, deadline, deadline, Duration::from_millis(1)), None);
}

fn caps(services: &[&str]) -> AgentKind {
    AgentKind::Current(Capabilities {
        services: services.iter().map(|s| s.to_string()).collect(),
        agent_version: "x".into(),
        limits: None,
        approvals: None,
    })
}

#[test]
fn the_newest_common_script_service_is_chosen() {
    assert_eq!(AgentKind::Legacy.script_protocol(), Some(ScriptProtocol::V1));
    assert_eq!(caps(&[SERVICE_SCRIPT_V1, SERVICE_SCRIPT_V2]).script_protocol(), Some(ScriptProtocol::V2));
    assert_eq!(caps(&[SERVICE_SCRIPT_V1]).script_protocol(), Some(ScriptProtocol::V1));
    assert_eq!(caps(&["script/v9"]).script_protocol(), None);
}

#[test]
fn only_an_agent_listing_secret_masking_gets_secrets() {
    assert!(caps(&[SERVICE_SCRIPT_V2, SERVICE_SECRET_MASKING]).masks_secrets());
    assert!(!caps(&[SERVICE_SCRIPT_V1, SERVICE_SCRIPT_V2]).masks_secrets(), "an older current agent");
    assert!(!AgentKind::Legacy.masks_secrets());
    assert!(caps(&[SERVICE_SCRIPT_V2, SERVICE_SECRET_MASKING, SERVICE_SEALED_SECRETS]).opens_sealed_secrets());
    assert!(!caps(&[SERVICE_SCRIPT_V2, SERVICE_SECRET_MASKING]).opens_sealed_secrets(), "an agent of the last release");
    assert!(!AgentKind::Legacy.opens_sealed_secrets());
}

fn lines(seqs: &[u64], next: u64, state: ScriptState) -> ScriptStatus {
    ScriptStatus {
        ticket: ticket(),
        state,
        exit_code: None,
        logs: seqs
            .iter()
            .map(|&seq| LogLine { seq, stream: LogStream::Stdout, text: seq.to_string(), at: 0 })
            .collect(),
        next_log_sequence: next,
        lines_written: None,
    }
}

#[test]
fn repeats_are_dropped_and_gaps_wait() {
    let mut f = LogFollower::after(0);
    assert_eq!(f.accept(&lines(&[1, 2], 3, ScriptState::Running)).len(), 2);
    assert_eq!(f.accept(&lines(&[2, 3], 4, ScriptState::Running)).iter().map(|l| l.seq).collect::<Vec<_>>(), vec![3]);
    assert!(f.accept(&lines(&[5], 6, ScriptState::Complete)).is_empty());
    assert!(!f.has_everything(&lines(&[5], 6, ScriptState::Complete)));
    assert_eq!(f.last_seen(), 3);
}

proptest! {
    /// Whatever overlapping, repeated or out-of-range windows the replies carry, every line
    /// is passed on exactly once and in order.
    #[test]
    fn every_line_once_in_order(total in 0u64..200, windows in proptest::collection::vec((0u64..220, 0u64..40), 1..60)) {
        let mut f = LogFollower::after(0);
        let mut seen = Vec::new();
        for (start, len) in windows {
            let seqs: Vec<u64> = (start.max(1)..(start + len).min(total + 1)).collect();
            seen.extend(f.accept(&lines(&seqs, total + 1, ScriptState::Running)).iter().map(|l| l.seq));
        }
        // Then the agent answers from where the follower stands, as it always does.
        while f.last_seen() < total {
            let seqs: Vec<u64> = (f.last_seen() + 1..=total).collect();
            seen.extend(f.accept(&lines(&seqs, total + 1, ScriptState::Complete)).iter().map(|l| l.seq));
        }
        prop_assert_eq!(seen, (1..=total).collect::<Vec<_>>());
        prop_assert!(f.has_everything(&lines(&[], total + 1, ScriptState::Complete)));
    }

    /// Whatever mix of lost attempts, repeated windows of lines (with gaps, as from a store that
    /// lost lines) and interrupts comes, with time moving on, a submission always ends, shows
    /// the lines it shows once and in order, names every gap, and
    /// never sends anything after an interrupt that came before any start was published.
    #[test]
    fn a_submission_always_ends_with_lines_once_in_order(
        seed in any::<u64>(),
        steps in proptest::collection::vec((0u8..6, 0u64..4, 1u64..3_000), 1..80),
        total in 0u64..6,
    ) {
        let policy = RetryPolicy::new(Duration::from_secs(20));
        let mut m = Machine::submit(Config { seed, ..config(policy) }, ScriptSpec::default(), ticket(), at(0));
        let mut seen = Vec::new();
        let mut now = 0;
        let mut interrupted_unpublished = false;
        let mut published = false;
        let mut steps = steps.into_iter().chain(std::iter::repeat((3, 0, 1_000)));
        for _ in 0..2_000 {
            let action = until_input(&mut m, at(now), &mut seen);
            let (what, from, delay) = steps.next().unwrap();
            match action {
                Action::Done(outcome) => {
                    // Lines in order, never twice; any skipped (a reply with a gap says the
                    // store lost them) named in one notice each.
                    // A completed one ends at the script's last line, shown or named lost.
                    let shown = logs(&seen);
                    prop_assert!(shown.windows(2).all(|w| w[0] < w[1]), "{:?}", shown);
                    let last = shown.last().copied().unwrap_or(0);
                    let end = if outcome.outcome == OutcomeKind::Completed { total } else { last };
                    let gaps = std::iter::once(0).chain(shown.iter().copied()).chain([end + 1]).collect::<Vec<_>>();
                    let gaps = gaps.windows(2).filter(|w| w[1] > w[0] + 1).count();
                    let told = seen
                        .iter()
                        .filter(|a| matches!(a, Action::Emit(Event::Notice(n)) if n.contains("lost by the agent's ticket store")))
                        .count();
                    prop_assert_eq!(gaps, told);
                    if interrupted_unpublished {
                        prop_assert_eq!(outcome.process_exit, exit::NOT_SENT);
                    }
                    prop_assert!(last <= total);
                    return Ok(());
                }
                Action::Call { attempt, request, .. } => {
                    prop_assert!(!interrupted_unpublished, "sent {:?} after an unpublished interrupt", request.kind());
                    now += delay;
                    let kind = request.kind();
                    let input = match (what, kind) {
                        (0, kind) => {
                            published |= kind == Kind::StartScriptV2;
                            Input::Failed { attempt, error: TestError::Lost, published: kind == Kind::StartScriptV2 }
                        }
                        (5, kind) => {
                            interrupted_unpublished |=
                                !published && matches!(kind, Kind::GetCapabilities | Kind::StartScriptV2);
                            Input::Interrupt { published: false }
                        }
                        (_, Kind::GetCapabilities) => Input::Reply { attempt, reply: Reply::Capabilities(v2()) },
                        (_, kind) => {
                            published |= kind == Kind::StartScriptV2;
                            let from = from.min(total);
                            // 4: complete, the store lost every line after `from`.
                            let done = what >= 3;
                            let end = if what == 4 { from } else if done { total } else { (from + 2).min(total) };
                            let logs = (from + 1..=end)
                                .map(|seq| LogLine { seq, stream: LogStream::Stdout, text: String::new(), at: 0 })
                                .collect();
                            let (state, exit_code) =
                                if done { (ScriptState::Complete, Some(0)) } else { (ScriptState::Running, None) };
                            let lines_written = done.then_some(total);
                            let next_log_sequence = end + 1;
                            let status = ScriptStatus { ticket: ticket(), state, exit_code, logs, next_log_sequence, lines_written };
                            Input::Reply { attempt, reply: Reply::ScriptStatus(status) }
                        }
                    };
                    m.handle(input, at(now));
                }
                Action::AwaitReply(attempt) => {
                    now += delay;
                    m.handle(Input::Failed { attempt, error: TestError::Lost, published: true }, at(now));
                }
                Action::Sleep(until) => now = now.max(until.as_millis() as u64 + 1),
                Action::CountConsumers(_) => m.handle(Input::Consumers(Some(1)), at(now)),
                Action::Send { .. } => m.handle(Input::Sent(Ok(())), at(now)),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert!(false, "the submission never ended");
    }
}

#[test]
fn outcomes_of_a_script_and_of_errors() {
    let completed = Outcome::from_exit_code(ticket(), "a", 2);
    assert_eq!((completed.outcome, completed.process_exit), (OutcomeKind::Completed, 2));
    let unknown = Outcome::from_error(None, "a", &TestError::Lost, String::new(), true);
    assert_eq!(unknown.process_exit, exit::OUTCOME_UNKNOWN);
    assert_eq!(
        Outcome::from_error(None, "a", &TestError::Unroutable, String::new(), false).process_exit,
        exit::NO_SUCH_AGENT
    );
    let _ = SystemTime::now();
}
