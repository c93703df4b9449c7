//! The submission's later steps: following the script's log to its end, cancelling it, and
//! the end itself (the complete sent, the outcome).

use super::{Action, AfterCount, AfterSend, Awaiting, Event, Now, Phase, Purpose, Submission};
use crate::submission::error::CallError;
use crate::submission::follow::{lost_lines_notice, LogFollower};
use crate::submission::negotiate::ScriptProtocol;
use crate::submission::outcome::Outcome;
use crate::submission::requests::{cancel_request, complete_request, V1_POLL};
use crate::submission::retry::{cancel_policy, RetryPolicy};
use crate::time::unix_millis;
use crate::wire::envelope::Request;
use crate::wire::exit_code;
use crate::wire::messages::{GetStatusV1, GetStatusV2};
use crate::wire::status::ScriptStatus;
use std::time::{Duration, SystemTime};

impl<E: CallError> Submission<E> {
    // ---- following ----

    /// A status that starts (or resumes) following, under `policy`.
    pub(super) fn following(&mut self, status: ScriptStatus, policy: RetryPolicy, interruptible: bool, now: Now) {
        self.phase = Phase::Follow;
        self.follow_policy = policy;
        self.interruptible = interruptible;
        self.accept(&status);
        self.status = Some(status);
        self.follow_step(now);
    }

    /// Takes a reply's new lines. The agent answers from where the follower stands, with the
    /// lines its store holds in order, so a line missing before one it sends is a line the
    /// store lost (a failover to a replica without the latest writes, a restart without
    /// persistence): the user is told which, and the follow goes on after them, so it still
    /// ends (waiting for them would wait forever). So are lines missing after the last one a
    /// completed status brings, up to the number its run recorded it wrote
    /// ([`ScriptStatus::lines_written`]): a lost tail, with no later line to show the gap.
    pub(super) fn accept(&mut self, status: &ScriptStatus) {
        self.seen_known |= !(status.is_complete() && status.exit_code == Some(exit_code::UNKNOWN_TICKET));
        loop {
            for line in self.follower.accept(status) {
                self.out.push_back(Action::Emit(Event::Log(line.clone())));
            }
            let next = self.follower.last_seen() + 1;
            let after_gap = status.logs.iter().map(|line| line.seq).find(|&seq| seq > next);
            let tail_end = status.lines_written.filter(|&written| status.is_complete() && written >= next);
            let Some(lost_to) = after_gap.map(|seq| seq - 1).or(tail_end) else { return };
            self.emit(Event::Notice(lost_lines_notice(&self.ticket(), next, lost_to)));
            self.follower = LogFollower::after(lost_to);
        }
    }

    /// The next status request, or the end once the script is complete and every line seen.
    pub(super) fn follow_step(&mut self, now: Now) {
        if self.interruptible && self.interrupted {
            return self.begin_cancel(false, None, now);
        }
        let status = self.status.as_ref().expect("a status while following");
        if self.follower.has_everything(status) {
            let code = status.exit_code.unwrap_or(exit_code::FATAL);
            let outcome = if code == exit_code::UNKNOWN_TICKET && self.seen_known {
                Outcome::lost_by_store(self.ticket(), &self.config.target)
            } else {
                self.after_cancel(Outcome::from_exit_code(self.ticket(), &self.config.target, code))
            };
            return self.finish(outcome, now);
        }
        if self.protocol == ScriptProtocol::V1 && status.logs.is_empty() {
            self.poll_at = Some(now.mono + V1_POLL);
            return;
        }
        self.status_call(now);
    }

    pub(super) fn status_call(&mut self, now: Now) {
        let (ticket, last_log_sequence) = (self.ticket(), self.follower.last_seen());
        let wait = self.config.timing.status_wait;
        let request = match self.protocol {
            ScriptProtocol::V2 => {
                Request::GetStatusV2(GetStatusV2 { ticket, last_log_sequence, wait: Some(wait.as_millis() as u64) })
            }
            ScriptProtocol::V1 => Request::GetStatusV1(GetStatusV1 { ticket, last_log_sequence }),
        };
        self.begin_call(Purpose::Status, request, self.follow_policy, wait, None, now);
    }

    pub(super) fn after_cancel(&self, outcome: Outcome) -> Outcome {
        match self.after_cancel {
            Some(start_sent) => outcome.after_cancel(start_sent),
            None => outcome,
        }
    }

    // ---- cancel ----

    pub(super) fn interrupt(&mut self, now: Now) {
        let published = self.call.as_ref().is_some_and(|call| call.published);
        match self.phase {
            Phase::Negotiate => self.finish(Outcome::not_sent(self.ticket.clone(), &self.config.target), now),
            Phase::StartV1 if !published => self.finish(Outcome::not_sent(None, &self.config.target), now),
            // The start may have reached the agent, which makes the ticket: its answer names the
            // script to cancel (following it then sees the interrupt at once).
            Phase::StartV1 | Phase::Resume => self.interrupted = true,
            Phase::StartV2 if !published => {
                self.finish(Outcome::not_sent(self.ticket.clone(), &self.config.target), now)
            }
            // The start may have reached the agent: cancel it there, so it can never run. The
            // cancel lives in the queue as long as the start could.
            Phase::StartV2 => {
                let not_after = self.plan.as_ref().map(|plan| plan.not_after);
                self.begin_cancel(true, not_after, now);
            }
            Phase::Follow if self.interruptible => {
                self.interrupted = true;
                self.begin_cancel(false, None, now);
            }
            Phase::Follow | Phase::Cancel | Phase::Ending | Phase::Done => {}
        }
    }

