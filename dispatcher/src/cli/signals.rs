//! Ctrl-C while a command waits: once stops the script (or leaves `status --follow`), twice
//! leaves at once.

use contracts::submission::outcome::exit;
use tokio_util::sync::CancellationToken;

/// Ctrl-C once cancels the script (the token); twice exits at once.
pub(super) fn interrupt_on_ctrl_c() -> CancellationToken {
    let interrupt = CancellationToken::new();
    let token = interrupt.clone();
    let mut sigint = sigint();
    tokio::spawn(async move {
        if sigint.recv().await.is_none() {
            return;
        }
        eprintln!("cuttle: interrupted; stopping (Ctrl-C again to leave without waiting)");
        token.cancel();
        if sigint.recv().await.is_some() {
            eprintln!("cuttle: left without waiting; the script may still be running");
            std::process::exit(exit::CANCELLED as i32);
        }
    });
    interrupt
}

/// Ctrl-C (SIGINT), listened for from now on: a Ctrl-C that comes before the first wait on it
/// is kept, never left to its default (ending the process).
pub(super) fn sigint() -> tokio::signal::unix::Signal {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("a SIGINT handler")
}
