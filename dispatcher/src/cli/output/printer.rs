//! A submission's events as the user sees them: script output on stdout and stderr, notices on
//! stderr, or one [`JsonEvent`] per line under `--json`; and how it ended, with its exit code.

use super::progress::FanoutProgress;
use super::terminal;
use crate::event::JsonEvent;
use crate::orchestrator::Event;
use contracts::submission::outcome::{exit, Outcome, OutcomeKind};
use contracts::wire::status::LogStream;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Prints events as text (script output to stdout/stderr, notices to stderr) or JSON lines.
pub(crate) struct Printer {
    json: bool,
    /// Whether log lines are printed (not for `cancel`).
    logs: bool,
    /// With several targets: this one's name, put before its lines and in its JSON events.
    target: Option<String>,
    /// With several targets on a terminal: the progress bar to keep below the output.
    progress: Option<Arc<FanoutProgress>>,
    /// Whether the agent said it discarded output past its `--max-output`.
    truncated: AtomicBool,
}

impl Printer {
    /// A printer of every event, as text or (`json`) JSON lines.
    pub(crate) fn new(json: bool) -> Printer {
        Printer { json, logs: true, target: None, progress: None, truncated: AtomicBool::new(false) }
    }

    /// The same printer without the script's output.
    pub(crate) fn without_logs(mut self) -> Printer {
        self.logs = false;
        self
    }

    /// The same printer naming `target` (one of several) in each line.
    pub(crate) fn for_target(mut self, target: Option<String>) -> Printer {
        self.target = target;
        self
    }

    /// The same printer keeping `progress` drawn below what it prints.
    pub(crate) fn with_progress(mut self, progress: Option<Arc<FanoutProgress>>) -> Printer {
        self.progress = progress;
        self
    }

    pub(crate) fn event(&self, event: Event) {
        match &self.progress {
            Some(progress) => progress.suspend(|| self.print(event)),
            None => self.print(event),
        }
    }

    fn print(&self, event: Event) {
        if let Event::Log(line) = &event {
            if line.stream == LogStream::Agent && line.text.starts_with(contracts::wire::status::OUTPUT_TRUNCATED) {
                self.truncated.store(true, Ordering::Relaxed);
            }
        }
        if self.json {
            if matches!(event, Event::Log(_)) && !self.logs {
                return;
            }
            let line = JsonEvent::from_event(&event);
            match &self.target {
                Some(target) => outln!("{}", line.with_target(target)),
                None => outln!("{line}"),
            }
            return;
        }
        let prefix = self.target.as_ref().map(|t| format!("[{t}] ")).unwrap_or_default();
        match event {
            Event::Ticket { ticket, target } => eprintln!("cuttle: {prefix}ticket {ticket} on {target}"),
            Event::Log(line) if !self.logs => drop(line),
            Event::Log(line) => match line.stream {
                LogStream::Stdout => outln!("{prefix}{}", terminal::out(&line.text)),
                LogStream::Stderr => eprintln!("{prefix}{}", terminal::err(&line.text)),
                LogStream::Agent | LogStream::Unknown => {
                    eprintln!("cuttle: {prefix}[agent] {}", terminal::err(&line.text))
                }
            },
            Event::Retry { request, notice } => eprintln!(
                "cuttle: {prefix}{request} attempt {} failed: {}; retrying, {} left",
                notice.attempt,
                terminal::err(&notice.error.to_string()),
                contracts::time::short(Duration::from_secs(notice.time_left.as_secs())),
            ),
            Event::Notice(message) => eprintln!("cuttle: {prefix}{}", terminal::err(&message)),
            Event::Warning(message) => eprintln!("cuttle: {prefix}warning: {}", terminal::err(&message)),
        }
    }

    /// Prints how it ended and gives the exit code.
    pub(crate) fn outcome(&self, outcome: &Outcome) -> ExitCode {
        if self.json {
            outln!("{}", JsonEvent::result(outcome, Some(self.truncated.load(Ordering::Relaxed))));
            return ExitCode::from(outcome.process_exit);
        }
        if self.truncated.load(Ordering::Relaxed) {
            eprintln!("cuttle: output truncated: the agent kept only the first part of the script's output (its --max-output)");
        }
        if outcome.outcome != OutcomeKind::Completed {
            let what = match outcome.outcome {
                OutcomeKind::Cancelled => "cancelled",
                OutcomeKind::Unknown => "outcome unknown",
                _ => "failed",
            };
            eprintln!("cuttle: {what}: {}", terminal::err(outcome.error.as_deref().unwrap_or("no reason given")));
        }
        ExitCode::from(outcome.process_exit)
    }
}

/// Writes one line to stdout. Once stdout is closed (`dispatcher ... --json | head -1`), the
/// dispatcher leaves at once and quietly, as a program killed by SIGPIPE would (exit 141).
pub(crate) fn print_line(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(error) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(exit::STDOUT_CLOSED.into());
        }
    }
}

/// Says what is wrong with the command (on stderr) and gives the usage exit code.
pub(crate) fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("cuttle: {message}");
    ExitCode::from(exit::USAGE)
}
