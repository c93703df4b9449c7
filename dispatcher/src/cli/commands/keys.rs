//! `dispatcher keygen` and `dispatcher public-key`.

use crate::cli::args::KeygenArgs;
use crate::cli::output::printer::usage_error;
use crate::trust::TrustFiles;
use std::path::PathBuf;
use std::process::ExitCode;

/// Prints the public key of the dispatcher's key (the default one unless `key` names another).
pub(crate) fn public_key(key: Option<PathBuf>) -> ExitCode {
    let files = match TrustFiles::resolve(key, None) {
        Ok(files) => files,
        Err(error) => return usage_error(error),
    };
    match edge::keys::load_secret(&files.key) {
        Ok(key) => {
            println!("{}", key.public());
            ExitCode::SUCCESS
        }
        Err(error) => usage_error(error),
    }
}

/// Writes a new key to `out` and prints its public key on stdout (the one line to copy).
pub(crate) fn keygen(args: &KeygenArgs) -> ExitCode {
    match edge::keys::create_secret(&args.out) {
        Ok(key) => {
            eprintln!("dispatcher: wrote a new secret key to {} (mode 0600); its public key:", args.out.display());
            println!("{}", key.public());
            ExitCode::SUCCESS
        }
        Err(error) => usage_error(error),
    }
}
