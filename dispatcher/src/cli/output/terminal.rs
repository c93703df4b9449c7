//! Script output shown on a terminal: control characters (escape sequences that could move the
//! cursor, rewrite earlier lines, set the window title or worse) are shown as `\xNN` unless the
//! user asked for `--raw`. Output that is not a terminal (a file, a pipe) is passed on as is.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

static RAW: AtomicBool = AtomicBool::new(false);

/// `--raw`: pass control characters through to terminals too. Set once, at start.
pub(crate) fn set_raw(raw: bool) {
    RAW.store(raw, Ordering::Relaxed);
}

/// `text` as it may be written to stdout.
pub(crate) fn out(text: &str) -> Cow<'_, str> {
    shown(text, std::io::stdout().is_terminal())
}

/// `text` as it may be written to stderr.
pub(crate) fn err(text: &str) -> Cow<'_, str> {
    shown(text, std::io::stderr().is_terminal())
}

fn shown(text: &str, terminal: bool) -> Cow<'_, str> {
    if terminal && !RAW.load(Ordering::Relaxed) {
        escape_controls(text)
    } else {
        Cow::Borrowed(text)
    }
}

/// Every control character but tab (C0, DEL and C1, which includes the one-byte CSI) as `\xNN`.
pub(crate) fn escape_controls(text: &str) -> Cow<'_, str> {
    let is_control = |c: char| c.is_control() && c != '\t';
    if !text.contains(is_control) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_control(c) {
            shown.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_sequences_are_shown_not_obeyed() {
        assert_eq!(escape_controls("plain\ttext é"), "plain\ttext é");
        assert_eq!(escape_controls("\u{1b}]0;pwned\u{7}\u{1b}[2J"), "\\x1b]0;pwned\\x07\\x1b[2J");
        assert_eq!(escape_controls("a\rb\u{9b}31m\u{7f}"), "a\\x0db\\x9b31m\\x7f");
    }
}
