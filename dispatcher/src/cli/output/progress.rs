//! Progress bars on a terminal, drawn by indicatif: a fan-out's targets, and a transfer's bytes.
//! Lines printed while a bar is drawn go through [`FanoutProgress::suspend`] (or the transfer
//! bar's `suspend`), which takes the bar away, prints, and draws it again below. Where stderr is
//! not a terminal (a pipe, a file) there is no bar, and nothing is printed but the lines.

use crate::fanout::{self, Progress};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

/// A spinner on stderr while a stream is read, `reading cuttle.receipts: 120000 messages, 40
/// kept`, when stderr is a terminal (hidden otherwise); drawn at once and then every 100 ms.
pub(crate) fn reading(stream: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = format!("{{spinner}} reading {stream}: {{msg}}");
    let bar = ProgressBar::new_spinner().with_style(ProgressStyle::with_template(&template).expect("a valid template"));
    bar.set_message("0 messages");
    bar.tick();
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar
}

/// A fan-out's progress: one line below the output, `[####......] 3/10 done, 2 running, 1 failed`.
pub(crate) struct FanoutProgress {
    bars: MultiProgress,
    bar: ProgressBar,
    counts: Mutex<Counts>,
}

/// Targets to run (those not started leave the total), running, done, and failed among them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    total: usize,
    running: usize,
    done: usize,
    failed: usize,
}

impl Counts {
    fn update(&mut self, change: &Progress) {
        match change {
            Progress::Started => self.running += 1,
            Progress::Finished(report) => {
                self.running -= 1;
                self.done += 1;
                self.failed += usize::from(fanout::failed(report));
            }
            // Not started: no longer pending, and neither done nor failed.
            Progress::NotStarted { .. } => self.total -= 1,
        }
    }

    fn message(&self) -> String {
        let Counts { total, running, done, failed } = self;
        format!("{done}/{total} done, {running} running, {failed} failed")
    }
}

impl FanoutProgress {
    /// A bar for `total` targets when stderr is a terminal.
    pub(crate) fn on_terminal(total: usize) -> Option<Arc<FanoutProgress>> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bars = MultiProgress::new();
        let style = ProgressStyle::with_template("[{bar:30}] {msg}").expect("a valid template").progress_chars("##.");
        let bar = bars.add(ProgressBar::new(total as u64).with_style(style));
        let counts = Counts { total, ..Counts::default() };
        bar.set_message(counts.message());
        Some(Arc::new(FanoutProgress { bars, bar, counts: Mutex::new(counts) }))
    }

    /// Counts a target's change and redraws.
    pub(crate) fn update(&self, change: &Progress) {
        let mut counts = self.counts.lock().expect("progress counts");
        counts.update(change);
        self.bar.set_length(counts.total as u64);
        self.bar.set_position(counts.done as u64);
        self.bar.set_message(counts.message());
    }

    /// Runs `print` with the bar taken away, then draws it again below what was printed.
    pub(crate) fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        self.bars.suspend(print)
    }

    /// Leaves the bar as it ends, above what is printed next.
    pub(crate) fn finish(&self) {
        self.bar.finish();
    }
}

/// A transfer's bar: bytes done of the total, rate and time left (hidden unless stderr is a
/// terminal).
pub(crate) fn transfer_bar() -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("a valid template"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::{NotStarted, TargetReport};
    use contracts::submission::outcome::Outcome;
    use std::time::Duration;

    #[test]
    fn targets_are_counted_as_they_start_finish_or_are_left_out() {
        let report = |code| TargetReport {
            target: "a".into(),
            outcome: Outcome::from_exit_code(edge::entropy::ticket(), "a", code),
            duration: Duration::ZERO,
            retries: 0,
        };
        let mut counts = Counts { total: 3, ..Counts::default() };
        counts.update(&Progress::Started);
        counts.update(&Progress::Started);
        assert_eq!(counts.message(), "0/3 done, 2 running, 0 failed");
        counts.update(&Progress::Finished(report(0)));
        counts.update(&Progress::Finished(report(3)));
        counts.update(&Progress::NotStarted { target: "c".into(), reason: NotStarted::ErrorBudget });
        assert_eq!(counts.message(), "2/2 done, 0 running, 1 failed");
    }
}
