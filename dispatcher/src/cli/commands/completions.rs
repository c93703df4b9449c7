//! `dispatcher completions SHELL`: the shell's completion script, from the clap definitions.

use contracts::submission::outcome::exit;
use std::io::Write;
use std::process::ExitCode;

/// Prints `shell`'s completion script for `command`, the program `name`. Written whole or not at
/// all: a reader that closes early (`| head`) ends it quietly, as for every command's output.
pub(crate) fn print(shell: clap_complete::Shell, mut command: clap::Command, name: &str) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(exit::STDOUT_CLOSED),
        Err(error) => {
            eprintln!("cuttle: cannot write the completion script: {error}");
            ExitCode::FAILURE
        }
    }
}