    /// Cancels the script and follows it until it has stopped, without further interrupts. The
    /// cancel is repeated until the agent answers it (see [`cancel_policy`]), on v1 as well:
    /// unlike its start, a cancel is idempotent. When no agent consumes the queue, the cancel is
    /// left there, behind the start, and the user told so at once: the agent stops the script
    /// when it returns. `start_sent`: the start was sent and not answered yet; `not_after`: how
    /// long the start lives (else as long as such a start would, from now).
    pub(super) fn begin_cancel(&mut self, start_sent: bool, not_after: Option<SystemTime>, now: Now) {
        self.phase = Phase::Cancel;
        self.interruptible = false;
        self.call = None;
        self.poll_at = None;
        let policy = self.follow_policy;
        let lives = policy.duration.max(cancel_policy(policy).duration).max(self.config.timing.attempt_timeout);
        let not_after = not_after.unwrap_or(now.wall + lives);
        let first_issued_at = self.plan.as_ref().filter(|_| start_sent).map(|plan| unix_millis(plan.issued_at));
        let request = cancel_request(self.protocol, &self.ticket(), self.follower.last_seen(), first_issued_at);
        let kind = request.kind();
        self.awaiting = Some(Awaiting::Consumers {
            kind,
            then: AfterCount::Cancel { request: Box::new(request), not_after, start_sent },
        });
    }

    /// One cancel, without retries, after a start got no answer (it may run, or start later from
    /// a copy in the queue, while nobody follows it): if it gets through, the script does not go
    /// on unwatched. Then the end, with `outcome`, which says that a cancel was sent.
    pub(super) fn best_effort_cancel(&mut self, outcome: Outcome, now: Now) {
        self.phase = Phase::Ending;
        self.ending = Some(outcome);
        let request = cancel_request(self.protocol, &self.ticket(), 0, None);
        self.begin_call(Purpose::BestEffortCancel, request, RetryPolicy::once(), Duration::ZERO, None, now);
    }

    // ---- the end ----

    pub(super) fn sent(&mut self, then: AfterSend, result: Result<(), E>) {
        let (target, ticket) = (self.config.target.clone(), self.ticket());
        match then {
            AfterSend::CancelQueued => {
                let outcome = match result {
                    Ok(()) => {
                        let message =
                            format!("cancel queued; the agent will stop the script when it returns (ticket {ticket})");
                        Outcome::from_error(Some(ticket), &target, &E::cancelled(), message, false)
                    }
                    Err(error) => {
                        let message = format!(
                            "could not queue the cancel: {error}; the script's outcome is unknown (ticket {ticket})"
                        );
                        Outcome::from_error(Some(ticket), &target, &error, message, true)
                    }
                };
                self.done(outcome);
            }
            AfterSend::Complete(protocol) => {
                if let Err(error) = result {
                    let notice = match protocol {
                        ScriptProtocol::V2 => {
                            format!("could not complete ticket {ticket} (the agent cleans it up later): {error}")
                        }
                        ScriptProtocol::V1 => format!("could not complete ticket {ticket}: {error}"),
                    };
                    self.emit(Event::Notice(notice));
                }
                let outcome = self.ending.take().expect("the outcome a complete ends with");
                self.done(outcome);
            }
        }
    }

    /// The outcome is decided: a submission completes the ticket whose end it saw first
    /// (published, not waited for, since nothing the user sees depends on it).
    pub(super) fn finish(&mut self, outcome: Outcome, now: Now) {
        self.call = None;
        let complete = self
            .ticket
            .as_ref()
            .filter(|_| self.complete)
            .and_then(|ticket| complete_request(self.protocol, ticket, &outcome));
        let Some(request) = complete else { return self.done(outcome) };
        self.phase = Phase::Ending;
        let timing = self.config.timing;
        let lives = match self.protocol {
            ScriptProtocol::V2 => self.config.policies.script.duration.max(timing.attempt_timeout),
            ScriptProtocol::V1 => timing.attempt_timeout,
        };
        self.ending = Some(outcome);
        let then = AfterSend::Complete(self.protocol);
        self.awaiting = Some(Awaiting::Sent { request: Box::new(request), not_after: now.wall + lives, then });
    }

    pub(super) fn done(&mut self, outcome: Outcome) {
        self.phase = Phase::Done;
        self.call = None;
        self.awaiting = None;
        self.poll_at = None;
        self.outcome = Some(outcome);
    }
}
