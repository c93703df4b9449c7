//! The flags of `dispatcher receipts` and `dispatcher verify`.

use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// What `dispatcher verify` exits with when it finds something wrong.
pub(in crate::cli) const NOT_VERIFIED: u8 = 1;

pub(in crate::cli) const RECEIPTS_HELP: &str = "\
Each receipt is checked against the agent's key in the known agents, and each agent's chain for
receipts missing from the middle, moved or replaced. With --json each line is a receipt as
`dispatcher verify` reads it back: save them, and verify them later anywhere the known agents are.
Exit codes:
  0    every receipt read verified
  1    something did not verify (told on stderr)
  2    bad usage
  101  cannot reach the broker";

pub(in crate::cli) const VERIFY_HELP: &str = "\
Checks, without the broker, every signature against the keys pinned in the known agents
(--known-agents), that what each JSON line shows is what its agent signed, and each agent's chain:
a receipt edited, forged, signed by another key, dropped from the middle, reordered or replaced is
reported with its line. A tail cut off after the last receipt cannot be seen by a chain: compare
the last sequence reported with a newer read.
Exit codes:
  0    every receipt verified and every chain is whole
  1    something did not verify (each finding on stderr)
  2    bad usage, or the file cannot be read";

#[derive(Args, Debug)]
pub(in crate::cli) struct ReceiptsArgs {
    /// The agent whose receipts to read.
    #[arg(long, required_unless_present = "pool", conflicts_with = "pool")]
    pub target: Option<String>,
    /// The pool whose workers' receipts to read (each worker has its own chain).
    #[arg(long)]
    pub pool: Option<String>,
    /// How far back to read (the stream keeps receipts for its retention, 30 days unless the
    /// operator chose otherwise).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub since: Duration,
    /// One JSON object per receipt and line, as `dispatcher verify` reads them.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub(in crate::cli) struct VerifyArgs {
    /// The receipts: a file of `dispatcher receipts --json` lines, or `-` for standard input.
    pub file: PathBuf,
}
