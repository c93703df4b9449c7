//! What the command line shows: [`printer`] writes a submission's events (its output, notices,
//! or `--json` events) and how it ended; [`progress`] draws the progress bars (indicatif) on a
//! terminal; [`terminal`] keeps script output from driving the user's terminal.

/// `println!` for the dispatcher's stdout: see [`printer::print_line`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::printer::print_line(format_args!($($arg)*))
    };
}

pub(super) mod printer;
pub(super) mod progress;
pub(super) mod terminal;
